"""`SNIPRegressor`: symbolic regression with a SNIP SR model, as a scikit-learn estimator.

  reg = SNIPRegressor(model_path="snip-e2e-sr.pth", random_state=0).fit(X, y)
  reg.equation_, reg.sympy_expr(), reg.predict(X_test), reg.score(X_test, y_test)

`fit`: rows with NaN/inf are dropped (a warning counts them); more features than the model's
`max_input_dimension` -> the ones with the largest |Pearson r| with y (as E2E does), kept in
`selected_features_`; X standardised for the encoder; more rows than `max_input_points` -> a
seeded random subset for the encoder; candidates decoded (sampling at temperature 0.1, the
original's SR decoding, or greedy/beam), their constants refined by BFGS on the standardised
data (float64, the first 1024 rows, as the original), optionally a latent-space search (GWO), and
the best by training R² is kept. The standardisation is written back into the equation, so
`predict` evaluates it on raw X. Fixes against the original: seeded; candidates fitted in the
space the encoder saw (the original encodes standardised X but fits raw X); a BFGS time limit
keeps the best point instead of dropping the candidate; failed candidates are counted, never
raised.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Optional

import numpy as np
from absl import logging
from sklearn.base import BaseEstimator, RegressorMixin

from snip_jax.data.tabular import clean_data
from snip_jax.sr import lso
from snip_jax.symbolic.generator import skeleton
from snip_jax.symbolic.refine import refine_many
from snip_jax.symbolic.trees import Expression, Node

DECODINGS = ("sample", "greedy", "beam")
REFINE_PER = ("equation", "skeleton")


@dataclasses.dataclass
class Tried:
  """A candidate the search tried: its equation (on raw X), training R², size (nodes of the
  fitted form, before the standardisation is written back) and refinement status."""

  equation: str
  r2: float
  size: int
  status: str


@functools.lru_cache(maxsize=4)
def _load(model_path: str):
  """A loaded SR model (cached: estimators are cloned and refitted often)."""
  from snip_jax.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top

  model = load_pretrained(model_path)
  if model.kind != "sr":
    raise ValueError(f"{model_path} is not a symbolic-regression checkpoint (it has no mapper);"
                     " SNIPRegressor needs snip-e2e-sr.pth or an SR training workdir")
  return model


def top_features(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
  """Indices (ascending) of the k columns with the largest |Pearson r| with y."""
  if X.shape[1] <= k:
    return np.arange(X.shape[1])
  Xc, yc = X - X.mean(0), y - y.mean()
  norms = np.sqrt((Xc ** 2).sum(0) * (yc ** 2).sum())
  r = np.abs(Xc.T @ yc) / np.where(norms > 0, norms, np.inf)
  return np.sort(np.argsort(-r, kind="stable")[:k])


def raw_expression(expr: Expression, columns: np.ndarray, mean: np.ndarray,
                   scale: np.ndarray) -> Expression:
  """`expr` over standardised selected columns x_i -> over raw X: x_i becomes
  (1/scale_i)·x_{columns[i]} + (−mean_i/scale_i)."""

  def rewrite(node: Node) -> Node:
    if node.value.startswith("x_") and not node.children:
      i = int(node.value[2:])
      a, b = float(1.0 / scale[i]), float(-mean[i] / scale[i])
      return Node("add", [Node("mul", [Node(repr(a)), Node(f"x_{columns[i]}")]), Node(repr(b))])
    return Node(node.value, [rewrite(child) for child in node.children])

  return Expression([rewrite(node) for node in expr.nodes])


class SNIPRegressor(RegressorMixin, BaseEstimator):
  """Symbolic regression with a SNIP SR checkpoint (see the module docstring).

  Parameters: `model_path` (an SR `.pth`, converted directory or SR training workdir),
  `decoding` ("sample", "greedy" or "beam"), `n_candidates` (samples or beams per dataset),
  `temperature`, `max_len` (tokens per candidate), `refine` (BFGS on the constants), `lso`
  (latent-space search after direct decoding), `lso_iterations`, `lso_pop_size`,
  `lso_samples` (decodings per member), `stop_r2`, `time_budget` (seconds for the search; the
  best found so far when it runs out), `n_jobs` (processes refining candidates in parallel;
  the same results as one), `refine_per` ("equation": each distinct decoded equation refined
  once per fit; "skeleton": once per skeleton, later decodings of it reuse that refinement —
  faster when the search keeps decoding one form with other constants), `random_state`.
  """

  def __init__(self, model_path: str = "", decoding: str = "sample", n_candidates: int = 10,
               temperature: float = 0.1, max_len: int = 200, refine: bool = True,
               lso: bool = False, lso_iterations: int = 80, lso_pop_size: int = 50,
               lso_samples: int = 2, stop_r2: float = 0.99,
               time_budget: Optional[float] = None, n_jobs: int = 1,
               refine_per: str = "equation", random_state: int = 0):
    self.model_path = model_path
    self.decoding = decoding
    self.n_candidates = n_candidates
    self.temperature = temperature
    self.max_len = max_len
    self.refine = refine
    self.lso = lso
    self.lso_iterations = lso_iterations
    self.lso_pop_size = lso_pop_size
    self.lso_samples = lso_samples
    self.stop_r2 = stop_r2
    self.time_budget = time_budget
    self.n_jobs = n_jobs
    self.refine_per = refine_per
    self.random_state = random_state

  # ---- fit ----

  def fit(self, X, y) -> "SNIPRegressor":
    """Search for an equation y ≈ f(X); the best by training R² is `expression_`."""
    if self.decoding not in DECODINGS:
      raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
    if self.refine_per not in REFINE_PER:
      raise ValueError(f"refine_per must be one of {REFINE_PER}, got {self.refine_per!r}")
    model = _load(str(self.model_path))
    X, y = clean_data(X, y)
    self.n_features_in_ = X.shape[1]
    self.selected_features_ = top_features(X, y, model.env_cfg.max_input_dimension)
    if len(self.selected_features_) < X.shape[1]:
      logging.warning("X has %d features; this model takes %d: kept the most correlated %s",
                      X.shape[1], len(self.selected_features_), self.selected_features_.tolist())
    Xs = X[:, self.selected_features_]
    self.x_mean_, self.x_scale_ = Xs.mean(0), np.where(Xs.std(0) > 0, Xs.std(0), 1.0)
    search = _Search(self, model, (Xs - self.x_mean_) / self.x_scale_, y)
    best = search.run()
    to_raw = lambda e: raw_expression(e, self.selected_features_, self.x_mean_, self.x_scale_)
    self.candidates_ = sorted((Tried(to_raw(e).infix(), r2, len(e), status)
                               for e, r2, status in search.tried), key=lambda t: -t.r2)
    self.n_invalid_ = search.n_invalid
    if best is None:
      raise RuntimeError(f"none of the {len(search.tried) + search.n_invalid} decoded"
                         " candidates is a valid equation for this data")
    self.expression_ = to_raw(best)
    self.equation_ = self.expression_.infix()
    self.train_r2_ = search.best_r2
    return self

  # ---- use ----

  def predict(self, X) -> np.ndarray:
    """The equation evaluated on raw X [n, n_features_in_] (NaN where it is undefined)."""
    if not hasattr(self, "expression_"):
      raise ValueError("this SNIPRegressor is not fitted yet: call fit(X, y) first")
    X = np.asarray(X, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X
    if X.ndim != 2 or X.shape[1] != self.n_features_in_:
      raise ValueError(f"X must have {self.n_features_in_} columns as in fit; got {X.shape}")
    return self.expression_.evaluate(X)[:, 0]

  def sympy_expr(self):
    """The fitted equation as a sympy expression (variables x_0, x_1, ... = X's columns)."""
    return self.expression_.to_sympy()


class _Search:
  """One fit's search: direct decoding, refinement, optional LSO; tracks the best candidate."""

  def __init__(self, reg: SNIPRegressor, model, Xs: np.ndarray, y: np.ndarray):
    self.reg, self.model, self.Xs, self.y = reg, model, Xs, y
    self.rng = np.random.default_rng(reg.random_state)
    self.deadline = (np.inf if reg.time_budget is None
                     else time.perf_counter() + reg.time_budget)
    self.tried: list[tuple[Expression, float, str]] = []  # standardised-space candidates
    self.n_invalid = 0
    self.refined: dict[str, Optional[tuple[Expression, float]]] = {}  # prefix -> scored
    self.best, self.best_r2 = None, -np.inf

  def run(self) -> Optional[Expression]:
    """Direct decoding, then LSO when asked and not yet above stop_r2."""
    x, y = self.encoder_rows = self._encoder_rows()
    found = self.model.generate(x, y, method=self.reg.decoding,
                                n_samples=self.reg.n_candidates,
                                beam_size=self.reg.n_candidates,
                                temperature=self.reg.temperature,
                                seed=int(self.rng.integers(2**31)), max_len=self.reg.max_len)
    self._score([c.expression for c in found])
    if self.reg.lso and self.best_r2 <= self.reg.stop_r2:
      self._lso()
    return self.best

  def _encoder_rows(self) -> tuple[np.ndarray, np.ndarray]:
    """At most max_len rows (a seeded random subset) for the encoder."""
    limit = self.model.env_cfg.max_len
    if len(self.y) <= limit:
      return self.Xs, self.y
    keep = np.sort(self.rng.choice(len(self.y), limit, replace=False))
    return self.Xs[keep], self.y[keep]

  def _score(self, expressions: list) -> list:
    """Refine and score candidates (None = invalid): each one's (Expression, R²) or None.

    Each distinct decoded equation (with refine_per="skeleton": each skeleton, from its first
    decoded constants) is refined once per fit, so repeats during the search cost nothing; the
    new ones are refined in one call (in `n_jobs` processes).
    """
    key = skeleton if self.reg.refine_per == "skeleton" else Expression.prefix
    keys = [None if e is None else key(e) for e in expressions]
    self.n_invalid += keys.count(None)
    new = {k: e for k, e in zip(keys, expressions) if k is not None and k not in self.refined}
    limit = max(0.0, self.deadline - time.perf_counter()) if np.isfinite(self.deadline) else None
    options = {} if self.reg.refine else {"max_evals": 1}
    for k, result in zip(new, refine_many(list(new.values()), self.Xs, self.y,
                                          total_time_limit=limit, n_jobs=self.reg.n_jobs,
                                          **options)):
      self.refined[k] = self._record(result)
    return [None if k is None else self.refined[k] for k in keys]

  def _record(self, result) -> Optional[tuple[Expression, float]]:
    """Track a refined candidate (None if invalid); returns its (Expression, R²)."""
    if result.status == "invalid":
      self.n_invalid += 1
      return None
    r2 = float(result.r2) if np.isfinite(result.r2) else -np.inf
    self.tried.append((result.expression, r2, result.status))
    if r2 > self.best_r2:
      self.best, self.best_r2 = result.expression, r2
    return result.expression, r2

  def _lso(self) -> None:
    """Grey Wolf search in the latent space, the whole population decoded per call; the
    candidates are scored on all rows."""
    reg = self.reg
    options = lso.LSOOptions(pop_size=reg.lso_pop_size, max_iterations=reg.lso_iterations,
                             samples_per_member=reg.lso_samples, stop_r2=reg.stop_r2,
                             max_input_points=self.model.env_cfg.max_len,
                             time_limit=max(0.0, self.deadline - time.perf_counter())
                             if np.isfinite(self.deadline) else None)
    encode = lambda xs, ys: self.model.embed_points(list(zip(xs, ys)))
    x, y = self.encoder_rows  # as the original, the search starts from <= max_len points
    lso.latent_space_optimisation(encode, self._decode_and_score, x, y, options=options,
                                  rng=self.rng)

  def _decode_and_score(self, latents: np.ndarray, samples: int):
    """LSO's callback: per member the best refined equation of its sampled decodings (the
    whole population's candidates refined in one call)."""
    members = self.model.decode_latents(latents, n_samples=samples,
                                        temperature=self.reg.temperature,
                                        seed=int(self.rng.integers(2**31)),
                                        max_len=self.reg.max_len)
    scored = iter(self._score([e for member in members for e in member]))
    equations, r2 = [], []
    for member in members:
      found = [s for s in itertools.islice(scored, len(member)) if s is not None]
      best = max(found, key=lambda s: s[1], default=(None, -np.inf))
      equations.append(best[0])
      r2.append(best[1])
    return equations, np.asarray(r2), []
