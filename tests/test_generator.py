"""Generator: distributions against the original's samples, invariants, options."""

import collections
import functools
import gzip
import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from snip_jax.symbolic import (build_vocab, default_env_config, generate_sample, parse_prefix,
                               properties)
from snip_jax.symbolic.config import BASE_OPERATORS
from snip_jax.symbolic.datapoints import random_rotation, sample_inputs
from snip_jax.symbolic.trees import is_integer_text, is_number

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
# Every comparison below is a two-sample test at this significance level. The generator's
# stream is seeded, so each test passes or fails deterministically; a faithful generator
# fails one of them with probability ~0.001 per test for a given seed.
ALPHA = 1e-3
OPERATORS = ("add", "sub", "mul", "abs", "inv", "sqrt", "log", "exp", "sin", "cos", "tan",
             "arctan", "pow2", "pow3")


@functools.lru_cache(maxsize=None)
def _fixture(set_name):
  with gzip.open(FIXTURES / "generator_samples.jsonl.gz", "rt") as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["set"] == set_name]


@functools.lru_cache(maxsize=None)
def _meta():
  return json.loads((FIXTURES / "generator_samples_meta.json").read_text())


@functools.lru_cache(maxsize=None)
def _ours(max_input_dimension, n):
  cfg = default_env_config(max_input_dimension=max_input_dimension)
  rng = np.random.default_rng(2024)
  counter = collections.Counter()
  samples = [generate_sample(rng, cfg, stats=counter) for _ in range(n)]
  return samples, counter


def _features(prefix_tokens):
  counts = collections.Counter(prefix_tokens)
  return {op: counts[op] for op in OPERATORS}


def _chi2_two_sample(a, b, min_expected=5):
  """Chi-square homogeneity test on two samples of integers, merging sparse tail bins."""
  values = sorted(set(a) | set(b))
  ca, cb = collections.Counter(a), collections.Counter(b)
  table, cur = [], [0, 0]
  for v in values:
    cur = [cur[0] + ca[v], cur[1] + cb[v]]
    if min(cur) >= min_expected:
      table.append(cur)
      cur = [0, 0]
  if cur != [0, 0]:
    table[-1] = [table[-1][0] + cur[0], table[-1][1] + cur[1]]
  if len(table) < 2:
    return 1.0
  return stats.chi2_contingency(np.array(table).T)[1]


SETS = [("d1", 1, 4000), ("d10", 10, 2000)]


@pytest.mark.parametrize("set_name, dim, n", SETS)
def test_count_distributions_match_original(set_name, dim, n):
  ours, _ = _ours(dim, n)
  ref = _fixture(set_name)
  pairs = {
      "n_unary_ops": ([s.infos["n_unary_ops"] for s in ours], [int(r["n_unary_ops"]) for r in ref]),
      "n_binary_ops": ([s.infos["n_binary_ops"] for s in ours],
                       [int(r["n_binary_ops"]) for r in ref]),
      "input_dimension": ([s.infos["d_in"] for s in ours], [int(r["input_dimension"]) for r in ref]),
  }
  for name, (a, b) in pairs.items():
    p = _chi2_two_sample(a, b)
    assert p > ALPHA, f"{name}: chi-square p={p:.2g}"


@pytest.mark.parametrize("set_name, dim, n", SETS)
def test_prefix_length_distribution_matches_original(set_name, dim, n):
  ours, _ = _ours(dim, n)
  a = [len(s.tree.prefix_list()) for s in ours]
  b = [len(r["prefix"].split(",")) for r in _fixture(set_name)]
  p = stats.ks_2samp(a, b).pvalue
  assert p > ALPHA, f"prefix length: KS p={p:.2g} (means {np.mean(a):.2f} vs {np.mean(b):.2f})"


@pytest.mark.parametrize("set_name, dim, n", SETS)
def test_operator_frequencies_match_original(set_name, dim, n):
  ours, _ = _ours(dim, n)
  fa = [_features(s.tree.prefix_list()) for s in ours]
  fb = [_features(r["prefix"].split(",")) for r in _fixture(set_name)]
  for op in OPERATORS:
    a, b = [f[op] for f in fa], [f[op] for f in fb]
    if not any(a) and not any(b):
      continue
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    # Bonferroni over the operators tested.
    assert p > ALPHA / len(OPERATORS), f"{op}: mean {np.mean(a):.3f} vs {np.mean(b):.3f}, p={p:.2g}"
  for op in ("div", "arcsin", "arccos"):  # probability 0 in the original's defaults
    assert sum(f.get(op, 0) for f in fa) == 0


@pytest.mark.parametrize("set_name, dim, n", SETS)
def test_accepted_fraction_matches_original(set_name, dim, n):
  _, counter = _ours(dim, n)
  meta = _meta()["sets"][set_name]
  n_ref, trials_ref = meta["n"], meta["trees_generated_incl_rejected"]
  p_ours, p_ref = counter["accepted"] / counter["attempts"], n_ref / trials_ref
  pooled = (counter["accepted"] + n_ref) / (counter["attempts"] + trials_ref)
  se = np.sqrt(pooled * (1 - pooled) * (1 / counter["attempts"] + 1 / trials_ref))
  z = (p_ours - p_ref) / se
  assert abs(z) < stats.norm.isf(ALPHA / 2), f"accepted {p_ours:.3f} vs {p_ref:.3f}, z={z:.2f}"


def test_samples_are_well_formed():
  cfg = default_env_config(max_input_dimension=3)
  vocab = build_vocab(cfg)
  rng = np.random.default_rng(0)
  for _ in range(200):
    s = generate_sample(rng, cfg)
    d = s.infos["d_in"]
    assert s.x.shape == (200, d) and s.y.shape == (200, 1)
    assert 1 <= d <= 3 and s.tree.variables() == [f"x_{i}" for i in range(d)]
    np.testing.assert_allclose(s.x.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(s.x.std(0), 1, atol=1e-9)
    assert np.all(np.isfinite(s.y)) and np.all(np.abs(s.y) < 1e103)
    np.testing.assert_array_equal(parse_prefix(s.prefix).evaluate(s.x), s.y)
    assert all(t in vocab.equation_word2id for t in s.tree_encoded)
    assert "CONSTANT" in s.skeleton_tree_encoded
    assert not any(t in ("+", "-") for t in s.skeleton_tree_encoded)
    assert s.infos["n_input_points"] == 200 and s.infos["d_out"] == 1
    assert 1 <= s.infos["n_centroids"] <= 9
    assert s.infos["input_distribution_type"] in (0, 1)


def test_same_seed_same_samples():
  cfg = default_env_config(max_input_dimension=2)
  a = [generate_sample(np.random.default_rng(7), cfg) for _ in range(3)]
  b = [generate_sample(np.random.default_rng(7), cfg) for _ in range(3)]
  for sa, sb in zip(a, b):
    assert sa.prefix == sb.prefix
    np.testing.assert_array_equal(sa.x, sb.x)
    np.testing.assert_array_equal(sa.y, sb.y)


def test_rotations_are_special_orthogonal_and_haar():
  rng = np.random.default_rng(0)
  rots = np.stack([random_rotation(rng, 3) for _ in range(4000)])
  np.testing.assert_allclose(rots @ rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rots.shape),
                             atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-12)
  # Haar on SO(3): every entry has mean 0 and variance 1/3.
  np.testing.assert_allclose(rots.mean(0), 0, atol=0.05)
  np.testing.assert_allclose(rots.var(0), 1 / 3, atol=0.03)


def test_inputs_follow_component_order_and_scale():
  rng = np.random.default_rng(1)
  x = sample_inputs(rng, 200, 2, "uniform", 3, scale=4.0)
  np.testing.assert_allclose(x.std(0), 4.0)
  with pytest.raises(ValueError, match="unknown input distribution"):
    sample_inputs(rng, 10, 1, "laplace", 2)


def test_normalize_y():
  cfg = default_env_config(normalize_y=True)
  rng = np.random.default_rng(3)
  for _ in range(20):
    y = generate_sample(rng, cfg).y
    assert y.min() == 0.0 and 0.999999 < y.max() <= 1.0


def test_evaluation_mode_has_prediction_sets():
  cfg = default_env_config(n_prediction_points=50, prediction_sigmas="1,4")
  s = generate_sample(np.random.default_rng(0), cfg, train=False)
  assert set(s.predict) == {"predict_1.0", "predict_4.0"}
  x4, y4 = s.predict["predict_4.0"]
  assert x4.shape == (50, 1) and y4.shape == (50, 1)
  np.testing.assert_allclose(x4.std(0), 4.0)


def test_property_labels_are_attached():
  cfg = default_env_config(is_proppred=True, property_type="yavg")
  s = generate_sample(np.random.default_rng(0), cfg)
  assert s.target_property == properties.yavg(s.y)


def _is_float_constant(token):
  """A prefactor drawn by generate_float (integers and named constants are not)."""
  return is_number(token) and not is_integer_text(token)


def test_without_reduce_num_constants_every_variable_and_unary_is_linearly_transformed():
  """The original's add_linear_transformations: each x_i and unary f becomes a + b * (node)."""
  cfg = default_env_config(max_input_dimension=2, reduce_num_constants=False)
  unaries = {o for o, arity in BASE_OPERATORS.items() if arity == 1}
  rng = np.random.default_rng(5)
  n_targets = collections.Counter()
  for _ in range(40):
    tokens = generate_sample(rng, cfg).tree.prefix_list()
    targets = [i for i, t in enumerate(tokens) if t.startswith("x_") or t in unaries]
    for i in targets:
      head = tokens[max(i - 4, 0):i]
      assert len(head) == 4 and head[0] == "add" and head[2] == "mul", tokens
      assert _is_float_constant(head[1]) and _is_float_constant(head[3]), tokens
    # Those two floats per node are all the constants: no prefactors, no root affine.
    assert sum(map(_is_float_constant, tokens)) == 2 * len(targets), tokens
    n_targets.update("unary" if tokens[i] in unaries else "variable" for i in targets)
  assert n_targets["unary"] >= 20 and n_targets["variable"] >= 40, n_targets


def test_without_controller_the_input_dimension_is_redrawn_at_every_retry():
  """use_controller keeps one drawn d_in (and unary count) for all retries; without it, not."""
  # Kept: accepted samples have uniform d_in. Redrawn: dimensions rejected more often (the
  # larger ones) become rarer.
  dims, unaries = {}, {}
  for controller in (True, False):
    cfg = default_env_config(max_input_dimension=3, use_controller=controller)
    rng = np.random.default_rng(0)
    samples = [generate_sample(rng, cfg) for _ in range(600)]
    dims[controller] = np.bincount([s.infos["d_in"] for s in samples], minlength=4)[1:]
    unaries[controller] = [s.infos["n_unary_ops"] for s in samples]
  p_uniform = {c: stats.chisquare(d).pvalue for c, d in dims.items()}
  assert p_uniform[True] > ALPHA, f"with the controller d_in counts {dims[True]} are not uniform"
  assert p_uniform[False] < ALPHA, f"without the controller d_in counts {dims[False]} are uniform"
  assert dims[False][0] > dims[False][2]
  # The kept unary count survives retries too: more unaries with the controller.
  assert _chi2_two_sample(unaries[True], unaries[False]) < ALPHA
  assert np.mean(unaries[True]) > np.mean(unaries[False])


def test_required_operators_and_extras():
  cfg = default_env_config(required_operators="sin", extra_unary_operators="sinh", min_unary_ops=1,
                           extra_binary_operators="max", prob_const=0.5,
                           extra_constants="0.5,1.5", max_input_dimension=2)
  vocab = build_vocab(cfg)
  rng = np.random.default_rng(11)
  seen = collections.Counter()
  for _ in range(60):
    s = generate_sample(rng, cfg)
    assert "sin" in s.tree.infix()
    seen.update(s.tree.prefix_list())
    assert all(t in vocab.equation_word2id for t in s.tree_encoded)
  assert seen["sinh"] > 0 and seen["max"] > 0
  assert vocab.equation_word2id["sinh"] == vocab.equation_word2id["OOD_unary_op"]


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match="unknown unary operator 'sinc'"):
    default_env_config(extra_unary_operators="sinc")
  with pytest.raises(ValueError, match="max_input_dimension must be >= 1"):
    default_env_config(max_input_dimension=0)
  with pytest.raises(ValueError, match="unknown environment option"):
    default_env_config(max_input_dim=3)
  with pytest.raises(ValueError, match="1-D functions"):
    default_env_config(is_proppred=True, max_input_dimension=2)


def test_unsatisfiable_options_fail_loudly(monkeypatch):
  from snip_jax.symbolic import generator
  monkeypatch.setattr(generator, "MAX_ATTEMPTS_PER_SAMPLE", 50)
  cfg = default_env_config(required_operators="sin", max_unary_ops=0)
  with pytest.raises(RuntimeError, match="no sample accepted in 50 attempts"):
    generate_sample(np.random.default_rng(0), cfg)
