"""SNIP's SR model (embedder, encoder_y, mapper, E2E decoder): parameter layout against the
original's full-size state_dicts, import of its checkpoint format, and outputs against the
original's on the tiny SR checkpoint (tiny_sr.pth / tiny_sr_io.npz)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snip_jax import load_pretrained
from snip_jax.convert import converter
from snip_jax.convert.pth import load_pth
from snip_jax.model import (SNIPSR, SR_MODULE_NAMES, ModelConfig, decoder_loss, expected_shapes,
                            init_params, params_from_checkpoint, params_to_state_dicts,
                            state_dicts_to_params)
from tests.test_model import _assert_close, _random_state_dicts, _seq_major

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SR_FIXTURES = FIXTURES / "snip_sr_original"
SNIP_PTH = FIXTURES / "snip_original" / "tiny.pth"
SR_PTH = SR_FIXTURES / "tiny_sr.pth"
MANIFEST = json.loads((SR_FIXTURES / "sr_state_dict_manifest.json").read_text())
_MANIFEST_MODEL_OPTIONS = ("max_input_dimension", "latent_dim", "n_dec_layers")


# ---- full-size layout -------------------------------------------------------------------

def _manifest_config():
  """The config of the manifest's CLI (run_train.sh's model; other options: parser defaults)."""
  cli = dict(zip(MANIFEST["cli"][::2], MANIFEST["cli"][1::2]))
  return ModelConfig.from_params({k: int(cli[f"--{k}"]) for k in _MANIFEST_MODEL_OPTIONS})


def test_full_size_sr_state_dicts_convert_one_to_one():
  cfg = _manifest_config()
  assert (cfg.n_float_words, cfg.n_words) == (MANIFEST["n_float_words"], MANIFEST["n_words"])
  assert list(MANIFEST["modules"]) == list(SR_MODULE_NAMES)
  manifest_shapes = {m: {k: tuple(v["shape"]) for k, v in MANIFEST["modules"][m].items()}
                     for m in SR_MODULE_NAMES}
  assert {m: list(d.items()) for m, d in expected_shapes(cfg, "sr").items()} == \
      {m: list(d.items()) for m, d in manifest_shapes.items()}

  state_dicts = _random_state_dicts(manifest_shapes, np.random.default_rng(0))
  params = state_dicts_to_params(state_dicts, cfg)

  abstract = jax.eval_shape(lambda rng: init_params(SNIPSR(cfg), rng), jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == \
      jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), abstract)
  counts = {m: sum(a.size for a in jax.tree.leaves(params[m])) for m in SR_MODULE_NAMES}
  assert counts == {m: MANIFEST["param_counts"][m] for m in SR_MODULE_NAMES}

  back = params_to_state_dicts(params, cfg)
  for module in SR_MODULE_NAMES:
    assert list(back[module]) == list(manifest_shapes[module])
    for key, array in state_dicts[module].items():
      np.testing.assert_array_equal(back[module][key], array, err_msg=f"{module}.{key}")
  assert back["decoder"]["proj.weight"] is back["decoder"]["embeddings.weight"]


def test_sr_layout_reports_the_missing_mapper():
  cfg = _manifest_config().replace(n_dec_layers=1, n_enc_layers=1)
  shapes = expected_shapes(cfg, "sr")
  state_dicts = {m: {k: np.zeros(s, np.float32) for k, s in shapes[m].items()}
                 for m in SR_MODULE_NAMES if m != "mapper"}
  with pytest.raises(ValueError, match="missing module 'mapper'"):
    state_dicts_to_params(state_dicts, cfg, kind="sr")


# ---- the tiny SR checkpoint ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sr():
  """(model, variables, io arrays) of the tiny SR checkpoint, read through read_pth."""
  cfg, _, params, source = converter.read_pth(SR_PTH, kind="sr")
  assert source["n_total_iter"] == 800
  io = dict(np.load(SR_FIXTURES / "tiny_sr_io.npz"))
  return SNIPSR(cfg), {"params": params}, io


def test_tiny_sr_config_comes_from_the_checkpoint(tiny_sr):
  model, variables, _ = tiny_sr
  cfg = model.cfg
  assert (cfg.dec_emb_dim, cfg.n_dec_layers, cfg.n_dec_heads, cfg.latent_dim) == (32, 2, 4, 16)
  assert (cfg.max_src_len, cfg.n_words, cfg.eq_eos_id, cfg.eq_pad_id) == (200, 10284, 66, 74)
  counts = {m: sum(a.size for a in jax.tree.leaves(variables["params"][m]))
            for m in SR_MODULE_NAMES}
  assert counts == {"embedder": 89336, "encoder_y": 157649, "decoder": 504492, "mapper": 109856}


def test_tiny_sr_state_dicts_round_trip(tiny_sr):
  model, variables, _ = tiny_sr
  original = load_pth(SR_PTH)
  back = params_to_state_dicts(variables["params"], model.cfg)
  for module in SR_MODULE_NAMES:
    assert list(back[module]) == list(original[module])
    for key, array in original[module].items():
      np.testing.assert_array_equal(back[module][key], array, err_msg=f"{module}.{key}")


def test_latents_and_mapper_match_original(tiny_sr):
  model, variables, io = tiny_sr
  points = io["embedder_tokens"].transpose(1, 0, 2)
  latent = model.apply(variables, points, io["len1"], method=SNIPSR.encode_points)
  _assert_close("encoder_y_latent", latent, io["encoder_y_latent"])
  src, state = model.apply(variables, jnp.asarray(io["encoder_y_latent"]),
                           method=SNIPSR.map_latent, mutable=["intermediates"])
  _assert_close("mapper_linear1_out", state["intermediates"]["mapper"]["linear1_out"][0],
                io["mapper_linear1_out"])
  _assert_close("mapper_out", src, io["mapper_out"])


def _assert_logits_match(logits, io):
  """The original's predicted rows (position-major where p < len2 - 1): the fixture's column
  subset of every row, and every row's logsumexp over the whole vocabulary."""
  rows = np.asarray(_seq_major(logits)[:-1][io["decoder_pred_mask"][:-1]])
  _assert_close("decoder_logits", rows[:, io["logit_columns"]], io["decoder_logits"])
  _assert_close("decoder_logsumexp", jax.nn.logsumexp(rows, axis=-1), io["decoder_logsumexp"])


def test_teacher_forced_decoder_matches_original(tiny_sr):
  model, variables, io = tiny_sr
  equations, lengths = io["x2"].T, io["len2"]
  logits, state = model.apply(variables, jnp.asarray(io["mapper_out"]), equations, lengths,
                              method=SNIPSR.decode, mutable=["intermediates"])
  _assert_close("decoder_hidden", _seq_major(state["intermediates"]["decoder"]["hidden"][0]),
                io["decoder_hidden"])
  targets = io["x2"][1:][io["decoder_pred_mask"][:-1]]
  np.testing.assert_array_equal(targets, io["decoder_targets"])
  _assert_logits_match(logits, io)
  _assert_close("decoder_loss", decoder_loss(logits, equations, lengths), io["decoder_loss"])


def test_points_to_logits_in_one_call_match_original(tiny_sr):
  model, variables, io = tiny_sr
  logits = model.apply(variables, io["embedder_tokens"].transpose(1, 0, 2), io["len1"],
                       io["x2"].T, io["len2"])
  _assert_logits_match(logits, io)


def test_converted_sr_directory_round_trips(tiny_sr, tmp_path):
  model, variables, _ = tiny_sr
  out = converter.convert_pth(SR_PTH, tmp_path / "sr")
  cfg, _, params = converter.load_converted(out, kind="sr")
  assert cfg == model.cfg
  jax.tree.map(np.testing.assert_array_equal, params, variables["params"])


@pytest.mark.parametrize("path, kind, found, expected", [
    (SNIP_PTH, "sr", "SNIP pretraining", "SNIP symbolic-regression \\(SR\\)"),
    (SR_PTH, "snip", "SNIP symbolic-regression \\(SR\\)", "SNIP pretraining"),
])
def test_checkpoint_of_the_wrong_kind_is_named_in_one_line(path, kind, found, expected):
  with pytest.raises(ValueError, match=f"is a {found} checkpoint .*; expected a {expected}") as e:
    converter.read_pth(path, kind=kind)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_load_pretrained_reads_an_sr_checkpoint_and_names_what_it_cannot_do(tmp_path):
  out = converter.convert_pth(SR_PTH, tmp_path / "sr")
  for model in (load_pretrained(SR_PTH), load_pretrained(out)):
    assert model.kind == "sr"
    with pytest.raises(ValueError, match="embed_equations needs a SNIP pretraining checkpoint"
                       r" .*this is a SNIP symbolic-regression \(SR\) checkpoint"):
      model.embed_equations("x_0")
