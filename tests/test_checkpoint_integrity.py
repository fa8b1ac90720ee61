"""Verified checkpoints: damaged steps fall back (training) or are refused (init_from,
load_pretrained) with one line, converted directories carry checksums, failed restores are quiet."""

import gc
import json
import logging
import pathlib
import random
import re
import shutil
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import snip_jax
from snip_jax.convert import converter
from snip_jax.convert.integrity import (CHECKSUMS_KEY, CorruptCheckpointError, array_checksums,
                                        verify_arrays)
from snip_jax.model import SNIP, init_params
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import clip
from snip_jax.train import checkpoints, trainer
from snip_jax.train.train_step import create_train_state, data_mesh
from tests.test_trainer import TINY_PTH, _assert_same_run, _config, _saved_state

pytestmark = pytest.mark.usefixtures("compilation_cache")

RUN = {"num_train_steps": 4, "checkpoint_every_steps": 2, "eval_every_steps": 2}
NOISE = ("Event loop", "Exception ignored")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 4-step run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("run")
  clip.train_and_evaluate(_config(**RUN), workdir)
  return workdir


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The OCDBT data files of a checkpoint step, largest first."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  assert files, step_dir
  return sorted(files, key=lambda f: f.stat().st_size, reverse=True)


def _flip_bytes(path: pathlib.Path, n: int = 100) -> None:
  """Flip `n` bytes in the middle half of `path`, as a bad disk or transfer would."""
  data, rng = bytearray(path.read_bytes()), random.Random(0)
  for _ in range(n):
    data[rng.randrange(len(data) // 4, 3 * len(data) // 4)] ^= 0xFF
  path.write_bytes(bytes(data))


def _damaged_copy(run, tmp_path, damage) -> pathlib.Path:
  """A copy of the run's workdir with `damage(step_dir)` applied to its latest step (4)."""
  workdir = tmp_path / "workdir"
  shutil.copytree(run, workdir)
  damage(workdir / "checkpoints" / "4")
  return workdir


def _flip_largest(step_dir):
  """Flip bytes in the step's largest data file."""
  _flip_bytes(_data_files(step_dir)[0])


def _truncate_all(step_dir):
  """Cut every data file of the step to half its size."""
  for f in _data_files(step_dir):
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _edit_meta(step_dir, edit):
  """Rewrite the step's `meta` JSON through `edit(meta)`."""
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


def _restore_latest_good(workdir):
  """checkpoints.restore_latest_good into a state built as train_and_evaluate builds it."""
  config = _config(**RUN)
  model_cfg = trainer.model_config(config, env_config_from(config.env))
  optimizer, _ = trainer.make_optimizer(config.optim)
  state = create_train_state(model_cfg, init_params(SNIP(model_cfg), jax.random.key(0)),
                             optimizer, learnable_temperature=config.train.learnable_temperature)
  state = jax.device_put(state, NamedSharding(data_mesh(), P()))
  manager = checkpoints.checkpoint_manager(workdir / "checkpoints", 2, config.eval.best_metric,
                                           clip.EVAL_METRICS)
  try:
    return checkpoints.restore_latest_good(manager, state, workdir)
  finally:
    manager.close()


def _warnings(caplog) -> list[str]:
  """The messages logged at WARNING or above."""
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _set_aside(workdir) -> list[str]:
  """The steps moved to checkpoints_unrestorable/."""
  return [p.name.split("-")[0] for p in (workdir / checkpoints.UNRESTORABLE_DIR).iterdir()]


def test_every_saved_step_records_the_checksums_of_its_arrays(run):
  for step in (2, 4):
    meta = json.loads((run / "checkpoints" / str(step) / "meta" / "metadata").read_text())
    checksums = meta[CHECKSUMS_KEY]
    assert any(p.startswith("params/encoder_f/") for p in checksums)
    assert any(p.startswith("opt_state/") for p in checksums)
    assert checksums == array_checksums(_saved_state(run, step))


def test_flipped_bytes_in_the_latest_step_fall_back_to_the_previous_one(run, tmp_path, caplog):
  workdir = _damaged_copy(run, tmp_path, _flip_largest)
  with caplog.at_level(logging.WARNING):
    final = clip.train_and_evaluate(_config(**RUN), workdir)
  (warning,) = [w for w in _warnings(caplog) if "checkpoint step 4" in w]
  # Here the flips decode to wrong values (caught by the checksums and the NaN check); flips in
  # other places make the restore itself fail. Both fall back the same way.
  assert "is corrupt" in warning or "does not restore" in warning
  assert "moved it to" in warning and warning.endswith("resumed from step 2")
  assert final["step"] == 4 and _set_aside(workdir) == ["4"]
  _assert_same_run(workdir, run, 4)


def test_load_pretrained_and_init_from_refuse_a_flipped_workdir_with_one_line(run, tmp_path):
  workdir = _damaged_copy(run, tmp_path, _flip_largest)
  with pytest.raises(CorruptCheckpointError) as error:
    snip_jax.load_pretrained(workdir)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint step 4 in {workdir / 'checkpoints'} ")
  assert f"Move {workdir / 'checkpoints' / '4'} out of" in message
  config = _config(init_from=str(workdir))
  model_cfg = trainer.model_config(config, env_config_from(config.env))
  with pytest.raises(CorruptCheckpointError, match=f"^{re.escape(message)}$"):
    trainer.initial_params(config, model_cfg, jax.random.key(0))
  assert snip_jax.load_pretrained(run).params  # the intact run loads


def test_a_checksum_mismatch_sets_the_step_aside(run, tmp_path, caplog):
  def change_one(meta):
    path = next(p for p in meta[CHECKSUMS_KEY] if p.startswith("params/encoder_y/"))
    meta[CHECKSUMS_KEY][path] = f"{int(meta[CHECKSUMS_KEY][path], 16) ^ 1:08x}"

  workdir = _damaged_copy(run, tmp_path, lambda d: _edit_meta(d, change_one))
  with caplog.at_level(logging.WARNING):
    state, _, step = _restore_latest_good(workdir)
  assert step == 2 and int(state.step) == 2 and _set_aside(workdir) == ["4"]
  (warning,) = _warnings(caplog)
  assert "checkpoint step 4" in warning and "1 arrays differ from their saved checksums" in warning


def test_truncated_files_fall_back_without_asyncio_noise(run, tmp_path, caplog, capfd,
                                                         monkeypatch):
  unraisable = []  # what would print "Exception ignored ..." / "Event loop is closed"
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  workdir = _damaged_copy(run, tmp_path, _truncate_all)
  with caplog.at_level(logging.WARNING):
    _, _, step = _restore_latest_good(workdir)
  time.sleep(0.5)  # reads still in flight would report now
  gc.collect()  # and coroutines left suspended when collected
  out, err = capfd.readouterr()
  noise = [line for line in (out + err).splitlines() if any(n in line for n in NOISE)]
  noise += [repr(u.exc_value) for u in unraisable]
  assert len(noise) < 20, noise[:5]
  assert step == 2 and _set_aside(workdir) == ["4"]
  (warning,) = _warnings(caplog)
  assert "checkpoint step 4" in warning and "does not restore" in warning


def test_a_checkpoint_without_checksums_restores_with_one_warning(run, tmp_path, caplog):
  workdir = _damaged_copy(run, tmp_path, lambda d: _edit_meta(d, lambda m: m.pop(CHECKSUMS_KEY)))
  with caplog.at_level(logging.WARNING):
    _, meta, step = _restore_latest_good(workdir)
  assert step == 4 and CHECKSUMS_KEY not in meta
  (warning,) = _warnings(caplog)
  assert "checkpoint step 4" in warning and "not verified" in warning


def test_nan_or_inf_in_restored_arrays_is_corrupt():
  tree = {"params": {"w": np.array([1.0, np.nan], np.float32), "b": np.array([np.inf])},
          "step": np.array(3, np.int32)}
  expected = "here is corrupt: 2 arrays hold NaN/inf (params/b, params/w). Fix"
  with pytest.raises(CorruptCheckpointError, match=f"^{re.escape(expected)}$"):
    verify_arrays(tree, array_checksums(tree), "here", "Fix")


def test_converted_directories_are_verified(tmp_path, caplog):
  converted = converter.convert_pth(TINY_PTH, tmp_path / "converted")
  config = json.loads((converted / converter.CONFIG_FILE).read_text())
  _, _, params = converter.load_converted(converted)
  assert config[CHECKSUMS_KEY] == array_checksums(params)

  del config[CHECKSUMS_KEY]  # as converted before checksums were recorded
  (converted / converter.CONFIG_FILE).write_text(json.dumps(config))
  with caplog.at_level(logging.WARNING):
    converter.load_converted(converted)
  (warning,) = _warnings(caplog)
  assert f"converted checkpoint {converted} has no checksums" in warning

  converted = converter.convert_pth(TINY_PTH, tmp_path / "converted", overwrite=True)
  files = [f for f in (converted / converter.PARAMS_DIR / "encoder_f").rglob("*")
           if f.is_file() and f.parent.name == "d"]
  _flip_bytes(max(files, key=lambda f: f.stat().st_size))
  with pytest.raises(CorruptCheckpointError) as error:
    snip_jax.load_pretrained(converted)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"the converted checkpoint {converted} ")
  assert message.endswith("Convert the .pth again: python -m snip_jax.convert --pth FILE --out"
                          " DIR --overwrite")
