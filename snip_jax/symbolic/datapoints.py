"""Input points from centroid mixtures, and the outputs of an expression on them.

Same distribution as the original SNIP `_generate_datapoints`: a mixture of `n_centroids`
gaussian or uniform components with random means, per-dimension variances and, for d > 1,
Haar-random rotations; inputs standardised per dimension; any invalid output rejects the
expression (the original's `max_trials=1`). Components are drawn vectorised from the
`numpy.random.Generator` passed in; points stay in component order as in the original.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.trees import Expression


class Rejected(Exception):
  """A generation attempt was rejected; the message is the reason counted in the stats."""


def random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
  """A Haar-distributed rotation in SO(d) (what scipy's special_ortho_group samples)."""
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  q *= np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def sample_inputs(rng: np.random.Generator, n_points: int, d: int, distribution: str,
                  n_centroids: int, scale: float = 1.0) -> np.ndarray:
  """[n_points, d] standardised mixture samples, multiplied by `scale`."""
  means = rng.standard_normal((n_centroids, d))
  stds = np.sqrt(rng.uniform(0.0, 1.0, size=(n_centroids, d)))
  rotations = [random_rotation(rng, d) for _ in range(n_centroids)] if d > 1 else None
  weights = rng.uniform(0.0, 1.0, size=n_centroids)
  counts = rng.multinomial(n_points, weights / weights.sum())
  if distribution == "gaussian":
    noise = rng.standard_normal((n_points, d))
  elif distribution == "uniform":
    noise = rng.uniform(-1.0, 1.0, size=(n_points, d))
  else:
    raise ValueError(f"unknown input distribution {distribution!r}; use gaussian or uniform")
  component = np.repeat(np.arange(n_centroids), counts)
  points = means[component] + noise * stds[component]
  if rotations is not None:
    start = 0
    for k, count in enumerate(counts):
      if count:
        points[start:start + count] = points[start:start + count] @ rotations[k]
      start += count
  std = points.std(axis=0, keepdims=True)
  if not np.all(std > 0):
    raise Rejected("generation error")
  points = (points - points.mean(axis=0, keepdims=True)) / std
  return points * scale if scale != 1.0 else points


def evaluate_outputs(expr: Expression, x: np.ndarray, cfg: EnvConfig) -> np.ndarray:
  """Outputs at `x`, or Rejected when any point is invalid (NaN, inf, |y| >= max_number).

  Any floating-point error rejects, as under the original's `np.seterr(all="raise")`.
  """
  try:
    y = expr.evaluate(x, use_abs=cfg.use_abs, strict=True)
  except FloatingPointError:
    raise Rejected("generation error") from None
  if not np.all(np.abs(y) < cfg.max_number):  # also false for NaN and inf
    raise Rejected("generation error")
  return y


def normalize_outputs(y: np.ndarray) -> np.ndarray:
  """`normalize_y`: (y - min) / (max - min + 1e-10), per output column."""
  low = y.min(axis=0, keepdims=True)
  return (y - low) / (y.max(axis=0, keepdims=True) - low + 1e-10)


def generate_datapoints(rng: np.random.Generator, expr: Expression, cfg: EnvConfig, d: int,
                        distribution: str, n_centroids: int, n_points: int,
                        n_prediction_points: int = 0, sigmas: Sequence[float] = ()) -> dict:
  """{'fit': (x, y)} plus, for evaluation, {'predict_<sigma>': (x, y)} at each scale.

  Each set draws its own mixture, as the original does.
  """
  sets = {"fit": _one_set(rng, expr, cfg, d, distribution, n_centroids, n_points, 1.0)}
  if n_prediction_points:
    for sigma in sigmas:
      sets[f"predict_{float(sigma)}"] = _one_set(
          rng, expr, cfg, d, distribution, n_centroids, n_prediction_points, sigma)
  return sets


def _one_set(rng, expr, cfg, d, distribution, n_centroids, n_points, scale):
  with np.errstate(all="raise"):
    try:
      x = sample_inputs(rng, n_points, d, distribution, n_centroids, scale)
    except FloatingPointError:
      raise Rejected("generation error") from None
  y = evaluate_outputs(expr, x, cfg)
  if cfg.normalize_y:
    y = normalize_outputs(y)
  return x, y


def output_noise(rng: np.random.Generator, gamma: float, y: np.ndarray,
                 all_outputs: Sequence[np.ndarray]) -> np.ndarray:
  """The original's output noise: gamma * rms(|y| + 1e-100 over all sets) * N(0, 1)."""
  stacked = np.concatenate(list(all_outputs))
  norm = np.linalg.norm((np.abs(stacked) + 1e-100) / np.sqrt(stacked.shape[0]))
  return gamma * norm * rng.standard_normal(y.shape)
