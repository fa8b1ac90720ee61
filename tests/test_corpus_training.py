"""Pretraining from an exported corpus (jsonl and its TFDS copy) end to end, and what reads the
workdir afterwards: load_pretrained, `convert --to_pth`, the plots CLI; bfloat16 compute."""

import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import export as export_configs
from snip_jax.convert import converter
from snip_jax.convert.pth import load_pth
from snip_jax.data import export, pipeline, tfds_corpus
from snip_jax.data.batching import trim_equations
from snip_jax.data.corpus import read_corpus
from snip_jax.model import SNIP
from snip_jax.pretrained import Pretrained, load_pretrained
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import clip
from snip_jax.train import trainer
from snip_jax.train.metrics import METRICS_FILE
from snip_jax.train.train_step import BATCH_KEYS
from tests.test_trainer import _assert_same_run, _config, _saved_state, _train_losses

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("jsonl", "tfds")
BATCH = 8
STEPS = 8  # about 1.3 epochs of the corpus's ~48 training lines
INTERRUPT_AT = 5
MODULES = ("embedder", "encoder_y", "encoder_f", "decoder", "regressor", "classifier")

pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The export job's runlocal preset in the pretraining env: 64 samples, split, TFDS copy."""
  workdir = tmp_path_factory.mktemp("export")
  config = export_configs.get_config("runlocal")
  config.env.update(_config().env.to_dict())
  config.export.n_samples = 64
  config.export.n_valid = config.export.n_test = 8
  config.export.num_workers = 0
  config.export.tfds = True
  export.validate_config(config, str(workdir))
  export.run_export(config, str(workdir))
  return workdir


def _corpus_config(source, corpus, num_train_steps, **train):
  """The small runlocal pretraining config on the corpus's train split, evaluated at the end."""
  config = _config(num_train_steps=num_train_steps, batch_size=BATCH, eval_every_steps=100,
                   checkpoint_every_steps=100, **train)
  config.data.source = source
  config.data.jsonl_path = str(corpus / "split" / "data.prefix.train")
  config.data.tfds_dir = str(corpus / "tfds")
  config.data.shuffle = True
  return config


def _recording(make_train_step, consumed):
  """make_train_step whose steps append the batch they are given (as numpy) to `consumed`."""

  def make(*args, **kwargs):
    step = make_train_step(*args, **kwargs)

    def recording_step(state, batch, rng):
      consumed.append(jax.device_get(batch))
      return step(state, batch, rng)

    return recording_step

  return make


def _train(config, workdir):
  """Validate and train as launch.py does; returns the batches the train steps took."""
  consumed = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer, "make_train_step", _recording(trainer.make_train_step, consumed))
    clip.validate_config(config, str(workdir))
    clip.train_and_evaluate(config, workdir)
  return consumed


@dataclasses.dataclass(frozen=True)
class Runs:
  """An uninterrupted run and one stopped at INTERRUPT_AT then resumed, on the same data."""

  config: object
  full: pathlib.Path
  resumed: pathlib.Path
  full_batches: list
  interrupted_batches: list
  resumed_batches: list


def _runs(source, corpus, root):
  """Train STEPS in one go, and INTERRUPT_AT steps then (rerun, same workdir) to STEPS."""
  config = _corpus_config(source, corpus, STEPS)
  full_batches = _train(config, root / "full")
  interrupted = _train(_corpus_config(source, corpus, INTERRUPT_AT), root / "resumed")
  return Runs(config, root / "full", root / "resumed", full_batches, interrupted,
              _train(config, root / "resumed"))


@pytest.fixture(scope="module")
def jsonl_runs(corpus, tmp_path_factory):
  return _runs("jsonl", corpus, tmp_path_factory.mktemp("jsonl_runs"))


@pytest.fixture(scope="module")
def tfds_runs(corpus, tmp_path_factory):
  return _runs("tfds", corpus, tmp_path_factory.mktemp("tfds_runs"))


def _reader_batches(config, n):
  """The first `n` batches of the corpus reader for `config.data`, as the step sees them."""
  env_cfg = env_config_from(config.env)
  bs, seed, data = config.train.batch_size, config.train.seed, config.data
  if data.source == "jsonl":
    ds = pipeline.corpus_batches(pipeline.corpus_samples(data.jsonl_path, env_cfg), bs, seed,
                                 env_cfg=env_cfg, shuffle=data.shuffle)
  else:
    source = tfds_corpus.corpus_source(data.tfds_dir, data.tfds_split, env_cfg)
    ds = pipeline.corpus_batches(source, bs, seed, shuffle=data.shuffle)
  with pipeline.iterate(ds, stop=n) as batches:
    return [trim_equations({k: b[k] for k in BATCH_KEYS}, config.train.equation_bucket)
            for b in batches]


def _assert_batches_equal(got, expected):
  assert len(got) == len(expected)
  for i, (a, b) in enumerate(zip(got, expected)):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {i} {key}")


@pytest.mark.parametrize("source", SOURCES)
def test_steps_take_the_corpus_readers_batches_and_a_resume_continues_them(source, request):
  runs = request.getfixturevalue(f"{source}_runs")
  expected = _reader_batches(runs.config, STEPS)
  _assert_batches_equal(runs.full_batches, expected)
  _assert_batches_equal(runs.interrupted_batches, expected[:INTERRUPT_AT])
  _assert_batches_equal(runs.resumed_batches, expected[INTERRUPT_AT:])


def test_jsonl_and_tfds_sources_give_the_steps_the_same_batches(jsonl_runs, tfds_runs):
  """The TFDS copy of a data.prefix is shuffled, sharded and batched exactly as the file."""
  _assert_batches_equal(jsonl_runs.full_batches, tfds_runs.full_batches)


@pytest.mark.parametrize("source", SOURCES)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(source, request):
  runs = request.getfixturevalue(f"{source}_runs")
  steps = [s for s, _ in _train_losses(runs.resumed)]
  assert steps == list(range(1, STEPS + 1))
  _assert_same_run(runs.resumed, runs.full, STEPS)


def test_load_pretrained_on_a_workdir_embeds_with_its_latest_checkpoint(jsonl_runs):
  config, workdir = jsonl_runs.config, jsonl_runs.resumed
  env_cfg = env_config_from(config.env)
  model_cfg = trainer.model_config(config, env_cfg)
  samples = list(itertools.islice(read_corpus(config.data.jsonl_path, env_cfg), BATCH))

  def embeds(model):
    return (model.embed_equations([s.prefix for s in samples]),
            model.embed_points([(s.x, s.y) for s in samples]))

  loaded = load_pretrained(workdir, batch_size=BATCH)
  learned = math.exp(float(_saved_state(workdir, STEPS)["log_temperature"]))  # runlocal learns T
  assert (loaded.model_cfg, loaded.env_cfg) == (model_cfg.replace(clip_temperature=learned),
                                                env_cfg)
  latest, earlier = (embeds(Pretrained(model_cfg, env_cfg, _saved_state(workdir, step)["params"],
                                       BATCH)) for step in (STEPS, INTERRUPT_AT))
  for got, expected, other in zip(embeds(loaded), latest, earlier):
    np.testing.assert_array_equal(got, expected)
    assert not np.allclose(got, other, atol=1e-3)


def _python(*args):
  """A repository command line in a subprocess (CPU only)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_convert_to_pth_writes_the_workdirs_latest_params(jsonl_runs, tmp_path):
  workdir, pth = jsonl_runs.resumed, tmp_path / "run.pth"
  out = _python("-m", "snip_jax.convert", f"--from_dir={workdir}", f"--to_pth={pth}")
  assert out.returncode == 0, out.stderr
  assert f"checkpoint: {pth}" in out.stdout
  assert set(load_pth(pth)) == {"params", *MODULES}
  model_cfg, env_cfg, params, _ = converter.read_pth(pth)
  saved_cfg, saved_env, _ = converter.load_converted(workdir)
  assert env_cfg == saved_env
  trainer.check_compatible(model_cfg, saved_cfg, str(pth))  # the architecture and vocabulary
  expected = _saved_state(workdir, STEPS)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)


def test_plots_command_writes_the_pngs_of_a_workdir(jsonl_runs, tmp_path):
  shutil.copy(jsonl_runs.full / METRICS_FILE, tmp_path / METRICS_FILE)
  out = _python("-m", "snip_jax.train.plots", f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr
  names = ("loss.png", "accuracy.png", "optimizer.png", "throughput.png")  # no R^2 in CLIP runs
  assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)
  assert out.stdout.split() == [str(tmp_path / "plots" / name) for name in names]
  for name in names:
    assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name


def test_bfloat16_compute_dtype_computes_in_bfloat16_and_keeps_float32_state(
    corpus, jsonl_runs, tmp_path):
  config = _corpus_config("jsonl", corpus, 1, compute_dtype="bfloat16")
  clip.train_and_evaluate(config, tmp_path)
  (step, loss), = _train_losses(tmp_path)
  reference = dict(_train_losses(jsonl_runs.full))[1]  # float32, same params and batch
  assert step == 1 and loss != reference and loss == pytest.approx(reference, rel=1e-2)
  state = _saved_state(tmp_path, 1)
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {np.dtype(np.float32)}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["dtype"] == "bfloat16"

  model_cfg = trainer.model_config(config, env_config_from(config.env))
  batch = _reader_batches(config, 1)[0]
  (z_y, z_f), captured = jax.eval_shape(functools.partial(
      SNIP(model_cfg).apply, capture_intermediates=lambda module, _: isinstance(module, nn.Dense),
      mutable=["intermediates"]), {"params": state["params"]}, *(batch[k] for k in BATCH_KEYS))
  captured = captured["intermediates"]
  dense = [x for path, x in jax.tree_util.tree_flatten_with_path(captured)[0]
           if "__call__" in jax.tree_util.keystr(path)]
  assert len(dense) > 10 and {x.dtype for x in dense} == {jnp.dtype(jnp.bfloat16)}
  for encoder in ("encoder_y", "encoder_f"):
    assert {x.dtype for x in captured[encoder]["layer_outputs"]} == {jnp.dtype(jnp.bfloat16)}
    assert captured[encoder]["glob_attn"][0].dtype == np.float32  # softmaxes run in float32
  assert z_y.dtype == z_f.dtype == np.float32  # public outputs
