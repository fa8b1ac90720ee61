"""The pretraining loop end to end: outputs, exact resumption (SIGTERM, SIGKILL, a corrupt
checkpoint), which checkpoints are kept, NaN stop, init_from, and that the runlocal preset
learns."""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import pretrain
from snip_jax.convert.converter import convert_pth, load_converted
from snip_jax.data import pipeline
from snip_jax.errors import UserError
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import clip
from snip_jax.train import trainer
from snip_jax.train.train_step import create_train_state, data_mesh, make_eval_step

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_PTH = REPO / "tests" / "fixtures" / "snip_original" / "tiny.pth"
TRAIN_FIELDS = ("step", "loss", "accuracy_f2y", "accuracy_y2f", "lr", "grad_norm",
                "temperature", "samples_per_s", "step_time_s")


pytestmark = pytest.mark.usefixtures("compilation_cache")


# runlocal with one layer per transformer (half the compile time), in-process generation and a
# 16-sample eval set; the subprocess runs pass the same flags so they hit the compilation cache.
SMALL_FLAGS = ("--config.model.n_enc_layers=1", "--config.model.n_dec_layers=1",
               "--config.train.num_workers=0", "--config.train.log_every_steps=1",
               "--config.eval.n_samples=16", "--config.eval.batch_size=16")


def _config(**train):
  """The SMALL_FLAGS config; `train` overrides config.train."""
  config = pretrain.get_config("runlocal")
  config.model.n_enc_layers = config.model.n_dec_layers = 1
  config.train.num_workers = 0
  config.train.log_every_steps = 1
  config.eval.n_samples = 16
  config.eval.batch_size = 16
  for key, value in train.items():
    config.train[key] = value
  return config


def _records(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def _train_losses(workdir):
  return [(r["step"], r["loss"]) for r in _records(workdir) if "loss" in r]


def _saved_steps(workdir):
  """The checkpointed steps in `workdir`, in order."""
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").glob("*")
                if p.name.isdigit())


def _saved_state(workdir, step):
  return ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step)
                                            / "state")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """An uninterrupted 12-step run, checkpoint and eval every 6 steps."""
  workdir = tmp_path_factory.mktemp("full")
  config = _config(num_train_steps=12, checkpoint_every_steps=6, eval_every_steps=6)
  return workdir, clip.train_and_evaluate(config, workdir)


def test_run_writes_checkpoints_metrics_tensorboard_and_plots(full_run):
  workdir, final = full_run
  assert final["step"] == 12 and not final["preempted"]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12]
  records = _records(workdir)
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, 13))
  for record in train:
    assert set(TRAIN_FIELDS) <= set(record), record
    assert all(np.isfinite(record[k]) for k in TRAIN_FIELDS)
  evals = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in evals] == [6, 12]
  for record in evals:
    assert 0.0 <= record["eval_accuracy_f2y"] <= 1.0 and 0.0 <= record["eval_accuracy_y2f"] <= 1.0
  assert final["eval_loss"] == evals[-1]["eval_loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert final["plots"] and all(pathlib.Path(p).stat().st_size > 0 for p in final["plots"])
  assert {pathlib.Path(p).name for p in final["plots"]} >= {"loss.png", "accuracy.png"}


def _latest_and_best(workdir, keep, metric):
  """The latest `keep` evaluated steps and the one with the highest `metric` (a unique best)."""
  evals = {r["step"]: r[metric] for r in _records(workdir) if metric in r}
  best = max(evals, key=evals.get)
  assert list(evals.values()).count(evals[best]) == 1, evals
  return sorted(set(sorted(evals)[-keep:]) | {best})


def test_keeps_the_latest_and_the_best_checkpoints_and_resumes_from_the_latest(full_run, tmp_path,
                                                                               caplog):
  """Checkpoints and evals every 2 steps, keep 2, best by eval_accuracy_f2y (step 4 at seed 0)."""
  workdir, _ = full_run
  config = _config(num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=2,
                   keep_checkpoints=2)
  metric = config.eval.best_metric
  clip.train_and_evaluate(config, tmp_path)
  expected = _latest_and_best(tmp_path, 2, metric)
  assert len(expected) == 3, "the best is among the latest two: this run cannot tell"
  assert _saved_steps(tmp_path) == expected
  config.train.num_train_steps = 12
  with caplog.at_level(logging.INFO):
    final = clip.train_and_evaluate(config, tmp_path)
  assert f"resumed from {tmp_path / 'checkpoints'}/8 (next batch 8)" in caplog.text
  assert final["step"] == 12
  expected = _latest_and_best(tmp_path, 2, metric)
  assert len(expected) == 3 and _saved_steps(tmp_path) == expected
  _assert_same_run(tmp_path, workdir, 12)


def _assert_same_run(workdir, expected_workdir, step):
  """Same per-step losses and bit-identical saved state at `step` as `expected_workdir`."""
  assert _train_losses(workdir) == _train_losses(expected_workdir)
  expected, got = _saved_state(expected_workdir, step), _saved_state(workdir, step)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_unrestorable_latest_checkpoint_falls_back_to_the_previous_one(full_run, tmp_path,
                                                                       caplog):
  workdir, _ = full_run
  shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
  shutil.copy(workdir / "metrics.jsonl", tmp_path / "metrics.jsonl")
  data_files = [f for f in (tmp_path / "checkpoints" / "12" / "state").rglob("*")
                if f.is_file() and f.parent.name == "d"]  # OCDBT array data
  assert data_files
  for f in data_files:
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  with caplog.at_level(logging.WARNING):
    final = clip.train_and_evaluate(_config(num_train_steps=12, checkpoint_every_steps=6,
                                               eval_every_steps=6), tmp_path)
  assert "checkpoint step 12" in caplog.text and "does not restore" in caplog.text
  assert final["step"] == 12
  assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints_unrestorable").iterdir()] == ["12"]
  _assert_same_run(tmp_path, workdir, 12)


def test_no_restorable_checkpoint_is_a_clear_error(full_run, tmp_path):
  workdir, _ = full_run
  shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
  for step in ("6", "12"):
    shutil.rmtree(tmp_path / "checkpoints" / step / "state")
  with pytest.raises(UserError, match=r"none of the checkpoints .* restores.*step 12.*step 6"):
    clip.train_and_evaluate(_config(num_train_steps=12), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["12", "6"]


def test_non_finite_loss_stops_naming_the_step_and_saves_nothing_after_it(tmp_path):
  config = _config(num_train_steps=20, checkpoint_every_steps=1, eval_every_steps=100)
  config.optim.lr = config.optim.warmup_init_lr = 1e30
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step (\d+)") as error:
    clip.train_and_evaluate(config, tmp_path)
  bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
  saved = _saved_steps(tmp_path)
  assert saved and max(saved) < bad_step
  for step in saved:
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(_saved_state(tmp_path, step)))


def test_init_from_a_converted_checkpoint_starts_from_its_weights(tmp_path):
  converted = convert_pth(TINY_PTH, tmp_path / "converted")
  model_cfg, env_cfg, params = load_converted(converted)
  config = _config(num_train_steps=1, init_from=str(converted))
  for key, value in dataclasses.asdict(env_cfg).items():
    config.env[key] = value
  for key in config.model:
    config.model[key] = getattr(model_cfg, key)
  clip.train_and_evaluate(config, tmp_path / "run")

  model_cfg = trainer.model_config(config, env_cfg)
  optimizer, _ = trainer.make_optimizer(config.optim)
  state = create_train_state(model_cfg, params, optimizer)
  batch = pipeline.generated_batches(env_cfg, seed=config.train.seed,
                                     batch_size=config.train.batch_size)[0]
  expected = float(make_eval_step(model_cfg, data_mesh())(state, batch)["loss"])
  assert _train_losses(tmp_path / "run")[0][1] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_init_from_with_another_model_config_is_refused(tmp_path):
  converted = convert_pth(TINY_PTH, tmp_path / "converted")
  with pytest.raises(ValueError, match="init_from.*mantissa_len"):
    clip.train_and_evaluate(_config(init_from=str(converted)), tmp_path / "run")


def _launch(workdir, *flags):
  """launch.py pretrain runlocal in a subprocess (stdout/stderr piped)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  command = [sys.executable, "launch.py", "--config=configs/pretrain.py:runlocal",
             f"--workdir={workdir}", *SMALL_FLAGS, *flags]
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _logged_steps(metrics):
  """Train steps in metrics.jsonl so far (a half-written last line is ignored)."""
  steps = []
  for line in metrics.read_text().splitlines() if metrics.exists() else []:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if "loss" in record:
      steps.append(record["step"])
  return steps


def _wait_until(process, condition, what):
  """Poll `condition()` until it holds while `process` runs (180 s at most)."""
  deadline = time.time() + 180
  while not condition():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, f"not within 180 s: {what}"
    time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_then_sigkill_then_launch_resumes_the_uninterrupted_run(full_run, tmp_path):
  """SIGTERM (exit 75) and SIGKILL early in long runs, then a run to step 12: the same run."""
  expected, _ = full_run
  checkpoints, metrics = tmp_path / "checkpoints", tmp_path / "metrics.jsonl"
  endless = ("--config.train.num_train_steps=1000000", "--config.train.eval_every_steps=1000000")
  process = _launch(tmp_path, *endless, "--config.train.checkpoint_every_steps=1000000")
  _wait_until(process, lambda: _logged_steps(metrics), "a train step")
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=60)
  assert process.returncode == 75, stderr[-3000:]  # EX_TEMPFAIL: preempted, rerun to resume
  (preempted,) = _saved_steps(tmp_path)
  assert 1 <= preempted < 12 and _logged_steps(metrics)[-1] == preempted
  assert f"pretrain preempted at step {preempted}" in stdout

  process = _launch(tmp_path, *endless, "--config.train.checkpoint_every_steps=1")
  _wait_until(process, lambda: _saved_steps(tmp_path)[-1] > preempted
              and _logged_steps(metrics)[-1] > _saved_steps(tmp_path)[-1], "a newer checkpoint")
  process.kill()
  _, stderr = process.communicate(timeout=30)
  assert f"resumed from {checkpoints}/{preempted}" in stderr
  killed = _saved_steps(tmp_path)[-1]
  assert preempted < killed < 12

  process = _launch(tmp_path, "--config.train.num_train_steps=12")
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert f"resumed from {checkpoints}/{killed}" in stderr
  assert "pretrain finished at step 12" in stdout
  for what in ("checkpoints:", "metrics:", "tensorboard:", "plots:"):
    assert what in stdout
  _assert_same_run(tmp_path, expected, 12)


@pytest.mark.slow
def test_runlocal_preset_learns_held_out_retrieval_well_above_chance(tmp_path):
  """The README's first command as is (120 steps): held-out retrieval among 64 ends >= 4x chance.

  Measured at seed 0: eval f2y 6/64 and y2f 12/64 (chance 1/64), eval loss 2.95 vs ln 64 = 4.16.
  """
  config = pretrain.get_config("runlocal")
  final = clip.train_and_evaluate(config, tmp_path)
  n = config.eval.n_samples
  chance = 1.0 / n
  mean_accuracy = (final["eval_accuracy_f2y"] + final["eval_accuracy_y2f"]) / 2
  assert mean_accuracy >= 4 * chance, final
  assert min(final["eval_accuracy_f2y"], final["eval_accuracy_y2f"]) >= 2 * chance, final
  assert final["eval_loss"] < np.log(n) - 0.5, final
  first_eval = next(r for r in _records(tmp_path) if "eval_loss" in r)
  assert final["eval_loss"] < first_eval["eval_loss"]


def _counting_host_fetches(monkeypatch, calls: list) -> list:
  """Record the train-step count at every device->host fetch of a jax.Array.

  (On CPU `jax.transfer_guard_device_to_host` has nothing to guard: the arrays are on the
  host already. Every fetch still goes through ArrayImpl._value, so it is counted there.)
  """
  from jax._src import array as jax_array

  fetches, value = [], jax_array.ArrayImpl._value
  monkeypatch.setattr(jax_array.ArrayImpl, "_value",
                      property(lambda self: fetches.append(len(calls)) or value.fget(self)))
  make = trainer.make_train_step

  def counted_step(*args, **kwargs):
    step = make(*args, **kwargs)
    return lambda *a: calls.append(None) or step(*a)

  monkeypatch.setattr(trainer, "make_train_step", counted_step)
  return fetches


@pytest.mark.parametrize("sync_every_step", [False, True])
def test_steps_between_log_steps_never_fetch_from_the_devices(tmp_path, monkeypatch,
                                                              sync_every_step):
  calls = []
  fetches = _counting_host_fetches(monkeypatch, calls)
  if sync_every_step:  # the old loop's float(loss) per step: the count must catch it
    counted = trainer.make_train_step
    monkeypatch.setattr(trainer, "make_train_step", lambda *a, **k: _syncing(counted(*a, **k)))
  config = _config(num_train_steps=10, log_every_steps=5, eval_every_steps=10,
                   checkpoint_every_steps=10, transfer_guard="disallow")
  assert clip.train_and_evaluate(config, tmp_path)["step"] == 10
  between_events = sorted(set(fetches) - {0, 5, 10})
  assert between_events == ([1, 2, 3, 4, 6, 7, 8, 9] if sync_every_step else [])


def _syncing(step):
  """A train step that fetches its loss every step."""
  def run(*args):
    state, step_metrics = step(*args)
    float(step_metrics["loss"])
    return state, step_metrics
  return run


def test_a_learned_temperature_is_saved_and_loaded_with_the_params(tmp_path):
  from snip_jax import load_pretrained
  from snip_jax.train.train_step import CLIP

  config = _config(num_train_steps=4, learnable_temperature=True, checkpoint_every_steps=4,
                   eval_every_steps=4)
  config.optim.lr, config.optim.warmup_updates = 0.05, 1
  clip.train_and_evaluate(config, tmp_path / "run")
  state = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / "4" / "state")
  learned = float(np.asarray(state["log_temperature"]))
  assert abs(learned - np.log(config.model.clip_temperature)) > 1e-3
  model = load_pretrained(tmp_path / "run")
  z_a, z_b = np.random.default_rng(0).normal(size=(2, 3, model.model_cfg.latent_dim))
  np.testing.assert_allclose(model.similarity(z_a, z_b),
                             (z_a @ z_b.T / np.exp(learned)).astype(np.float32), rtol=1e-5)

  config.train.init_from = str(tmp_path / "run")
  model_cfg = trainer.model_config(config, env_config_from(config.env))
  task = trainer.Task(objective=CLIP, batches=None, evaluate=None, eval_metrics=())
  started = trainer._initial_state(config, model_cfg, data_mesh(), task,
                                   trainer.make_optimizer(config.optim)[0])
  assert float(started.log_temperature) == pytest.approx(learned, abs=1e-7)
