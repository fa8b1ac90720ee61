"""The one Grain input pipeline: same batches whatever the workers, for every source; exports
byte-identical to the previous version's; a killed worker is a clear error and a rerun resumes.

Fixtures written by the code before the Grain pipeline (commit e13bbfd, data/pool.py):
`generated_batches_v0.json` (fingerprints of generated training batches, 1 and 2 processes;
writer: generated_batches_v0.py beside it) and `export_v0/` (a data.prefix + data.infix export
with 2 workers; writer: export_v0/make_fixture.py).
"""

import hashlib
import json
import os
import pathlib
import shutil
import threading
import time

import jax
import numpy as np
import pytest

from snip_jax.data import export, pipeline
from snip_jax.data.corpus import INFIX_FILE, PREFIX_FILE
from snip_jax.symbolic.config import default_env_config
from snip_jax.tasks import clip
from tests.test_trainer import _config

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
EXPORT_V0 = FIXTURES / "export_v0"
BATCHES_V0 = json.loads((FIXTURES / "generated_batches_v0.json").read_text())


def _digest(batch: dict) -> str:
  """A fingerprint of a batch: keys, dtypes, shapes and bytes (as the fixture's writer)."""
  h = hashlib.sha256()
  for key in sorted(batch):
    array = np.ascontiguousarray(batch[key])
    for part in (key, str(array.dtype), str(array.shape)):
      h.update(part.encode())
    h.update(array.tobytes())
  return h.hexdigest()


def _read(ds, num_workers, start=0, stop=None):
  """Fingerprints of ds[start:stop] read with `num_workers` processes."""
  with pipeline.iterate(ds, start=start, stop=stop, num_workers=num_workers) as batches:
    return [_digest(b) for b in batches]


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_generated_batches_equal_the_previous_versions_whatever_the_workers(num_workers):
  cfg = default_env_config(**BATCHES_V0["env"])
  for key, expected in BATCHES_V0["batches"].items():
    index, count = map(int, key.split("of"))
    ds = pipeline.generated_batches(cfg, seed=BATCHES_V0["seed"],
                                    batch_size=BATCHES_V0["batch_size"],
                                    process_index=index, process_count=count)
    assert _read(ds, num_workers, start=1, stop=4) == expected[1:]


@pytest.fixture(scope="module")
def corpus_sources(tmp_path_factory):
  """The export_v0 corpus as in-memory samples and as a built ArrayRecord split."""
  from snip_jax.data.tfds_corpus import build_tfds_corpus, corpus_source

  cfg = default_env_config(**json.loads((EXPORT_V0 / "settings.json").read_text())["env"])
  data_dir = tmp_path_factory.mktemp("tfds")
  build_tfds_corpus({"train": EXPORT_V0 / PREFIX_FILE}, data_dir, cfg)
  return cfg, pipeline.corpus_samples(EXPORT_V0 / PREFIX_FILE, cfg), corpus_source(
      data_dir, "train", cfg)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_corpus_batches_are_the_same_whatever_the_workers_and_source(corpus_sources,
                                                                     num_workers):
  cfg, samples, source = corpus_sources
  jsonl = pipeline.corpus_batches(samples, 8, seed=3, env_cfg=cfg, shard_index=1, shard_count=2)
  tfds = pipeline.corpus_batches(source, 8, seed=3, shard_index=1, shard_count=2)
  expected = _read(jsonl, 0, start=2, stop=9)  # spans an epoch boundary (45 rows per shard)
  assert _read(jsonl, num_workers, start=2, stop=9) == expected
  assert _read(tfds, num_workers, start=2, stop=9) == expected
  other_seed = pipeline.corpus_batches(samples, 8, seed=4, env_cfg=cfg, shard_index=1,
                                       shard_count=2)
  assert _read(other_seed, 0, start=2, stop=9) != expected


def _copy_torn_export(workdir: pathlib.Path, n_prefix: int, n_infix: int) -> None:
  """export_v0's first lines (a torn last data.prefix line) and its meta, as a killed export."""
  workdir.mkdir()
  shutil.copy(EXPORT_V0 / export.META_FILE, workdir)
  prefix = (EXPORT_V0 / PREFIX_FILE).read_text().splitlines(True)
  (workdir / PREFIX_FILE).write_text("".join(prefix[:n_prefix]) + prefix[n_prefix][:50])
  infix = (EXPORT_V0 / INFIX_FILE).read_text().splitlines(True)
  (workdir / INFIX_FILE).write_text("".join(infix[:n_infix]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_export_resumes_a_previous_versions_file_byte_identically(tmp_path, num_workers):
  settings = json.loads((EXPORT_V0 / "settings.json").read_text())
  workdir = tmp_path / "export"
  _copy_torn_export(workdir, 37, 40)
  export.export_corpus(workdir, default_env_config(**settings["env"]),
                       n_samples=settings["n_samples"], seed=settings["seed"],
                       chunk_size=settings["chunk_size"], num_workers=num_workers,
                       write_infix=True)
  for name in (PREFIX_FILE, INFIX_FILE):
    assert (workdir / name).read_bytes() == (EXPORT_V0 / name).read_bytes()


def _worker_pids() -> list[int]:
  """Live spawned child processes of this process (Grain's workers, not the resource tracker)."""
  pids = []
  for entry in pathlib.Path("/proc").iterdir():
    if entry.name.isdigit():
      try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        spawned = b"spawn_main" in (entry / "cmdline").read_bytes()
      except OSError:
        continue
      if int(fields[1]) == os.getpid() and fields[0] != "Z" and spawned:
        pids.append(int(entry.name))
  return pids


def _kill_a_worker_after(metrics_file: pathlib.Path, step: int, killed: list) -> None:
  """Wait until `step` is logged, then SIGKILL one data worker."""
  deadline = time.time() + 120
  while time.time() < deadline:
    logged = metrics_file.read_text().count('"loss"') if metrics_file.exists() else 0
    pids = _worker_pids()
    if logged >= step and pids:
      os.kill(pids[0], 9)
      killed.append(pids[0])
      return
    time.sleep(0.02)


def _final_params(workdir: pathlib.Path):
  """The params of the workdir's latest checkpoint."""
  from snip_jax.train.checkpoints import CHECKPOINT_DIR, latest_checkpoint

  return latest_checkpoint(workdir / CHECKPOINT_DIR)[0]


def test_a_killed_worker_is_a_clear_error_and_a_rerun_ends_like_an_uninterrupted_run(tmp_path):
  steps = dict(num_train_steps=24, checkpoint_every_steps=3, eval_every_steps=100,
               prefetch_batches=1)
  clip.train_and_evaluate(_config(**steps), tmp_path / "uninterrupted")
  workdir, killed = tmp_path / "killed", []
  watcher = threading.Thread(target=_kill_a_worker_after,
                             args=(workdir / "metrics.jsonl", 4, killed))
  watcher.start()
  with pytest.raises(pipeline.DataPipelineError,
                     match=r"while reading batch \d+: .*Rerun the same command"):
    clip.train_and_evaluate(_config(num_workers=1, **steps), workdir)
  watcher.join()
  assert killed
  final = clip.train_and_evaluate(_config(num_workers=1, **steps), workdir)
  assert final["step"] == 24
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir),
               _final_params(tmp_path / "uninterrupted"))
