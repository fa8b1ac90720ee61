"""Property labels of a 1-D function sample, as the original's property-prediction task defines them.

Each label reads the points sorted by x (numpy's default `argsort`, as the original) and
reproduces the original arithmetic operation for operation, so values are bit-identical:

- `ncr`: non-convexity ratio, 1 - share of random point triples lying on or below their chord;
- `upward`: (#rises - #falls) / n over consecutive sorted points, with a 1e-3 dead band;
- `yavg`: mean of y after min-max scaling to [0, 1];
- `oscil`: log(1 + number of direction changes), with a 1e-3 dead band.

The loops of the original are vectorised; only the legacy-RNG draws of `ncr` stay in a
loop, because replaying `RandomState.choice` call by call is what keeps its draws identical.
"""

from __future__ import annotations

from typing import Union

import numpy as np

PROPERTY_NAMES = ("ncr", "upward", "yavg", "oscil")
# Dead band for the rise/fall tests of `upward` and `oscil`.
SLOPE_EPS = 1e-3
# Slack of the chord test of `ncr`.
CHORD_EPS = 1e-9
# Added to the y range of `yavg` so a constant series does not divide by zero.
RANGE_EPS = 1e-12

Rng = Union[np.random.Generator, np.random.RandomState]


def _as_column(values, name: str) -> np.ndarray:
  """Return `values` as a float64 vector, accepting shape [n] or [n, 1] only."""
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim == 2 and arr.shape[1] == 1:
    return arr[:, 0]
  if arr.ndim == 1:
    return arr
  raise ValueError(
      f"properties are defined for 1-D inputs; got {name} with shape {arr.shape} "
      f"(expected [n] or [n, 1])")


def _checked_points(x, y, min_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Return x and y as float64 vectors after checking shapes, lengths and the point count."""
  xs = _as_column(x, "x")
  ys = _as_column(y, "y")
  if xs.shape[0] != ys.shape[0]:
    raise ValueError(f"x and y must have the same number of points; got {xs.shape[0]} and {ys.shape[0]}")
  if xs.shape[0] < min_points:
    raise ValueError(f"{what} needs at least {min_points} points; got {xs.shape[0]}")
  return xs, ys


def _sorted_points(x, y, min_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Validate a sample and return its x and y ordered by x, as the original orders them."""
  xs, ys = _checked_points(x, y, min_points, what)
  order = np.argsort(xs)
  return xs[order], ys[order]


def _triples_legacy(rng: np.random.RandomState, n: int, num_trials: int) -> np.ndarray:
  """Draw `num_trials` index triples exactly as the original's per-trial `choice` calls do."""
  triples = np.empty((num_trials, 3), dtype=np.int64)
  for t in range(num_trials):
    triples[t] = rng.choice(n, 3, replace=False)
  return triples


def _triples_generator(rng: np.random.Generator, n: int, num_trials: int) -> np.ndarray:
  """Draw `num_trials` uniform triples of distinct indices in [0, n) in one vectorised pass.

  Sequential draws without replacement: the k-th index is uniform over the n - k values
  not yet taken, obtained by drawing from [0, n - k) and stepping over the taken ones in
  increasing order.
  """
  first = rng.integers(0, n, size=num_trials)
  second = rng.integers(0, n - 1, size=num_trials)
  second += second >= first
  low = np.minimum(first, second)
  high = np.maximum(first, second)
  third = rng.integers(0, n - 2, size=num_trials)
  third += third >= low
  third += third >= high
  return np.stack([first, second, third], axis=1)


def ncr(x, y, rng: Rng, num_trials: int = 1000) -> float:
  """Non-convexity ratio: the share of random triples whose middle point lies above the chord.

  With a `np.random.RandomState` the triples are those of the original (which used the
  global legacy RNG), so seeding it with the original's seed gives the same value bit for
  bit. With a `np.random.Generator` the triples are drawn vectorised from another stream,
  so the value agrees only statistically. Triples whose outer x coincide give a NaN chord
  and count as non-convex, as in the original under numpy's default error handling.
  """
  if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 1:
    raise ValueError(f"num_trials must be a positive integer; got {num_trials!r}")
  xs, ys = _sorted_points(x, y, 3, "ncr")
  n = xs.shape[0]
  if isinstance(rng, np.random.RandomState):
    triples = _triples_legacy(rng, n, int(num_trials))
  elif isinstance(rng, np.random.Generator):
    triples = _triples_generator(rng, n, int(num_trials))
  else:
    raise TypeError(
        f"rng must be a numpy.random.Generator or numpy.random.RandomState; got {type(rng).__name__}")
  triples.sort(axis=1)
  x0, x1, x2 = xs[triples].T
  y0, y1, y2 = ys[triples].T
  with np.errstate(divide="ignore", invalid="ignore"):
    chord = ((x1 - x0) * y2 + (x2 - x1) * y0) / (x2 - x0)
  successes = int(np.count_nonzero(y1 <= chord + CHORD_EPS))
  return 1 - successes / int(num_trials)


def upward(x, y) -> float:
  """Net upward tendency: (#rises - #falls) / n over consecutive points sorted by x."""
  _, ys = _sorted_points(x, y, 2, "upward")
  steps = np.diff(ys)
  rises = int(np.count_nonzero(steps > SLOPE_EPS))
  falls = int(np.count_nonzero(steps < -SLOPE_EPS))
  return (rises - falls) / ys.shape[0]


def yavg(y) -> float:
  """Mean of y after scaling it to [0, 1] by its own minimum and maximum."""
  ys = _as_column(y, "y")
  if ys.shape[0] < 1:
    raise ValueError("yavg needs at least 1 point; got 0")
  low = np.min(ys)
  scaled = (ys - low) / (np.max(ys) - low + RANGE_EPS)
  return float(np.mean(scaled))


def oscil(x, y) -> float:
  """Oscillation: log(1 + number of up/down direction changes) along the x-sorted series.

  The original's state machine starts "up" iff the first step rises by more than the dead
  band, then for each later step outside the band flips state (counting a change) when the
  step's direction differs from the state. Its state is therefore always the direction of
  the last significant step (or the initial one), so the count equals the number of
  alternations in [initial direction] + [directions of significant later steps].
  """
  _, ys = _sorted_points(x, y, 2, "oscil")
  steps = np.diff(ys)
  later = steps[1:]
  significant = later[(later > SLOPE_EPS) | (later < -SLOPE_EPS)]
  directions = np.concatenate([[steps[0] > SLOPE_EPS], significant > SLOPE_EPS])
  changes = int(np.count_nonzero(directions[1:] != directions[:-1]))
  return float(np.log(changes + 1))


def compute_property(name: str, x, y, rng: Rng | None = None) -> float:
  """Compute the property label `name` of one sample; `rng` is used only by 'ncr'."""
  if name == "ncr":
    if rng is None:
      raise ValueError("property 'ncr' draws random triples; pass rng (numpy Generator or RandomState)")
    return ncr(x, y, rng)
  if name == "upward":
    return upward(x, y)
  if name == "yavg":
    _checked_points(x, y, 1, "yavg")
    return yavg(y)
  if name == "oscil":
    return oscil(x, y)
  raise ValueError(f"unknown property {name!r}; valid properties are {', '.join(PROPERTY_NAMES)}")
