"""Batching: identical token layouts to the original's embedder and equation batches."""

import json
import pathlib
import types

import numpy as np
import pytest

from snip_jax.data.batching import collate
from snip_jax.symbolic import build_vocab, decode_floats, default_env_config, generate_sample
from snip_jax.symbolic.tokenizers import decode_float_ids

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
TINY_ENV = default_env_config(max_input_dimension=2, float_precision=3, mantissa_len=2)


def _tiny_samples():
  io = np.load(FIXTURES / "tiny_io.npz")
  meta = json.loads((FIXTURES / "tiny_io.json").read_text())
  samples = []
  for i, (n, d) in enumerate(zip(io["n_points"], io["d_in"])):
    samples.append(types.SimpleNamespace(
        x=io["x_to_fit"][i, :n, :d], y=io["y_to_fit"][i, :n], tree_encoded=meta["tree_encoded"][i],
        skeleton_tree_encoded=[]))
  return io, samples


def test_points_and_equations_equal_the_originals_batches():
  io, samples = _tiny_samples()
  batch = collate(samples, TINY_ENV)
  # The original is sequence-major (slen, bs, ...) with slen = longest sample (here 200).
  np.testing.assert_array_equal(batch["points"], io["embedder_tokens"].transpose(1, 0, 2))
  np.testing.assert_array_equal(batch["n_points"], io["len1"])
  np.testing.assert_array_equal(batch["equations"], io["x2"].T)
  np.testing.assert_array_equal(batch["equation_lengths"], io["len2"])
  np.testing.assert_array_equal(batch["d_in"], io["d_in"])


def test_shapes_dtypes_and_masks():
  io, samples = _tiny_samples()
  batch = collate(samples, TINY_ENV)
  assert batch["points"].shape == (8, 200, (2 + 1) * 4) and batch["points"].dtype == np.int32
  assert batch["equations"].shape == (8, 200) and batch["equations"].dtype == np.int32
  assert batch["x_values"].shape == (8, 200, 2) and batch["y_values"].shape == (8, 200, 1)
  np.testing.assert_array_equal(batch["point_mask"].sum(1), io["n_points"])
  for i, n in enumerate(io["n_points"]):
    d = io["d_in"][i]
    np.testing.assert_array_equal(batch["x_values"][i, :n, :d], io["x_to_fit"][i, :n, :d])
    np.testing.assert_array_equal(batch["y_values"][i, :n], io["y_to_fit"][i, :n])
    assert not batch["x_values"][i, n:].any() and not batch["x_values"][i, :, d:].any()


def test_tokens_decode_to_rounded_values():
  cfg = default_env_config(max_input_dimension=3)
  rng = np.random.default_rng(0)
  samples = [generate_sample(rng, cfg) for _ in range(4)]
  batch = collate(samples, cfg)
  vocab = build_vocab(cfg)
  for i, s in enumerate(samples):
    d = s.x.shape[1]
    x_ids = batch["points"][i, :, :d * 3].reshape(200, d, 3)
    decoded = decode_float_ids(x_ids, cfg)
    np.testing.assert_allclose(decoded, s.x, rtol=1e-3, atol=1e-100)
    assert (batch["points"][i, :, d * 3:9] == vocab.float_input_pad_id).all()
    y_ids = batch["points"][i, :, 9:12]
    assert decode_floats([vocab.float_words[t] for t in y_ids[0]], cfg)[0] == pytest.approx(
        s.y[0, 0], rel=1e-3)
    eq = batch["equations"][i]
    n = len(s.tree_encoded)
    assert eq[0] == eq[n + 1] == vocab.eos_id and (eq[n + 2:] == vocab.float_pad_id).all()


def test_property_targets_and_skeletons():
  cfg = default_env_config(is_proppred=True, property_type="upward")
  rng = np.random.default_rng(1)
  samples = [generate_sample(rng, cfg) for _ in range(3)]
  batch = collate(samples, cfg, use_skeleton=True)
  np.testing.assert_array_equal(batch["target_property"],
                                np.float32([s.target_property for s in samples]))
  np.testing.assert_array_equal(batch["equation_lengths"],
                                [len(s.skeleton_tree_encoded) + 2 for s in samples])


def test_bad_batches_name_the_problem():
  io, samples = _tiny_samples()
  too_wide = types.SimpleNamespace(x=np.zeros((3, 3)), y=np.zeros((3, 1)), tree_encoded=["x_0"])
  with pytest.raises(ValueError, match="sample 0 has 3 input / 1 output columns"):
    collate([too_wide], TINY_ENV)
  too_long = types.SimpleNamespace(x=np.zeros((201, 1)), y=np.zeros((201, 1)), tree_encoded=["x_0"])
  with pytest.raises(ValueError, match="201 points; max_len is 200"):
    collate([too_long], TINY_ENV)
  long_eq = types.SimpleNamespace(x=np.zeros((2, 1)), y=np.zeros((2, 1)), tree_encoded=["x_0"] * 199)
  with pytest.raises(ValueError, match="at most 198 fit"):
    collate([long_eq], TINY_ENV)
  nan = types.SimpleNamespace(x=np.full((2, 1), np.nan), y=np.zeros((2, 1)), tree_encoded=["x_0"])
  with pytest.raises(ValueError, match="nan"):
    collate([nan], TINY_ENV)
  with pytest.raises(ValueError, match="empty"):
    collate([], TINY_ENV)
