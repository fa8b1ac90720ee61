"""Constant refinement against the original's BFGS fixture and independent computations."""

import json
import pathlib
import time

import numpy as np
import pytest

from snip_jax.symbolic.refine import (SUPPORTED_OPERATORS, objective_and_gradient,
                                      refine_constants, refine_many)
from snip_jax.symbolic.trees import is_integer_text, is_number, parse_prefix

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "snip_sr_original" / "tiny_sr_refine.json"
SIN = "add,mul,{},sin,mul,{},x_0,{}"


def load_problems():
  return json.loads(FIXTURE.read_text())["problems"]


def with_values(template: str, values) -> str:
  return template.format(*[repr(float(v)) for v in values])


def objective(prefix: str, x: np.ndarray, y: np.ndarray) -> float:
  """0.5·mean squared residual through `Expression.evaluate` (independent of refine.py)."""
  y = y.reshape(len(y), -1)
  return 0.5 * float(np.mean((y - parse_prefix(prefix).evaluate(x)) ** 2))


def sin_data(n=200, seed=0):
  x = np.random.default_rng(seed).uniform(-2.0, 2.0, (n, 1))
  return x, 2.5 * np.sin(1.3 * x[:, 0]) - 0.7


@pytest.mark.parametrize("problem", load_problems(), ids=lambda p: p["name"])
@pytest.mark.parametrize("start", ["init_prefix", "skeleton"])
def test_fixture_refinements_reach_the_original_optimum(problem, start):
  x, y, ref = np.array(problem["X"]), np.array(problem["y"]), problem["bfgs"]
  if start == "init_prefix":
    result = refine_constants(problem["init_prefix"], x, y)
  else:
    result = refine_constants(problem["skeleton_prefix"], x, y, init=problem["coeffs0"])
  assert result.status == "converged"
  assert result.objective <= ref["objective_at_refined"] + 1e-12
  assert abs(result.objective - ref["objective_at_refined"]) < 1e-6
  np.testing.assert_allclose(result.constants, ref["refined_constants"], atol=1e-3)
  assert result.mse <= ref["mse"] + 1e-12 and result.r2 >= ref["r2"] - 1e-12
  refined = result.expression.prefix()
  assert [t for t in refined.split(",") if not is_number(t)] == [
      t for t in ref["refined_prefix"].split(",") if not is_number(t)]
  assert result.objective == pytest.approx(objective(refined, x, y), rel=1e-12)


# Wraps an operand into an operator's smooth domain with fixed integers (never refined).
_POSITIVE = "add,2,tanh,{}"
_DOMAIN = {
    "arcsin": "div,tanh,{},2", "arccos": "div,tanh,{},2", "arctanh": "div,tanh,{},2",
    "arccosh": "add,3,tanh,{}", "tan": "tanh,{}", "exp": "tanh,{}", "exp2": "tanh,{}",
    "sinh": "tanh,{}", "cosh": "tanh,{}", "sqrt": _POSITIVE, "log": _POSITIVE,
    "log2": _POSITIVE, "log10": _POSITIVE, "cbrt": _POSITIVE, "inv": _POSITIVE,
    "reciprocal": _POSITIVE,
}
_SECOND_OPERAND = {"div": _POSITIVE, "pow": "mul,2,tanh,{}"}
_BINARY = ("add", "sub", "mul", "div", "pow", "max", "min")


def random_tree(rng: np.random.Generator, depth: int, root: str = "") -> str:
  """A random prefix over x_0, x_1 with float constants; operands kept in each domain."""
  if depth == 0:
    c = (rng.uniform(0.5, 1.5, 2) * rng.choice([-1, 1], 2)).tolist()
    return f"add,mul,{c[0]!r},x_{rng.integers(2)},{c[1]!r}"
  op = root or str(rng.choice(SUPPORTED_OPERATORS))
  first = random_tree(rng, depth - 1)
  if op not in _BINARY:
    return f"{op}," + _DOMAIN.get(op, "{}").format(first)
  if op == "pow":
    first = _POSITIVE.format(first)
  second = _SECOND_OPERAND.get(op, "{}").format(random_tree(rng, depth - 1))
  return f"{op},{first},{second}"


def gradient_cases():
  """(name, prefix): a random tree rooted at every supported operator, and a 2-output one."""
  rng = np.random.default_rng(0)
  cases = [(op, random_tree(rng, 3, root=op)) for op in SUPPORTED_OPERATORS]
  cases.append(("two_outputs", f"{random_tree(rng, 3)},|,{random_tree(rng, 3)}"))
  return cases


def finite_differences(prefix: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Central differences of `objective` w.r.t. every non-integer numeric token."""
  tokens = prefix.split(",")
  where = [i for i, t in enumerate(tokens) if is_number(t) and not is_integer_text(t)]
  grad = np.empty(len(where))
  for j, i in enumerate(where):
    value = float(tokens[i])
    h = 1e-6 * max(1.0, abs(value))
    moved = []
    for step in (h, -h):
      tokens[i] = repr(value + step)
      moved.append(objective(",".join(tokens), x, y))
    tokens[i] = repr(value)
    grad[j] = (moved[0] - moved[1]) / (2 * h)
  return grad


@pytest.mark.parametrize("name,prefix", gradient_cases(), ids=[c[0] for c in gradient_cases()])
def test_reverse_mode_gradient_equals_central_differences(name, prefix):
  rng = np.random.default_rng(len(name))
  x = rng.uniform(-2.0, 2.0, (64, 2))
  y = rng.normal(size=(64, prefix.count("|") + 1))
  f, grad = objective_and_gradient(prefix, x, y)
  assert f == pytest.approx(objective(prefix, x, y), rel=1e-12)
  assert name in prefix.split(",") or name == "two_outputs"
  np.testing.assert_allclose(grad, finite_differences(prefix, x, y), rtol=1e-5,
                             atol=1e-7 * (1.0 + f))


def test_every_supported_operator_has_a_gradient_case():
  covered = {name for name, _ in gradient_cases()}
  assert set(SUPPORTED_OPERATORS) <= covered


@pytest.mark.parametrize("seed", range(5))
def test_sine_constants_recovered_from_nearby_starts(seed):
  """Noise-free data; scipy's default gtol (1e-5) alone stops up to ~5e-6 away, so 1e-9."""
  x, y = sin_data()
  truth = np.array([2.5, 1.3, -0.7])
  start = truth * (1.0 + 0.1 * np.random.default_rng(seed).uniform(-1.0, 1.0, 3))
  result = refine_constants(with_values(SIN, start), x, y, gtol=1e-9)
  assert result.status == "converged"
  np.testing.assert_allclose(result.constants, truth, atol=1e-6)
  assert result.r2 > 1.0 - 1e-10


def test_integers_fixed_unary_over_constant_folded():
  x = np.linspace(0.1, 2.0, 50)[:, None]
  y = 3 * x[:, 0] + 0.25
  result = refine_constants("add,mul,3,x_0,cos,2.5", x, y)
  assert result.constants.shape == (1,)
  assert result.expression.prefix_list()[:3] == ["add", "mul", "3"]
  assert result.constants[0] == pytest.approx(0.25, abs=1e-8)
  start = refine_constants("add,mul,3,x_0,cos,2.5", x, y, max_evals=1)
  assert start.constants[0] == np.cos(2.5)


def test_objective_uses_first_max_rows_scores_use_all():
  x, y = sin_data(n=300)
  y_tail = y.copy()
  y_tail[100:] += 5.0
  prefix = with_values(SIN, (2.4, 1.25, -0.6))
  result = refine_constants(prefix, x, y_tail, max_rows=100)
  np.testing.assert_allclose(result.constants, [2.5, 1.3, -0.7], atol=1e-6)
  expected_mse = float(np.mean((y_tail - result.expression.evaluate(x)[:, 0]) ** 2))
  assert result.mse == pytest.approx(expected_mse, rel=1e-12) and result.mse > 10.0


def test_iteration_and_evaluation_caps_keep_the_best_point():
  x, y = sin_data()
  prefix = with_values(SIN, (1.0, 1.0, 0.0))
  start = objective(prefix, x, y)
  for options in ({"max_iter": 2}, {"max_evals": 4}):
    result = refine_constants(prefix, x, y, **options)
    assert result.status == "max_iter"
    assert result.objective < start
    assert result.objective == pytest.approx(
        objective(result.expression.prefix(), x, y), rel=1e-12)
  assert refine_constants(prefix, x, y, max_evals=4).n_evals == 4


def test_time_limit_returns_the_start_scored_never_raises():
  x, y = sin_data()
  prefix = with_values(SIN, (1.0, 1.0, 0.0))
  result = refine_constants(prefix, x, y, time_limit=0.0)
  assert result.status == "time_limit"
  np.testing.assert_array_equal(result.constants, [1.0, 1.0, 0.0])
  assert result.objective == pytest.approx(objective(prefix, x, y), rel=1e-12)
  results = refine_many([prefix] * 3, x, y, total_time_limit=0.0)
  assert [r.status for r in results] == ["time_limit"] * 3


def test_non_finite_start_flagged_and_invalid_candidates_kept():
  x, y = sin_data()
  candidates = ["log,mul,-0.5,x_0", "add,foo,x_0", "mul,0.5,x_3", with_values(SIN, (2, 1, 0))]
  results = refine_many(candidates, x, y)
  assert [r.status for r in results] == ["not_finite", "invalid", "invalid", "converged"]
  nan_start = results[0]
  assert nan_start.expression.prefix() == "log,mul,-0.5,x_0"
  assert nan_start.objective == np.inf and nan_start.r2 == -np.inf
  assert "foo" in results[1].message and "x_3" in results[2].message
  with pytest.raises(ValueError, match="CONSTANT"):
    refine_constants("mul,CONSTANT_0,x_0", x, y)


def test_parallel_refinement_equals_one_process():
  x, y = sin_data()
  rng = np.random.default_rng(5)
  candidates = [with_values(SIN, rng.uniform(0.5, 3.0, 3)) for _ in range(9)] + ["add,foo,x_0"]
  serial = refine_many(candidates, x, y)
  parallel = refine_many(candidates, x, y, n_jobs=2)
  assert [r.status for r in parallel] == [r.status for r in serial]
  assert parallel[-1].status == "invalid"
  for a, b in zip(serial, parallel):
    np.testing.assert_array_equal(a.constants, b.constants)
    assert a.n_evals == b.n_evals


def test_divergent_steps_keep_the_best_finite_point():
  x = np.random.default_rng(1).uniform(0.1, 3.0, (200, 1))
  result = refine_constants("sqrt,add,2.0,x_0", x, np.zeros(200))
  assert np.isfinite(result.objective)
  assert result.objective < objective("sqrt,add,2.0,x_0", x, np.zeros(200))
  assert result.constants[0] >= -x.min()
  assert result.objective == pytest.approx(
      objective(result.expression.prefix(), x, np.zeros(200)), rel=1e-12)


def test_restarts_are_seeded_and_never_worse():
  x, y = sin_data()
  prefix = with_values(SIN, (1.0, 3.0, 0.0))  # a poor start: a local minimum in frequency
  plain = refine_constants(prefix, x, y)
  first = refine_constants(prefix, x, y, restarts=6, seed=3)
  again = refine_constants(prefix, x, y, restarts=6, seed=3)
  assert plain.objective > 1.0 and first.objective < 1e-8
  np.testing.assert_array_equal(first.constants, again.constants)
  assert first.n_evals > plain.n_evals


def test_refinement_speed_printed():
  """~20-node candidates on 200 rows; prints refinements/s (target ≥ 200/s, not asserted)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-2.0, 2.0, (200, 2))
  template = ("add,mul,{},sin,add,mul,{},x_0,{},add,mul,{},exp,mul,{},x_1,"
              "div,mul,{},x_0,add,{},pow2,x_1")
  truth = np.array([1.5, 0.8, 0.3, -0.6, 0.5, 2.0, 1.0])
  y = parse_prefix(with_values(template, truth)).evaluate(x)[:, 0]
  candidates = [with_values(template, truth * (1 + 0.1 * rng.standard_normal(7)))
                for _ in range(20)]
  start = time.perf_counter()
  results = refine_many(candidates, x, y)
  rate = len(results) / (time.perf_counter() - start)
  print(f"\nrefinements/s (21 nodes, 200 rows, one process): {rate:.0f}")
  assert all(r.r2 > 0.999 for r in results) and rate > 10
