"""SRBench problems: PMLB metadata read safely, regenerated Feynman and Strogatz data, CSV files.

Each data check compares against an independent numpy computation of the published formula.
"""

import logging

import numpy as np
import pytest
import sympy

from snip_jax.errors import UserError
from snip_jax.srbench import problems
from snip_jax.symbolic.infix import InfixError, parse_infix, read_sympy


def test_the_bundled_metadata_has_every_feynman_and_strogatz_problem():
  assert len(problems.problem_names("feynman")) == 119
  assert len(problems.problem_names("strogatz")) == 14
  assert [p.name for p in problems.select_problems("strogatz,feynman_I_12_1")] == [
      *problems.problem_names("strogatz"), "feynman_I_12_1"]
  for name in problems.problem_names():
    problem = problems.load_problem(name)
    assert {s.name for s in problem.truth.free_symbols} <= set(problem.variables), name


def test_feynman_rows_reproduce_the_formula_in_its_ranges_deterministically():
  problem = problems.load_problem("feynman_I_12_11")  # F = q*(Ef + B*v*sin(theta))
  assert problem.variables == ("q", "Ef", "B", "v", "theta") and problem.target == "F"
  X, y = problems.problem_data(problem, n_rows=500, seed=3)
  q, ef, b, v, theta = X.T
  np.testing.assert_allclose(y, q * (ef + b * v * np.sin(theta)), rtol=1e-12)
  assert X.shape == (500, 5) and X.min() >= 1.0 and X.max() <= 5.0  # all ranges are [1, 5]
  assert np.ptp(X, axis=0).min() > 3.5  # spread over the range, not a corner of it
  X_again, y_again = problems.problem_data(problem, n_rows=500, seed=3)
  np.testing.assert_array_equal(X, X_again)
  np.testing.assert_array_equal(y, y_again)
  assert not np.allclose(problems.problem_data(problem, n_rows=500, seed=4)[0], X)


def test_feynman_ranges_differ_per_variable_and_constants_stay_exact():
  problem = problems.load_problem("feynman_II_11_3")  # x = q*Ef/(m*(omega_0**2-omega**2))
  X, y = problems.problem_data(problem, n_rows=300, seed=0)
  q, ef, m, omega_0, omega = X.T
  np.testing.assert_allclose(y, q * ef / (m * (omega_0 ** 2 - omega ** 2)), rtol=1e-12)
  low, high = np.array(problem.ranges).T
  np.testing.assert_array_equal(low, [1, 1, 1, 3, 1])
  np.testing.assert_array_equal(high, [3, 3, 3, 5, 2])
  assert (X >= low).all() and (X <= high).all()
  planck = problems.load_problem("feynman_I_34_27")  # E_n = (h/(2*pi))*omega
  omega_h = problems.problem_data(planck, n_rows=50, seed=0)
  np.testing.assert_allclose(omega_h[1], omega_h[0][:, 1] / (2 * np.pi) * omega_h[0][:, 0],
                             rtol=1e-12)


def test_strogatz_targets_are_the_right_hand_side_along_simulated_trajectories():
  first = problems.load_problem("strogatz_bacres1")  # x' = 20 - x - (x*y)/(1+0.5*x**2)
  second = problems.load_problem("strogatz_bacres2")  # y' = 10 - (x*y)/(1+0.5*x**2)
  X, dx = problems.problem_data(first, n_rows=0, seed=1)
  X2, dy = problems.problem_data(second, n_rows=0, seed=1)
  x, y = X.T
  np.testing.assert_allclose(dx, 20 - x - x * y / (1 + 0.5 * x ** 2), rtol=1e-12)
  np.testing.assert_array_equal(X, X2)  # one simulation for the pair, as in PMLB
  np.testing.assert_allclose(dy, 10 - x * y / (1 + 0.5 * x ** 2), rtol=1e-12)
  assert X.shape == (400, 2)
  for k in range(4):  # 4 trajectories of 100 steps of 0.1: the states follow the derivatives
    rows = slice(100 * k, 100 * (k + 1))
    for state, derivative in ((x, dx), (y, dy)):
      slope = np.gradient(state[rows], problems.STROGATZ_DT, edge_order=2)
      assert np.abs(slope - derivative[rows]).max() < 0.01 * np.ptp(derivative)
  assert not np.allclose(problems.problem_data(first, n_rows=0, seed=2)[0], X)


def test_read_sympy_reads_named_formulas_and_refuses_code():
  names = {n: sympy.Symbol(n) for n in ("q", "Ef", "E", "x_0")}
  q, ef, e, x0 = names.values()
  assert read_sympy("q*(Ef + E) ^ 2 / ln(x_0)", names) == q * (ef + e) ** 2 / sympy.log(x0)
  assert read_sympy("cot(q) + pi", names) == sympy.cot(q) + sympy.pi
  assert read_sympy("E", {}) == sympy.E  # a constant unless a variable is named so
  for text, why in (("q.real", "attribute"), ("__import__('os')", "unknown function"),
                    ("x_1 + q", "unknown variable 'x_1'"), ("lambda: q", "not allowed"),
                    ("q" + "+q" * 5000, "characters refused")):
    with pytest.raises(InfixError, match=why):
      read_sympy(text, names)
  with pytest.raises(InfixError, match="unknown function 'ln'"):  # parse_infix is unchanged
    parse_infix("ln(x_0)")


def test_a_csv_problem_drops_incomplete_rows_and_refuses_unusable_files(tmp_path, caplog):
  rng = np.random.default_rng(0)
  X = rng.uniform(1, 2, (40, 2))
  lines = ["a,b,y"] + [f"{a},{b},{a * b}" for a, b in X]
  lines[3], lines[9] = "1.5,,2.0", "1.5,inf,2.0"
  good = tmp_path / "good.csv"
  good.write_text("\n".join(lines) + "\n")
  with caplog.at_level(logging.WARNING):
    problem = problems.csv_problem(str(good), "y")
  assert "dropping 2 of 40 rows" in caplog.text
  assert problem.variables == ("a", "b") and problem.group == "csv" and problem.truth is None
  X_read, y_read = problems.problem_data(problem, n_rows=10, seed=0)
  assert X_read.shape == (10, 2)  # a seeded subset of the 38 complete rows
  np.testing.assert_allclose(y_read, X_read[:, 0] * X_read[:, 1])
  cases = {"no column": ("a,b\n1,2\n", "has no column 'y'"),
           "text": ("a,y\n1,2\nfoo,3\n", "holds 'foo', not a number"),
           "constant": ("a,y\n" + "".join(f"{i},5\n" for i in range(20)), "y is constant"),
           "one row": ("a,y\n1,2\n", "at least 2 rows"),
           "few rows": ("a,y\n" + "".join(f"{i},{i * i}\n" for i in range(5)),
                        "needs at least 10")}
  for name, (text, message) in cases.items():
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
      problems.csv_problem(str(path), "y")
  with pytest.raises(UserError, match="config.csv.target"):
    problems.csv_problem(str(good), "")
  with pytest.raises(UserError, match="did you mean feynman_I_12_1"):
    problems.select_problems("feynman_I_12_10")
