"""Published presets: the released models' exact layout and the published training recipes.

configs/pretrain.py:d1 is SNIP-1d-normalized and :d10 SNIP-10dmax; the property-prediction
presets fine-tune or freeze the 1-D model, and the export presets write their data. The model
each preset builds is compared, key for key and shape for shape, with the original's full-size
state_dicts (state_dict_manifest.json), through abstract params (jax.eval_shape: no weights).
"""

import dataclasses
import functools
import json
import operator
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import export as export_configs
from configs import pretrain as pretrain_configs
from configs import proppred as proppred_configs
from snip_jax.model import MODULE_NAMES, ModelConfig
from snip_jax.model.state_dict import expected_entries
from snip_jax.symbolic import config as symbolic_config
from snip_jax.symbolic import default_env_config
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import proppred as proppred_task
from snip_jax.train import trainer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
MANIFEST = json.loads((FIXTURES / "state_dict_manifest.json").read_text())["sets"]
PROPERTIES = ("ncr", "upward", "yavg", "oscil")
PROPPRED_TRAINABLE = {"supervised": ("encoder_f", "regressor"), "frozen": ("regressor",),
                      "finetuned": ("encoder_f", "regressor")}
# (configs module, preset) -> the released model (manifest set) it builds.
MODEL_PRESETS = [(pretrain_configs, "d1", "d1"), (pretrain_configs, "d10", "d10"),
                 (proppred_configs, "ncr,frozen", "d1")]
RELEASED_ENVS = {"d1": dict(normalize_y=True), "d10": dict(max_input_dimension=10)}


def _built(config):
  """(env config, model config) as the trainer builds them from a preset's config."""
  env_cfg = env_config_from(config.env)
  return env_cfg, trainer.model_config(config, env_cfg)


def _manifest_model_config(spec):
  """The config the original's command line in the manifest gives (the rest: its defaults)."""
  options = spec["cli_overrides"]
  return ModelConfig.from_params({k.lstrip("-"): int(v) for k, v in zip(options[::2],
                                                                         options[1::2])})


def _leaf_paths(tree):
  """The key paths of a nested dict's leaves, as tuples of keys."""
  return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _state_dict_shapes(abstract, model_cfg):
  """{module: [(state_dict key, torch shape)]} of abstract Flax params, via state_dict.py's map."""
  shapes = {}
  for module, entries in expected_entries(model_cfg).items():
    leaves = {e.path: functools.reduce(operator.getitem, e.path, abstract[module])
              for e in entries}
    assert set(leaves) == _leaf_paths(abstract[module]), f"{module}: params without a key"
    shapes[module] = [(e.key, leaves[e.path].shape[::-1] if e.transpose else leaves[e.path].shape)
                      for e in entries]
  return shapes


@pytest.mark.parametrize("configs, preset, release", MODEL_PRESETS)
def test_preset_builds_the_released_model_key_for_key(configs, preset, release):
  spec = MANIFEST[release]
  config = configs.get_config(preset)
  env_cfg, model_cfg = _built(config)
  assert model_cfg == _manifest_model_config(spec)
  assert (model_cfg.n_float_words, model_cfg.n_words) == (spec["n_float_words"],
                                                           spec["n_equation_words"])
  abstract = jax.eval_shape(lambda rng: trainer.initial_params(config, model_cfg, rng),
                            jax.random.key(0))
  assert set(abstract) == set(MODULE_NAMES)
  expected = {m: [(k, tuple(v["shape"])) for k, v in spec["modules"][m]["state_dict"].items()]
              for m in MODULE_NAMES}
  assert _state_dict_shapes(abstract, model_cfg) == expected
  assert sum(x.size for x in jax.tree.leaves(abstract)) == spec["total_parameters"]
  assert env_cfg.max_input_dimension == {"d1": 1, "d10": 10}[release]


@pytest.mark.parametrize("preset", ["d1", "d10"])
def test_pretrain_presets_follow_the_published_recipe(preset):
  config = pretrain_configs.get_config(preset)
  env_cfg, model_cfg = _built(config)
  assert env_cfg == default_env_config(**RELEASED_ENVS[preset])
  assert env_cfg.normalize_y == (preset == "d1")
  assert (model_cfg.latent_dim, model_cfg.enc_emb_dim, model_cfg.dec_emb_dim) == (512, 512, 512)
  assert (model_cfg.n_enc_layers, model_cfg.n_dec_layers) == (8, 8)
  assert (model_cfg.n_enc_heads, model_cfg.n_dec_heads) == (16, 16)
  assert (model_cfg.dropout, model_cfg.clip_temperature) == (0.0, 1.0)
  optim, train = config.optim, config.train
  assert (optim.optimizer, optim.lr, optim.clip_grad_norm) == ("adam_inverse_sqrt", 4e-5, 0.5)
  assert (optim.b1, optim.b2, optim.eps) == (0.9, 0.999, 1e-8)
  _, schedule = trainer.make_optimizer(optim)
  # 1e-7 rising linearly over 10k updates to 4e-5, then 4e-5 * sqrt(10k / n).
  np.testing.assert_allclose([float(schedule(n)) for n in (0, 5_000, 10_000, 40_000)],
                             [1e-7, (1e-7 + 4e-5) / 2, 4e-5, 2e-5], rtol=1e-6)
  assert train.batch_size == 256
  assert (train.n_steps_per_epoch, train.checkpoint_every_steps) == (1000, 10_000)
  assert tuple(train.trainable) == ("embedder", "encoder_y", "encoder_f")
  assert (train.learnable_temperature, train.normalize_latents, train.compute_dtype,
          train.grad_accum_steps) == (False, False, "float32", 1)


@pytest.mark.parametrize("prop", PROPERTIES)
@pytest.mark.parametrize("variant", sorted(PROPPRED_TRAINABLE))
def test_proppred_presets_follow_the_published_recipe(prop, variant):
  config = proppred_configs.get_config(f"{prop},{variant}")
  env_cfg, model_cfg = _built(config)
  assert env_cfg == default_env_config(normalize_y=True, is_proppred=True, property_type=prop)
  # The released 1-D model, so train.init_from=SNIP-1d-normalized loads into it.
  assert model_cfg == _built(pretrain_configs.get_config("d1"))[1]
  assert (config.train.batch_size, config.optim.lr) == (16, 1e-5)
  assert (config.optim.optimizer, config.optim.warmup_updates) == ("adam_inverse_sqrt", 10_000)
  assert tuple(config.train.trainable) == PROPPRED_TRAINABLE[variant]
  assert config.task.variant == variant


@pytest.mark.parametrize("preset", ["d1", "d10"] + list(PROPERTIES))
def test_export_presets_write_the_released_models_data(preset):
  config = export_configs.get_config(preset)
  env_cfg = env_config_from(config.env)
  if preset in PROPERTIES:
    # The original's property sets: its defaults and the label, 10k train + 1k test.
    assert env_cfg == default_env_config(is_proppred=True, property_type=preset)
    assert (config.export.n_samples, config.export.n_test) == (11_000, 1_000)
    release = "d1"
  else:
    assert env_cfg == env_config_from(pretrain_configs.get_config(preset).env)
    release = preset
  model_cfg = ModelConfig.from_env(env_cfg)
  assert (model_cfg.n_float_words, model_cfg.n_words) == (MANIFEST[release]["n_float_words"],
                                                           MANIFEST[release]["n_equation_words"])


def test_config_literals_agree_with_the_library():
  """The configs hold literals (to need no jax); they must equal what the library defines."""
  defaults = {f.name: (f.default, type(f.default)) for f in
              dataclasses.fields(symbolic_config.EnvConfig)}
  assert {k: (v, type(v)) for k, v in export_configs.ENV_DEFAULTS.items()} == defaults
  assert export_configs.PROPERTY_TYPES == symbolic_config.PROPERTY_TYPES
  assert proppred_configs.VARIANTS == proppred_task.VARIANTS


def test_model_config_takes_its_vocabulary_from_the_env():
  for env_cfg in (default_env_config(), default_env_config(max_input_dimension=10)):
    built = ModelConfig(max_input_dimension=env_cfg.max_input_dimension)
    assert built == ModelConfig.from_env(env_cfg)
  assert (ModelConfig().n_float_words, ModelConfig().n_words) == (
      MANIFEST["d1"]["n_float_words"], MANIFEST["d1"]["n_equation_words"])


LEAF_CHECK = """
import json, sys
from absl import flags
from snip_jax import cli
from snip_jax.configs import convert, export, pretrain, proppred, retrieval, sr, srbench
proppred_args = [f"{p},{v}{r}" for p in export.PROPERTY_TYPES for v in proppred.VARIANTS
                 for r in ("", ",runlocal")]
for module, args in ((convert, [""]), (export, ["d1", "d10", "runlocal", *export.PROPERTY_TYPES]),
                     (pretrain, ["d1", "d10", "runlocal"]), (proppred, proppred_args),
                     (sr, ["d10", "runlocal", "fit"]), (retrieval, retrieval.PRESETS),
                     (srbench, srbench.PRESETS)):
  for arg in args:
    module.get_config(arg)
flags.FLAGS(["snip-jax", "--config=proppred:ncr,frozen,runlocal", "--workdir=unused"])
assert flags.FLAGS.config.train.trainable == ("regressor",)
print(json.dumps(sorted(sys.modules)))
"""
HEAVY_MODULES = ("jax", "jaxlib", "orbax", "flax", "optax", "numpy", "snip_jax.train",
                 "snip_jax.tasks", "snip_jax.model", "snip_jax.data", "snip_jax.symbolic")


def test_presets_and_flag_parsing_import_no_jax(tmp_path):
  """Every preset, and the command parsing --config, load without jax, Orbax or the library."""
  done = subprocess.run([sys.executable, "-c", LEAF_CHECK], cwd=tmp_path, capture_output=True,
                        text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  heavy = [m for m in json.loads(done.stdout)
           if any(m == h or m.startswith(f"{h}.") for h in HEAVY_MODULES)]
  assert not heavy, heavy


def test_sr_preset_builds_the_released_sr_model_with_the_published_recipe():
  from configs import sr as sr_configs
  from snip_jax.model import expected_shapes

  manifest = json.loads((FIXTURES.parent / "snip_sr_original" / "sr_state_dict_manifest.json")
                        .read_text())
  config = sr_configs.get_config("d10")
  _, model_cfg = _built(config)
  shapes = {m: {k: tuple(v["shape"]) for k, v in manifest["modules"][m].items()}
            for m in manifest["modules"]}
  assert {m: dict(d) for m, d in expected_shapes(model_cfg, "sr").items()} == shapes
  assert (config.train.batch_size, config.optim.lr, config.optim.warmup_updates,
          config.optim.clip_grad_norm) == (64, 4e-5, 10_000, 0.5)
  assert tuple(config.train.trainable) == ("mapper",)
  assert tuple(config.train.init_modules) == ("embedder", "encoder_y")
