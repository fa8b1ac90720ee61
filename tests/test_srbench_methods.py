"""The compared methods: Operon solves an easy Feynman problem; every model read into sympy
predicts what the fitted estimator predicts."""

import pathlib
import time

import numpy as np
import pytest

from configs import srbench as srbench_configs
from snip_jax.errors import UserError
from snip_jax.srbench import metrics, problems
from snip_jax.srbench.methods import METHODS, check_features, check_methods

SETTINGS = {k: v.to_dict() for k, v in srbench_configs.method_settings().items()}
TINY_SR = pathlib.Path(__file__).parent / "fixtures" / "snip_sr_original" / "tiny_sr.pth"


def _fitted(method: str, problem_name: str, budget: float, options: dict, n_rows: int = 1000):
  """(problem, fitted estimator, its sympy model, test X, test y, fit seconds)."""
  problem = problems.load_problem(problem_name)
  X, y = problems.problem_data(problem, n_rows, seed=0)
  n_train = len(y) * 3 // 4
  estimator = METHODS[method].build(budget, 0, options)
  start = time.perf_counter()
  estimator.fit(X[:n_train], y[:n_train])
  seconds = time.perf_counter() - start
  model = METHODS[method].to_sympy(estimator, problem.symbols)
  return problem, estimator, model, X[n_train:], y[n_train:], seconds


def _assert_model_predicts_like(problem, estimator, model, X, rtol):
  """The sympy model, evaluated independently of the estimator, gives its predictions."""
  np.testing.assert_allclose(problems.evaluate(model, problem.variables, X),
                             estimator.predict(X), rtol=rtol, atol=rtol)


def test_operon_solves_feynman_I_12_1_and_its_model_reads_back():
  problem, estimator, model, X, y, seconds = _fitted("operon", "feynman_I_12_1", 2.0,
                                                     SETTINGS["operon"])
  assert metrics.r2_score(y, estimator.predict(X)) > 0.999
  assert seconds < 2.0 + 1.0  # Operon's own clock stops it at the budget
  assert {s.name for s in model.free_symbols} == {"mu", "Nn"}
  _assert_model_predicts_like(problem, estimator, model, X, rtol=1e-4)  # float32 constants


def test_gplearn_stops_within_its_budget_and_its_program_reads_back():
  options = {**SETTINGS["gplearn"], "population_size": 300}
  problem, estimator, model, X, _, seconds = _fitted("gplearn", "feynman_I_12_11", 1.0, options)
  one_generation = seconds / estimator.generations_
  # a generation starts only while the last one's duration still fits in the budget
  assert estimator.generations_ >= 1 and seconds < 1.0 + 2 * one_generation + 0.5
  assert estimator.generations_ < options["generations"]
  _assert_model_predicts_like(problem, estimator.estimator_, model, X, rtol=1e-9)


@pytest.mark.parametrize("method", ["linear", "polynomial"])
def test_baseline_models_read_back(method):
  problem, estimator, model, X, y, _ = _fitted(method, "feynman_II_27_18", 1.0,
                                               SETTINGS.get(method, {}))
  _assert_model_predicts_like(problem, estimator, model, X, rtol=1e-9)
  if method == "polynomial":  # E_den = epsilon*Ef**2 is cubic: degree 2 is close, not exact
    assert 0.99 < metrics.r2_score(y, estimator.predict(X)) < 0.9999


def test_unusable_methods_are_one_clear_error(tmp_path):
  with pytest.raises(UserError, match="need an SR model: set config.snip.model_path"):
    check_methods(["operon", "snip_lso"], "")
  with pytest.raises(UserError, match="does not exist"):
    check_methods(["snip"], str(tmp_path / "missing.pth"))
  with pytest.raises(UserError, match="unknown method 'pysr'"):
    check_methods(["pysr"], "")
  with pytest.raises(UserError, match="at most 100 features; problem wide has 101"):
    check_features(["linear", "polynomial"], "wide", 101)


def test_snip_fits_within_the_harness_and_its_equation_reads_back():
  options = {**SETTINGS["snip"], "model_path": str(TINY_SR), "n_candidates": 2}
  assert METHODS["snip"].prepare is not None
  METHODS["snip"].prepare(options)  # loads the model before any clock starts
  problem, estimator, model, X, _, _ = _fitted("snip", "strogatz_lv1", 2.0, options, n_rows=0)
  assert {s.name for s in model.free_symbols} <= {"x", "y"}
  _assert_model_predicts_like(problem, estimator, model, X, rtol=1e-9)
