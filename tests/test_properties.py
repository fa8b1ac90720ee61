"""Tests of the property labels against the original's fixture and straightforward loop versions."""

import gzip
import json
import math
import pathlib

import numpy as np
import pytest

from snip_jax.symbolic import properties
from snip_jax.symbolic.properties import compute_property, ncr, oscil, upward, yavg

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "snip_original" / "generator_samples.jsonl.gz"
NUM_TRIALS = 1000


@pytest.fixture(scope="module")
def d1_samples():
  """The fixture's d1 samples that carry their points, with x and y as float64 arrays."""
  samples = []
  with gzip.open(FIXTURE, "rt") as handle:
    for line in handle:
      record = json.loads(line)
      if record["set"] == "d1" and "x_to_fit" in record:
        record["x"] = np.asarray(record["x_to_fit"], dtype=np.float64)
        record["y"] = np.asarray(record["y_to_fit"], dtype=np.float64)
        samples.append(record)
  assert len(samples) == 20, "the fixture should store points for the first 20 d1 samples"
  return samples


def loop_oscil(y_sorted):
  """The original's oscillation state machine, step by step."""
  changes = 0
  up = y_sorted[1] - y_sorted[0] > 1e-3
  for t in range(1, len(y_sorted) - 1):
    step = y_sorted[t + 1] - y_sorted[t]
    if step > 1e-3 and not up:
      changes += 1
      up = True
    elif step < -1e-3 and up:
      changes += 1
      up = False
  return np.log(changes + 1)


def loop_upward(y_sorted):
  """The original's upward count, step by step."""
  ups = downs = 0
  for t in range(len(y_sorted) - 1):
    step = y_sorted[t + 1] - y_sorted[t]
    if step > 1e-3:
      ups += 1
    elif step < -1e-3:
      downs += 1
  return (ups - downs) / len(y_sorted)


def loop_ncr(x, y, legacy_rng, num_trials=NUM_TRIALS):
  """The original's ncr trial loop with scalar arithmetic, drawing from `legacy_rng`."""
  order = np.argsort(x)
  xs, ys = x[order], y[order]
  successes = 0
  with np.errstate(divide="ignore", invalid="ignore"):
    for _ in range(num_trials):
      idx = np.sort(legacy_rng.choice(len(xs), size=3, replace=False))
      xv, yv = xs[idx], ys[idx]
      chord = ((xv[1] - xv[0]) * yv[2] + (xv[2] - xv[1]) * yv[0]) / (xv[2] - xv[0])
      if yv[1] <= chord + 1e-9:
        successes += 1
  return 1 - successes / num_trials


def exact_ncr(x, y):
  """The ncr that infinitely many trials converge to: the share over all C(n, 3) triples."""
  order = np.argsort(x)
  xs, ys = x[order], y[order]
  n = len(xs)
  failures = 0
  with np.errstate(divide="ignore", invalid="ignore"):
    for j in range(1, n - 1):
      x0, y0 = xs[:j, None], ys[:j, None]
      x2, y2 = xs[None, j + 1:], ys[None, j + 1:]
      chord = ((xs[j] - x0) * y2 + (x2 - xs[j]) * y0) / (x2 - x0)
      failures += np.count_nonzero(~(ys[j] <= chord + 1e-9))
  return failures / math.comb(n, 3)


def random_series(rng, index):
  """One test series; the kind rotates through rough, flat, tiny-step and near-threshold ones."""
  n = int(rng.integers(2, 60))
  kind = index % 5
  if kind == 0:
    y = rng.normal(size=n)
  elif kind == 1:
    y = np.full(n, rng.normal())
  elif kind == 2:
    y = np.cumsum(rng.uniform(-9e-4, 9e-4, size=n))
  elif kind == 3:
    y = np.cumsum(rng.choice([-2e-3, -1e-3, -5e-4, 0.0, 5e-4, 1e-3, 2e-3], size=n))
  else:
    y = np.round(rng.normal(size=n), 1) * rng.choice([1e-3, 1.0])
  return rng.permutation(n).astype(np.float64), y


@pytest.mark.parametrize("name", properties.PROPERTY_NAMES)
def test_fixture_labels_are_bit_identical(d1_samples, name):
  """Every label equals the original's exactly, with ncr drawn from the legacy RNG at its seed."""
  for sample in d1_samples:
    rng = np.random.RandomState(sample["ncr_seed"])
    got = compute_property(name, sample["x"], sample["y"], rng)
    assert type(got) is float
    assert got == sample[name], f"{name} of d1 sample {sample['index']}"


def test_fixture_labels_accept_flat_inputs(d1_samples):
  """Shape [n] inputs give the same labels as shape [n, 1]."""
  sample = d1_samples[7]
  x, y = sample["x"][:, 0], sample["y"][:, 0]
  assert ncr(x, y, np.random.RandomState(sample["ncr_seed"])) == sample["ncr"]
  assert upward(x, y) == sample["upward"]
  assert yavg(y) == sample["yavg"]
  assert oscil(x, y) == sample["oscil"]


def test_ncr_legacy_matches_trial_loop_with_ties():
  """The vectorised chord test equals the scalar loop, including tied x (NaN chords)."""
  data_rng = np.random.default_rng(1)
  for seed in range(6):
    n = int(data_rng.integers(3, 40))
    x = np.round(data_rng.normal(size=n), 1)
    y = np.sin(3 * x) + data_rng.normal(scale=0.1, size=n)
    got = ncr(x, y, np.random.RandomState(seed), num_trials=300)
    assert got == loop_ncr(x, y, np.random.RandomState(seed), num_trials=300)


def test_ncr_generator_agrees_statistically(d1_samples):
  """The Generator path estimates the same quantity as the legacy path.

  For a true non-convex share p, an estimate from N independent trials has binomial standard
  deviation sigma = sqrt(p (1 - p) / N); at N = 1000 that is at most 0.0158, and the difference
  of two independent estimates has sigma * sqrt(2) <= 0.0224. p is computed exactly over all
  C(200, 3) triples, so a 5-sigma bound (false-alarm odds below 1e-6 per comparison) is tight
  where p is near 0 or 1 and demands exact equality where p is 0 or 1.
  """
  for sample in d1_samples:
    p = exact_ncr(sample["x"][:, 0], sample["y"][:, 0])
    sigma = math.sqrt(p * (1 - p) / NUM_TRIALS)
    legacy = sample["ncr"]
    generator = ncr(sample["x"], sample["y"], np.random.default_rng(sample["ncr_seed"]))
    assert abs(legacy - p) <= 5 * sigma + 1e-12
    assert abs(generator - p) <= 5 * sigma + 1e-12
    assert abs(generator - legacy) <= 5 * math.sqrt(2) * sigma + 1e-12


def test_ncr_generator_converges_to_exact_share(d1_samples):
  """With many trials the Generator estimate lands within 5 sigma (< 0.008) of the exact share."""
  trials = 100_000
  for sample in d1_samples:
    if 0.0 < sample["ncr"] < 1.0:
      p = exact_ncr(sample["x"][:, 0], sample["y"][:, 0])
      estimate = ncr(sample["x"], sample["y"], np.random.default_rng(0), num_trials=trials)
      assert abs(estimate - p) <= 5 * math.sqrt(p * (1 - p) / trials)


def test_generator_triples_are_distinct_and_uniform():
  """Each of the C(5, 3) = 10 index sets comes up with probability 1/10."""
  draws = 100_000
  triples = properties._triples_generator(np.random.default_rng(3), 5, draws)
  assert triples.min() >= 0 and triples.max() <= 4
  ordered = np.sort(triples, axis=1)
  assert np.all(ordered[:, 0] < ordered[:, 1]) and np.all(ordered[:, 1] < ordered[:, 2])
  _, counts = np.unique(ordered, axis=0, return_counts=True)
  assert len(counts) == 10
  sigma = math.sqrt(draws * 0.1 * 0.9)
  assert np.all(np.abs(counts - draws / 10) <= 5 * sigma)


def test_ncr_minimum_points_and_tiny_samples():
  """Three points give a well-defined ratio; a convex/concave triple gives 0/1 every trial."""
  x = np.array([0.0, 1.0, 2.0])
  assert ncr(x, np.array([1.0, 0.0, 1.0]), np.random.default_rng(0), num_trials=10) == 0.0
  assert ncr(x, np.array([0.0, 1.0, 0.0]), np.random.RandomState(0), num_trials=10) == 1.0


def test_oscil_vectorised_equals_state_machine():
  """The alternation count equals the original's loop on 500 varied series."""
  rng = np.random.default_rng(2024)
  for index in range(500):
    x, y = random_series(rng, index)
    expected = loop_oscil(y[np.argsort(x)])
    got = oscil(x, y)
    assert type(got) is float
    assert got == expected, f"series {index}: {y[np.argsort(x)]}"


def test_upward_vectorised_equals_loop():
  """The np.diff counts equal the original's loop on the same varied series."""
  rng = np.random.default_rng(7)
  for index in range(500):
    x, y = random_series(rng, index)
    assert upward(x, y) == loop_upward(y[np.argsort(x)])


def test_upward_on_monotone_series():
  """A strictly rising series gives (n-1)/n and a falling one -(n-1)/n, whatever the input order."""
  n = 37
  x = np.random.default_rng(0).permutation(n).astype(np.float64)
  assert upward(x, 2.0 * x) == (n - 1) / n
  assert upward(x[:, None], -2.0 * x[:, None]) == -(n - 1) / n
  assert upward(x, np.full(n, 3.0)) == 0.0


def test_oscil_and_yavg_simple_cases():
  """Hand-checked values: a zigzag, a flat series and a two-point series."""
  x = np.arange(6.0)
  assert oscil(x, np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])) == float(np.log(5))
  assert oscil(x, np.zeros(6)) == 0.0
  assert oscil(x[:2], np.array([0.0, 1.0])) == 0.0
  assert yavg(np.array([2.0, 4.0, 6.0])) == float(np.mean(np.array([0.0, 2.0, 4.0]) / (4.0 + 1e-12)))
  assert yavg(np.full(4, 5.0)) == 0.0


def test_rejects_multi_column_inputs():
  """Inputs with more than one column, or more than two axes, are refused with their shape."""
  x2 = np.zeros((5, 2))
  with pytest.raises(ValueError, match=r"properties are defined for 1-D inputs; got x with shape \(5, 2\)"):
    upward(x2, np.zeros(5))
  with pytest.raises(ValueError, match=r"got y with shape \(5, 3\)"):
    oscil(np.zeros(5), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"got y with shape \(5, 3\)"):
    yavg(np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"got x with shape \(5, 1, 1\)"):
    compute_property("ncr", np.zeros((5, 1, 1)), np.zeros(5), np.random.default_rng(0))


def test_rejects_bad_lengths_and_counts():
  """Mismatched lengths and too few points name the numbers involved."""
  with pytest.raises(ValueError, match="same number of points; got 4 and 5"):
    upward(np.zeros(4), np.zeros(5))
  with pytest.raises(ValueError, match="same number of points; got 4 and 5"):
    compute_property("yavg", np.zeros(4), np.zeros(5), None)
  with pytest.raises(ValueError, match="ncr needs at least 3 points; got 2"):
    ncr(np.zeros(2), np.zeros(2), np.random.default_rng(0))
  with pytest.raises(ValueError, match="upward needs at least 2 points; got 1"):
    upward(np.zeros(1), np.zeros(1))
  with pytest.raises(ValueError, match="oscil needs at least 2 points; got 1"):
    oscil(np.zeros((1, 1)), np.zeros((1, 1)))
  with pytest.raises(ValueError, match="yavg needs at least 1 point; got 0"):
    yavg(np.zeros(0))


def test_rejects_bad_rng_trials_and_names():
  """A wrong rng, a non-positive trial count or an unknown name is refused with the valid choices."""
  x, y = np.arange(4.0), np.arange(4.0)
  with pytest.raises(TypeError, match="numpy.random.Generator or numpy.random.RandomState; got int"):
    ncr(x, y, 0)
  with pytest.raises(ValueError, match="pass rng"):
    compute_property("ncr", x, y, None)
  with pytest.raises(ValueError, match="num_trials must be a positive integer; got 0"):
    ncr(x, y, np.random.default_rng(0), num_trials=0)
  valid = "valid properties are ncr, upward, yavg, oscil"
  with pytest.raises(ValueError, match=f"unknown property 'convexity'; {valid}"):
    compute_property("convexity", x, y, None)
