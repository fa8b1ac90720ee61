"""The methods compared: scikit-learn estimators with a time budget and a sympy model reader.

  operon      pyoperon's SymbolicRegressor, single-threaded, `max_time` = the budget (whole
              seconds), SRBench's current Operon settings (population 1000, brood 5, at most 1e6
              evaluations, objectives R² and length) except model selection by training MSE
              (SRBench's MDL needs a noise estimate it gets from a random forest)
  gplearn     gplearn's SymbolicRegressor with SRBench's settings, evolved one generation at a
              time (warm start) while the next one fits in the budget, at most `generations`
  linear      scikit-learn's LinearRegression (a baseline; ignores the budget)
  polynomial  PolynomialFeatures(degree) + LinearRegression (a baseline; ignores the budget)
  snip        this project's SNIPRegressor, direct decoding, `time_budget` = the budget
  snip_lso    SNIPRegressor with the latent-space search (lso=True), the same budget

Models become sympy expressions over the problem's symbols without executing any text:
Operon's model string goes through the allowlist reader (infix.read_sympy), gplearn's program
(a prefix list of functions and terminals) is walked node by node, the others are built from
their coefficients or expression trees. The settings of each method are config fields
(configs/srbench.py: config.operon, config.gplearn, config.polynomial, config.snip).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import operator
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from snip_jax.errors import UserError

SNIP_METHODS = ("snip", "snip_lso")
POLYNOMIAL_MAX_FEATURES = 100  # degree-2 terms grow as d²/2


@dataclasses.dataclass(frozen=True)
class Method:
  """How to build one fit's estimator and read its model; `options` come from the config."""

  name: str
  build: Callable[[float, int, dict], Any]  # (budget seconds, seed, options) -> estimator
  to_sympy: Callable[[Any, Sequence[Any]], Any]  # (fitted estimator, symbols) -> sympy
  requires: str  # the module it needs (a clear error when it is not installed)
  max_features: Optional[int] = None
  prepare: Optional[Callable[[dict], None]] = None  # before the clock starts (loading a model)


# ------------------------------------------------------------------------- Operon


def _operon(budget: float, seed: int, options: dict):
  """pyoperon's SymbolicRegressor on one thread, stopped by its own clock after the budget."""
  from pyoperon.sklearn import SymbolicRegressor  # pylint: disable=g-import-not-at-top

  return SymbolicRegressor(max_time=max(1, int(budget)), n_threads=1, random_state=seed,
                           **{k: list(v) if isinstance(v, tuple) else v
                              for k, v in options.items()})


def _operon_sympy(estimator, symbols: Sequence[Any]):
  """Operon's model string (named x_0, x_1, ...) read by the allowlist reader."""
  from snip_jax.symbolic.infix import read_sympy  # pylint: disable=g-import-not-at-top

  names = [f"x_{i}" for i in range(len(symbols))]
  text = estimator.get_model_string(estimator.model_, 16, names)
  return read_sympy(text, dict(zip(names, symbols)))


# ------------------------------------------------------------------------- gplearn


class BudgetedGplearn(BaseEstimator, RegressorMixin):
  """gplearn's SymbolicRegressor evolved one generation at a time until the budget is spent.

  A generation starts only if the last one's duration still fits in `time_budget`; the run
  also ends after `generations` generations or once the fitness reaches gplearn's
  stopping_criteria. `options` are gplearn's own (function_set, population_size, ...).
  """

  def __init__(self, time_budget: float = 60.0, generations: int = 500,
               options: Optional[dict] = None, random_state: int = 0):
    self.time_budget = time_budget
    self.generations = generations
    self.options = options
    self.random_state = random_state

  def fit(self, X, y) -> "BudgetedGplearn":
    """Evolve while the budget lasts; `generations_` says how many generations ran."""
    from gplearn.genetic import SymbolicRegressor  # pylint: disable=g-import-not-at-top

    start = time.monotonic()
    self.estimator_ = SymbolicRegressor(generations=1, warm_start=True,
                                        random_state=self.random_state, **(self.options or {}))
    while True:
      began = time.monotonic()
      self.estimator_.fit(X, y)
      took = time.monotonic() - began
      self.generations_ = self.estimator_.generations
      if (self.generations_ >= self.generations or time.monotonic() - start + took >
          self.time_budget or self.estimator_._program.raw_fitness_ <=  # pylint: disable=protected-access
          self.estimator_.stopping_criteria):
        return self
      self.estimator_.set_params(generations=self.generations_ + 1)

  def predict(self, X) -> np.ndarray:
    """The best program's values at X."""
    return self.estimator_.predict(X)


def _gplearn(budget: float, seed: int, options: dict):
  """BudgetedGplearn with gplearn's options from the config (SRBench's settings)."""
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  generations = options.pop("generations")
  return BudgetedGplearn(budget, generations, options, seed)


def _gplearn_sympy(estimator, symbols: Sequence[Any]):
  """gplearn's best program, a prefix list of functions and terminals, walked into sympy.

  Its protected division, log and sqrt are read as the plain functions, as SRBench reads them.
  """
  import sympy  # pylint: disable=g-import-not-at-top

  functions = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
               "div": operator.truediv, "sqrt": sympy.sqrt, "log": sympy.log, "abs": sympy.Abs,
               "neg": operator.neg, "inv": lambda a: 1 / a, "max": sympy.Max, "min": sympy.Min,
               "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan}
  stack = []
  for node in reversed(estimator.estimator_._program.program):  # pylint: disable=protected-access
    if isinstance(node, (int, np.integer)):
      stack.append(symbols[int(node)])
    elif isinstance(node, (float, np.floating)):
      stack.append(sympy.Float(float(node)))
    elif node.name in functions:
      stack.append(functions[node.name](*[stack.pop() for _ in range(node.arity)]))
    else:
      raise ValueError(f"gplearn function {node.name!r} has no sympy counterpart here")
  return stack.pop()


# ------------------------------------------------------------------------- baselines


def _linear(budget: float, seed: int, options: dict):
  """Ordinary least squares."""
  del budget, seed, options
  from sklearn.linear_model import LinearRegression  # pylint: disable=g-import-not-at-top

  return LinearRegression()


def _polynomial(budget: float, seed: int, options: dict):
  """Least squares on all monomials up to `degree`."""
  del budget, seed
  from sklearn.linear_model import LinearRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import PolynomialFeatures  # pylint: disable=g-import-not-at-top

  return make_pipeline(PolynomialFeatures(degree=options["degree"], include_bias=False),
                       LinearRegression())


def _linear_sympy(estimator, symbols: Sequence[Any]):
  """intercept + Σ coef_i · x_i."""
  return _weighted_sum(estimator.intercept_, estimator.coef_, [(s,) for s in symbols])


def _polynomial_sympy(estimator, symbols: Sequence[Any]):
  """intercept + Σ coef_k · Π x_i^p_ki over the pipeline's monomials."""
  import sympy  # pylint: disable=g-import-not-at-top

  features, regression = estimator[0], estimator[-1]
  monomials = [(sympy.Mul(*[s ** int(p) for s, p in zip(symbols, row)]),)
               for row in features.powers_]
  return _weighted_sum(regression.intercept_, regression.coef_, monomials)


def _weighted_sum(intercept: float, coefficients: np.ndarray, terms: list[tuple]):
  """intercept + Σ coefficient · term, with float64 coefficients as sympy Floats."""
  import sympy  # pylint: disable=g-import-not-at-top

  return sympy.Add(sympy.Float(float(intercept)),
                   *[sympy.Float(float(c)) * term for c, (term,) in zip(coefficients, terms)])


# ------------------------------------------------------------------------- SNIP


def _snip(lso: bool) -> Callable[[float, int, dict], Any]:
  """The builder of SNIPRegressor, with or without the latent-space search."""

  def build(budget: float, seed: int, options: dict):
    """SNIPRegressor searching for at most `budget` seconds."""
    from snip_jax.sr.regressor import SNIPRegressor  # pylint: disable=g-import-not-at-top

    return SNIPRegressor(random_state=seed, time_budget=budget, lso=lso, **options)

  return build


def _snip_prepare(options: dict) -> None:
  """Load the SR model once per worker, before any fit's clock starts."""
  from snip_jax.sr import regressor  # pylint: disable=g-import-not-at-top

  regressor._load(str(options["model_path"]))  # pylint: disable=protected-access


def _snip_sympy(estimator, symbols: Sequence[Any]):
  """SNIPRegressor's equation over x_0, x_1, ... renamed to the problem's symbols."""
  import sympy  # pylint: disable=g-import-not-at-top

  return estimator.sympy_expr().xreplace(
      {sympy.Symbol(f"x_{i}"): s for i, s in enumerate(symbols)})


METHODS = {
    "operon": Method("operon", _operon, _operon_sympy, "pyoperon"),
    "gplearn": Method("gplearn", _gplearn, _gplearn_sympy, "gplearn"),
    "linear": Method("linear", _linear, _linear_sympy, "sklearn"),
    "polynomial": Method("polynomial", _polynomial, _polynomial_sympy, "sklearn",
                         max_features=POLYNOMIAL_MAX_FEATURES),
    "snip": Method("snip", _snip(False), _snip_sympy, "jax", prepare=_snip_prepare),
    "snip_lso": Method("snip_lso", _snip(True), _snip_sympy, "jax", prepare=_snip_prepare),
}


def check_methods(names: Sequence[str], snip_model_path: str) -> None:
  """Every named method exists, is installed, and SNIP has a model; UserError otherwise."""
  if not names:
    raise UserError(f"config.methods is empty: name some of {', '.join(METHODS)}")
  for name in names:
    if name not in METHODS:
      raise UserError(f"unknown method {name!r} in config.methods; known: {', '.join(METHODS)}")
    if importlib.util.find_spec(METHODS[name].requires) is None:
      raise UserError(f"method {name} needs the {METHODS[name].requires} package: pip install"
                      " -r requirements.txt (or pip install 'snip-jax[bench]')")
  if set(names) & set(SNIP_METHODS):
    if not snip_model_path:
      raise UserError("methods snip and snip_lso need an SR model: set config.snip.model_path to"
                      " snip-e2e-sr.pth, its converted directory or an SR training workdir")
    if not os.path.exists(snip_model_path):
      raise UserError(f"config.snip.model_path={snip_model_path} does not exist")


def check_features(names: Sequence[str], problem_name: str, n_features: int) -> None:
  """A UserError if a method takes fewer features than the problem has."""
  for name in names:
    limit = METHODS[name].max_features
    if limit is not None and n_features > limit:
      raise UserError(f"method {name} takes at most {limit} features; problem {problem_name}"
                      f" has {n_features}: drop it from config.methods or select features")
