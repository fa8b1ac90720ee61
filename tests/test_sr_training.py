"""The symbolic-regression training job (configs/sr.py) in the shared loop: it learns, resumes,
reports, and init_from copies exactly the modules it is asked to."""

import json

import jax
import numpy as np
import pytest

from configs import sr as sr_configs
from snip_jax.convert import converter
from snip_jax.errors import UserError
from snip_jax.tasks import sr
from snip_jax.train.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from tests.test_trainer import TINY_PTH


def _config(**train):
  """configs/sr.py:runlocal, shorter; `train` overrides config.train."""
  config = sr_configs.get_config("runlocal")
  config.train.num_workers = 0
  config.train.log_every_steps = 1
  config.train.num_train_steps = 60
  config.train.eval_every_steps = config.train.checkpoint_every_steps = 30
  config.eval.n_samples = config.eval.batch_size = 32
  config.eval.decode_max_len = 24
  for key, value in train.items():
    config.train[key] = value
  return config


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
  """30 steps, then a rerun to 60 in the same workdir (a resume)."""
  workdir = tmp_path_factory.mktemp("sr")
  first = sr.train_and_evaluate(_config(num_train_steps=30), workdir)
  return workdir, first, sr.train_and_evaluate(_config(), workdir)


def test_sr_training_learns_resumes_and_reports(sr_run):
  workdir, first, final = sr_run
  assert first["step"] == 30 and final["step"] == 60
  records = _records(workdir)
  train = [r for r in records if "token_accuracy" in r]
  assert [r["step"] for r in train] == list(range(1, 61))  # resumed at 31, nothing twice
  evals = [r for r in records if "eval_token_accuracy" in r]
  assert [r["step"] for r in evals] == [30, 60]
  assert evals[-1]["eval_token_accuracy"] > train[0]["token_accuracy"] + 0.15
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
  assert 0.0 <= evals[-1]["eval_r2_above_0.99"] <= 1.0
  assert final["plots"] and all(p.endswith(".png") for p in final["plots"])


def test_an_sr_workdir_loads_and_generates(sr_run):
  from snip_jax import load_pretrained

  model = load_pretrained(sr_run[0])
  x = np.linspace(-1, 1, 50)
  candidates = model.generate(x, 2 * x, method="beam", beam_size=2, max_len=24)
  assert len(candidates) == 2 and candidates[0].score >= candidates[1].score


def test_init_from_a_snip_checkpoint_copies_only_the_encoder_side(tmp_path):
  converted = converter.convert_pth(TINY_PTH, tmp_path / "snip")
  snip_cfg, env_cfg, snip_params = converter.load_converted(converted)
  config = _config(num_train_steps=1, trainable=("mapper",),
                   init_modules=("embedder", "encoder_y"), init_from=str(converted),
                   checkpoint_every_steps=1, eval_every_steps=1)
  for key, value in env_cfg.__dict__.items():
    config.env[key] = value
  for key in ("enc_emb_dim", "n_enc_layers", "n_enc_heads", "emb_emb_dim", "latent_dim",
              "n_enc_hidden_layers", "n_emb_layers", "emb_expansion_factor"):
    config.model[key] = getattr(snip_cfg, key)
  config.model.dec_emb_dim, config.model.n_dec_heads = snip_cfg.enc_emb_dim, snip_cfg.n_enc_heads
  sr.validate_config(config, str(tmp_path / "run"))
  sr.train_and_evaluate(config, tmp_path / "run")
  params, _ = latest_checkpoint(tmp_path / "run" / CHECKPOINT_DIR)
  for module in ("embedder", "encoder_y"):  # frozen: still the SNIP checkpoint's
    jax.tree.map(np.testing.assert_array_equal, params[module], snip_params[module])
  assert set(params) == {"embedder", "encoder_y", "decoder", "mapper"}


@pytest.mark.parametrize("option", ["trainable", "init_modules"])
def test_unknown_modules_are_one_clear_error(tmp_path, option):
  with pytest.raises(UserError, match=f"train.{option} must name some of embedder"):
    sr.validate_config(_config(**{option: ("encoder_f",)}), str(tmp_path / "run"))
