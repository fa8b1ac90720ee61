"""SNIP model: parameter layout against the original's full-size state_dicts, and outputs
against the original's on the tiny checkpoint (tiny.pth / tiny_io.npz)."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snip_jax.convert.pth import load_pth
from snip_jax.model import (MODULE_NAMES, SNIP, ModelConfig, clip_logits, clip_loss,
                            decoder_loss, expected_shapes, init_params, params_from_checkpoint,
                            params_to_state_dicts, state_dicts_to_params)
from snip_jax.symbolic import default_env_config

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
TOL = 1e-5  # float32 agreement with the original, absolute or relative
TINY_ENV = default_env_config(max_input_dimension=2, float_precision=3, mantissa_len=2)
TINY_CFG = ModelConfig.from_env(
    TINY_ENV, enc_emb_dim=16, dec_emb_dim=16, n_enc_layers=2, n_dec_layers=2, n_enc_heads=4,
    n_dec_heads=4, emb_emb_dim=8, latent_dim=8)
MANIFEST = json.loads((FIXTURES / "state_dict_manifest.json").read_text())


def _assert_close(name, actual, expected, tol=TOL):
  """Every element within `tol` absolutely or relatively; returns the max abs error."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
  err = np.abs(actual - expected)
  bad = err > tol * np.maximum(1.0, np.abs(expected))
  assert not bad.any(), f"{name}: {bad.sum()} elements off, max abs error {err.max():.3g}"
  return float(err.max())


def _seq_major(x):
  """Our [B, slen, ...] -> the original's [slen, B, ...]."""
  return np.swapaxes(np.asarray(x), 0, 1)


# ---- full-size layout -------------------------------------------------------------------

def _manifest_config(overrides):
  """The config the manifest's CLI overrides give (other options: parser defaults)."""
  params = {overrides[i].lstrip("-"): int(overrides[i + 1]) for i in range(0, len(overrides), 2)}
  return ModelConfig.from_params(params)


def _random_state_dicts(shapes, rng):
  """Distinct random arrays with the given shapes, carved from one buffer (cheap)."""
  sizes = [int(np.prod(s)) for m in shapes.values() for s in m.values()]
  buffer = rng.random(sum(sizes), dtype=np.float32)
  out, offset = {}, 0
  for module, keys in shapes.items():
    out[module] = {}
    for key, shape in keys.items():
      n = int(np.prod(shape))
      out[module][key] = buffer[offset:offset + n].reshape(shape)
      offset += n
  if "proj.weight" in out["decoder"]:  # tied to the embeddings, as torch stores it
    out["decoder"]["proj.weight"] = out["decoder"]["embeddings.weight"]
  return out


@pytest.mark.parametrize("name", sorted(MANIFEST["sets"]))
def test_full_size_state_dicts_convert_one_to_one(name):
  spec = MANIFEST["sets"][name]
  cfg = _manifest_config(spec["cli_overrides"])
  assert (cfg.n_float_words, cfg.n_words) == (spec["n_float_words"], spec["n_equation_words"])
  manifest_shapes = {m: {k: tuple(v["shape"]) for k, v in spec["modules"][m]["state_dict"].items()}
                     for m in MODULE_NAMES}
  assert set(spec["modules"]) == set(MODULE_NAMES)
  # Same keys, same order, same shapes as the original's state_dicts.
  assert {m: list(d.items()) for m, d in expected_shapes(cfg).items()} == \
      {m: list(d.items()) for m, d in manifest_shapes.items()}

  state_dicts = _random_state_dicts(manifest_shapes, np.random.default_rng(0))
  params = state_dicts_to_params(state_dicts, cfg)

  abstract = jax.eval_shape(lambda rng: init_params(SNIP(cfg), rng), jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == \
      jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), abstract)
  assert sum(a.size for a in jax.tree.leaves(params)) == spec["total_parameters"]

  back = params_to_state_dicts(params, cfg)
  for module in MODULE_NAMES:
    assert list(back[module]) == list(manifest_shapes[module])
    for key, array in state_dicts[module].items():
      np.testing.assert_array_equal(back[module][key], array, err_msg=f"{module}.{key}")
  assert back["decoder"]["proj.weight"] is back["decoder"]["embeddings.weight"]


def test_conversion_reports_every_bad_key():
  cfg = TINY_CFG
  state_dicts = _random_state_dicts(expected_shapes(cfg), np.random.default_rng(1))
  encoder_f = state_dicts["encoder_f"]
  del encoder_f["attentions.1.q_lin.bias"]
  encoder_f["extra.weight"] = np.zeros(3, np.float32)
  encoder_f["layer_norm1.0.weight"] = np.zeros(17, np.float32)
  del state_dicts["classifier"]
  with pytest.raises(ValueError) as err:
    state_dicts_to_params(state_dicts, cfg)
  message = str(err.value)
  for expected in ("missing key 'attentions.1.q_lin.bias' (expected shape (16,))",
                   "unexpected key 'extra.weight' with shape (3,)",
                   "key 'layer_norm1.0.weight' has shape (17,), expected (16,)",
                   "missing module 'classifier'", "4 problem(s)"):
    assert expected in message


def test_conversion_strips_data_parallel_prefix_and_checks_tied_weights():
  cfg = TINY_CFG
  state_dicts = _random_state_dicts(expected_shapes(cfg), np.random.default_rng(2))
  wrapped = {m: {f"module.{k}": v for k, v in d.items()} for m, d in state_dicts.items()}
  params = state_dicts_to_params(wrapped, cfg)
  np.testing.assert_array_equal(params["encoder_f"]["attentions_0"]["q_lin"]["kernel"],
                                state_dicts["encoder_f"]["attentions.0.q_lin.weight"].T)
  wrapped["decoder"]["module.proj.weight"] = np.zeros_like(state_dicts["decoder"]["proj.weight"])
  with pytest.raises(ValueError, match="'proj.weight' must equal 'embeddings.weight'"):
    state_dicts_to_params(wrapped, cfg)
  # Untied output projection: its own kernel, loaded separately.
  untied = cfg.replace(share_inout_emb=False)
  state_dicts["decoder"]["proj.weight"] = np.ones_like(state_dicts["decoder"]["proj.weight"])
  params = state_dicts_to_params(state_dicts, untied)
  np.testing.assert_array_equal(params["decoder"]["proj"]["kernel"],
                                state_dicts["decoder"]["proj.weight"].T)
  back = params_to_state_dicts(params, untied)["decoder"]
  np.testing.assert_array_equal(back["proj.weight"], state_dicts["decoder"]["proj.weight"])
  np.testing.assert_array_equal(back["embeddings.weight"],
                                state_dicts["decoder"]["embeddings.weight"])


def test_params_to_state_dicts_reports_bad_params():
  state_dicts = _random_state_dicts(expected_shapes(TINY_CFG), np.random.default_rng(3))
  params = state_dicts_to_params(state_dicts, TINY_CFG)
  params["embedder"]["fc"]["kernel"] = np.zeros((3, 3), np.float32)
  params["regressor"]["fc3"] = {"bias": np.zeros(1, np.float32)}
  del params["decoder"]["proj"]
  with pytest.raises(ValueError) as err:
    params_to_state_dicts({"params": params}, TINY_CFG)
  message = str(err.value)
  assert "param fc/kernel gives 'fc.weight' shape (3, 3), expected (16, 96)" in message
  assert "regressor: unexpected param fc3/bias" in message
  assert "decoder: missing param proj/bias" in message


# ---- config ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint():
  return load_pth(FIXTURES / "tiny.pth")


def test_config_from_checkpoint_params(tiny_checkpoint):
  assert ModelConfig.from_params(tiny_checkpoint["params"]) == TINY_CFG
  assert (TINY_CFG.n_words, TINY_CFG.eq_pad_id, TINY_CFG.eq_eos_id) == (384, 74, 66)
  default = ModelConfig()
  assert ModelConfig.from_params({"latent_dim": 512}) == default
  assert ModelConfig.from_params({}).latent_dim == 32  # the parser default


def test_config_rejects_what_it_cannot_load():
  with pytest.raises(ValueError, match="n_words=999"):
    ModelConfig.from_params({"n_words": 999})
  with pytest.raises(ValueError, match="'sinusoidal' is not supported"):
    ModelConfig.from_params({"enc_positional_embeddings": "sinusoidal"})
  with pytest.raises(ValueError, match="norm_attention"):
    ModelConfig.from_params({"norm_attention": True})
  with pytest.raises(ValueError, match="multiple of n_enc_heads"):
    ModelConfig(enc_emb_dim=30, dec_emb_dim=30)
  with pytest.raises(ValueError, match="dtype"):
    ModelConfig(dtype=jnp.float16)


# ---- numerics against the original ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
  """(model, variables, io arrays, batch-major inputs) of the tiny checkpoint."""
  cfg, params = params_from_checkpoint(tiny_checkpoint)
  io = dict(np.load(FIXTURES / "tiny_io.npz"))
  inputs = (io["embedder_tokens"].transpose(1, 0, 2), io["len1"], io["x2"].T, io["len2"])
  return SNIP(cfg), {"params": params}, io, inputs


@pytest.fixture(scope="module")
def tiny_forward(tiny):
  """Latents and intermediates of the batched forward pass."""
  model, variables, _, inputs = tiny
  (z_y, z_f), state = model.apply(variables, *inputs, mutable=["intermediates"])
  return z_y, z_f, state["intermediates"]


def test_embedder_matches_original(tiny):
  model, variables, io, (points, *_) = tiny
  out = model.apply(variables, points, method=SNIP.embed_points)
  _assert_close("embedder_out", _seq_major(out), io["embedder_out"])


@pytest.mark.parametrize("encoder", ["encoder_y", "encoder_f"])
def test_encoder_layers_pooling_and_latents_match_original(tiny, tiny_forward, encoder):
  _, _, io, _ = tiny
  z_y, z_f, intermediates = tiny_forward
  sown = intermediates[encoder]
  _assert_close(f"{encoder}_layer_outputs", np.stack(sown["layer_outputs"]),
                io[f"{encoder}_layer_outputs"])
  _assert_close(f"{encoder}_glob_attn", sown["glob_attn"][0], io[f"{encoder}_glob_attn"])
  _assert_close(f"{encoder}_pooled", sown["pooled"][0], io[f"{encoder}_pooled"])
  _assert_close(f"{encoder}_latent", z_y if encoder == "encoder_y" else z_f,
                io[f"{encoder}_latent"])


def test_clip_logits_and_loss_match_original(tiny, tiny_forward):
  model, _, io, _ = tiny
  z_y, z_f, _ = tiny_forward
  temperature = float(io["clip_temperature"])
  assert temperature == model.cfg.clip_temperature
  per_f, per_y = clip_logits(z_f, z_y, temperature)
  _assert_close("clip_logits_per_f", per_f, io["clip_logits_per_f"])
  _assert_close("clip_logits_per_y", per_y, io["clip_logits_per_y"])
  _assert_close("clip_loss", clip_loss(z_f, z_y, temperature), io["clip_loss"])


def test_heads_match_original(tiny, tiny_forward):
  model, variables, io, _ = tiny
  z_y, z_f, _ = tiny_forward
  _assert_close("regressor_on_f", model.apply(variables, z_f, method=SNIP.regress),
                io["regressor_on_f"])
  _assert_close("regressor_on_y", model.apply(variables, z_y, method=SNIP.regress),
                io["regressor_on_y"])
  _assert_close("classifier_on_f", model.apply(variables, z_f, method=SNIP.classify),
                io["classifier_on_f"])


def test_decoder_matches_original(tiny, tiny_forward):
  model, variables, io, (_, _, equations, lengths) = tiny
  _, z_f, _ = tiny_forward
  logits, state = model.apply(variables, z_f, equations, lengths, method=SNIP.decode,
                              mutable=["intermediates"])
  _assert_close("decoder_hidden", _seq_major(state["intermediates"]["decoder"]["hidden"][0]),
                io["decoder_hidden"])
  # The original's targets: position-major selection of x2[1:] where p < len2 - 1.
  pred_mask = io["decoder_pred_mask"][:-1]
  targets = io["x2"][1:][pred_mask]
  np.testing.assert_array_equal(targets, io["decoder_targets"])
  selected = _seq_major(logits)[:-1][pred_mask]
  _assert_close("decoder_target_logits", selected[np.arange(len(targets)), targets],
                io["decoder_target_logits"])
  _assert_close("decoder_logsumexp", jax.nn.logsumexp(selected, axis=-1),
                io["decoder_logsumexp"])
  np.testing.assert_array_equal(selected.argmax(-1), io["decoder_argmax"])
  _assert_close("decoder_loss", decoder_loss(logits, equations, lengths), io["decoder_loss"])
  _assert_close("decoder_logits_pos0", logits[:, 0], io["decoder_logits_pos0"])


def test_batch_size_one_latents(tiny, tiny_forward):
  """The original pools over slen = the batch's most points; ours over the array's slen.

  Run alone, a sample's slen in the original is its own point count, so slicing the points
  to n gives the original's batch-size-1 latent. Padded to 200 (what `collate` makes), the
  latent equals the original's batched one (its batch also had slen 200) and differs from
  the batch-size-1 latent for every sample with fewer than 200 points: the padded positions
  take pooling weight. pool_over_padding=False gives the batch-size-1 latents in a padded
  batch. encoder_f always sees 200 positions, so its latents do not depend on the batch.
  """
  model, variables, io, (points, n_points, equations, lengths) = tiny
  encode_points = jax.jit(functools.partial(model.apply, method=SNIP.encode_points))
  encode_equations = jax.jit(functools.partial(model.apply, method=SNIP.encode_equations))
  for i in (4, 6, 1):  # 1, 17 and 173 points: one compilation per length, so only three
    n = n_points[i]
    alone = encode_points(variables, points[i:i + 1, :n], n_points[i:i + 1])
    _assert_close(f"encoder_y_latent_bs1[{i}]", alone[0], io["encoder_y_latent_bs1"][i])
  for i, n in enumerate(n_points):
    padded = encode_points(variables, points[i:i + 1], n_points[i:i + 1])
    _assert_close(f"encoder_y_latent[{i}] (alone, slen 200)", padded[0],
                  io["encoder_y_latent"][i])
    differs = np.abs(io["encoder_y_latent_bs1"][i] - io["encoder_y_latent"][i]).max() > 1e-3
    assert differs == (n < 200)
    z_f = encode_equations(variables, equations[i:i + 1], lengths[i:i + 1])
    _assert_close(f"encoder_f_latent_bs1[{i}]", z_f[0], io["encoder_f_latent_bs1"][i])
  masked = SNIP(model.cfg.replace(pool_over_padding=False))
  z_y = masked.apply(variables, points, n_points, method=SNIP.encode_points)
  _assert_close("encoder_y_latent_bs1 (pool_over_padding=False)", z_y,
                io["encoder_y_latent_bs1"])


# ---- behaviour ---------------------------------------------------------------------------

def test_bfloat16_is_close_to_float32(tiny, tiny_forward):
  model, variables, _, inputs = tiny
  z_y, z_f, _ = tiny_forward
  logits = model.apply(variables, z_f, *inputs[2:], method=SNIP.decode)
  model16 = SNIP(model.cfg.replace(dtype=jnp.bfloat16))

  @jax.jit
  def run16(variables, points, n_points, equations, lengths):
    z_y, z_f = model16.apply(variables, points, n_points, equations, lengths)
    return z_y, z_f, model16.apply(variables, z_f, equations, lengths, method=SNIP.decode)

  out16 = run16(variables, *inputs)
  for name, a, b in zip(("z_y", "z_f", "logits"), (z_y, z_f, logits), out16):
    assert b.dtype == jnp.float32, name
    err = np.abs(np.asarray(a) - np.asarray(b)).max()
    assert err < 0.05 * np.abs(np.asarray(a)).max(), (name, err)
  assert abs(clip_loss(z_f, z_y) - clip_loss(*out16[1::-1])) < 0.01


def test_fresh_init_follows_the_original(tiny, tiny_forward):
  model, _, _, inputs = tiny
  cfg = model.cfg
  # The tiny batch's shapes reuse the operations compiled for it by the forward tests.
  params = model.init(jax.random.key(3), *inputs)["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  assert not params["embedder"]["embeddings"]["embedding"][cfg.float_pad_id].any()
  for module in ("encoder_f", "decoder"):
    table = params[module]["embeddings"]["embedding"]
    assert not table[cfg.eq_pad_id].any() and table[cfg.eq_pad_id - 1].any()
  kernel = params["encoder_f"]["ffns_0"]["lin2"]["kernel"]  # fan_in 64: U(+-1/8)
  assert np.abs(kernel).max() <= 1 / 8 and np.abs(kernel).max() > 0.1
  position = params["encoder_y"]["position_embeddings"]["embedding"]
  assert position.shape == (4096, 16) and abs(float(position.std()) - 0.25) < 0.01


def test_padding_never_reaches_the_latent(tiny):
  model, variables, _, (points, n_points, equations, lengths) = tiny
  z_y, z_f = model.apply(variables, points, n_points, equations, lengths)
  noisy_points = np.where(np.arange(200)[None, :, None] < n_points[:, None, None], points, 3)
  noisy_equations = np.where(np.arange(200)[None, :] < lengths[:, None], equations, 50)
  z_y2, z_f2 = model.apply(variables, noisy_points, n_points, noisy_equations, lengths)
  np.testing.assert_array_equal(z_y, z_y2)
  np.testing.assert_array_equal(z_f, z_f2)


def test_dropout_and_normalized_clip(tiny, tiny_forward):
  model, variables, _, (_, _, equations, lengths) = tiny
  z_y, z_f, _ = tiny_forward
  dropped = SNIP(model.cfg.replace(dropout=0.3, attention_dropout=0.3))
  encode = functools.partial(dropped.apply, variables, equations, lengths,
                             method=SNIP.encode_equations)
  _assert_close("deterministic", encode(), z_f, tol=1e-6)
  z_a, z_b = (encode(deterministic=False, rngs={"dropout": jax.random.key(seed)})
              for seed in (0, 1))
  assert np.abs(z_a - z_b).max() > 1e-3
  per_f, per_y = clip_logits(z_f, z_y, temperature=0.1, normalize=True)
  assert np.abs(per_f).max() <= 10 + 1e-4
  np.testing.assert_allclose(per_y, per_f.T)


@pytest.mark.parametrize("pool_over_padding", [True, False])
def test_trimmed_equation_padding_gives_the_same_latents(pool_over_padding):
  cfg = TINY_CFG.replace(pool_over_padding=pool_over_padding)
  model = SNIP(cfg)
  params = init_params(model, jax.random.key(3))
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 40, size=6).astype(np.int32)
  equations = np.full((6, 200), cfg.float_pad_id, np.int32)
  for i, n in enumerate(lengths):
    equations[i, :n] = rng.integers(cfg.eq_eos_id + 1, cfg.n_words, size=n)
  encode = jax.jit(lambda p, e, l: model.apply({"params": p}, e, l,
                                               method=SNIP.encode_equations))
  full = encode(params, equations, lengths)
  for width in (40, 64, 128):
    _assert_close(f"width {width}", encode(params, equations[:, :width], lengths), full, 1e-6)


def test_softmax_attention_gradients_equal_autodiff_of_the_plain_formula():
  from snip_jax.model.modules import softmax_attention  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(3, 2, 7, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(np.arange(7)[None, None, None, :] < np.array([7, 4, 1])[:, None, None, None])
  weights_out = jnp.asarray(rng.normal(size=(3, 2, 7, 4)), jnp.float32)

  def plain(q, k, v):
    scores = jnp.where(mask, jnp.einsum("bhqd,bhkd->bhqk", q, k), -jnp.inf)
    return jnp.sum(jax.nn.softmax(scores, axis=-1) @ v * weights_out)

  def custom(q, k, v):
    return jnp.sum(softmax_attention(q, k, v, jnp.where(mask, 0.0, -jnp.inf)) * weights_out)

  np.testing.assert_allclose(custom(q, k, v), plain(q, k, v), rtol=1e-6)
  for ours, reference in zip(jax.grad(custom, (0, 1, 2))(q, k, v),
                             jax.grad(plain, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
