"""`data.prefix` corpora: resumable export, and a dedup + train/valid/test split.

The format is data/corpus.py's (the original's JSONL); the samples come from the input
pipeline's generated chunks (data/pipeline.py), in this process or in worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import signal
import threading
import time

import numpy as np
from absl import logging

from snip_jax import __version__, checks
from snip_jax.data import pipeline
from snip_jax.data.corpus import INFIX_FILE, PREFIX_FILE, CorpusError
from snip_jax.errors import UserError
from snip_jax.symbolic.config import EnvConfig, env_config_from

META_FILE = "export_meta.json"


class ExportInterrupted(Exception):
  """The export stopped on SIGINT/SIGTERM after writing whole lines; rerun to resume."""

  def __init__(self, message: str, signal_name: str):
    super().__init__(message)
    self.signal_name = signal_name

# ---------------------------------------------------------------------------------------------
# Resumable writing
# ---------------------------------------------------------------------------------------------


def count_complete_lines(path: pathlib.Path, repair: bool) -> int:
  """Complete lines in `path`; with `repair`, cut a torn last line left by a killed export."""
  if not path.exists():
    return 0
  complete_bytes = 0
  count = 0
  with open(path, "rb") as f:
    for line in f:
      if not line.endswith(b"\n"):
        break
      complete_bytes += len(line)
      count += 1
  if repair and path.stat().st_size != complete_bytes:
    logging.warning("%s: removing a torn last line (%d bytes) from an interrupted export",
                    path, path.stat().st_size - complete_bytes)
    with open(path, "r+b") as f:
      f.truncate(complete_bytes)
  return count


def _truncate_lines(path: pathlib.Path, n_lines: int) -> None:
  """Keep only the first `n_lines` lines of `path`."""
  size = 0
  with open(path, "rb") as f:
    for _ in range(n_lines):
      size += len(f.readline())
  with open(path, "r+b") as f:
    f.truncate(size)


@dataclasses.dataclass(frozen=True)
class ExportPlan:
  """Where the stream starts and what it must be: resuming must continue the same stream."""

  seed: int
  chunk_size: int
  env: dict

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


def prepare_workdir(workdir: pathlib.Path, plan: ExportPlan, with_infix: bool) -> int:
  """Create or resume an export in `workdir`; returns how many samples are already there."""
  workdir.mkdir(parents=True, exist_ok=True)
  meta_path = workdir / META_FILE
  prefix_path = workdir / PREFIX_FILE
  if meta_path.exists():
    previous = json.loads(meta_path.read_text())
    previous.pop("snip_jax_version", None)  # what wrote it, not the stream: any version resumes
    if previous != plan.as_json():
      changed = sorted(k for k in set(previous) | set(plan.as_json())
                       if previous.get(k) != plan.as_json().get(k))
      raise UserError(
          f"{workdir} holds an export made with different settings ({', '.join(changed)});"
          " resuming would mix two streams. Use a new workdir or the original settings.")
  elif prefix_path.exists():
    raise UserError(f"{prefix_path} exists but {META_FILE} does not: it was not written by this"
                    " exporter, so it cannot be resumed. Use a new workdir.")
  else:
    meta_path.write_text(json.dumps({**plan.as_json(), "snip_jax_version": __version__},
                                    indent=1) + "\n")
  done = count_complete_lines(prefix_path, repair=True)
  infix_path = workdir / INFIX_FILE
  if with_infix:
    done_infix = count_complete_lines(infix_path, repair=True)
    if infix_path.exists() and done_infix != done:
      done = min(done, done_infix)
      _truncate_lines(prefix_path, done)
      _truncate_lines(infix_path, done)
    elif not infix_path.exists() and done:
      raise UserError(f"{prefix_path} has {done} lines but {INFIX_FILE} is missing; resume"
                      " with write_infix=False or start a new workdir")
  return done


def export_corpus(workdir: str | os.PathLike, env_cfg: EnvConfig, *, n_samples: int,
                  seed: int = 0, chunk_size: int = 64, num_workers: int = 0,
                  write_infix: bool = False, log_every_s: float = 5.0) -> pathlib.Path:
  """Write (or complete) `workdir/data.prefix` with the first `n_samples` of the stream.

  Resumable: rerunning after an interruption, or with a larger `n_samples`, appends exactly
  the missing lines, byte-identical to an uninterrupted run (and to files written by earlier
  versions with the same settings: chunk c is generated from the seeds [seed, c]).
  """
  workdir = pathlib.Path(workdir)
  plan = ExportPlan(seed=seed, chunk_size=chunk_size, env=dataclasses.asdict(env_cfg))
  done = prepare_workdir(workdir, plan, write_infix)
  prefix_path = workdir / PREFIX_FILE
  if done >= n_samples:
    logging.info("%s already has %d samples (asked for %d); nothing to do", prefix_path, done,
                 n_samples)
    return prefix_path
  logging.info("exporting samples %d..%d to %s with %d worker(s)", done, n_samples, prefix_path,
               num_workers)
  chunks = pipeline.generated_chunks(env_cfg, seed=seed, chunk_size=chunk_size,
                                     with_infix=write_infix)
  first_chunk = done // chunk_size
  with pipeline.iterate(chunks, start=first_chunk, stop=math.ceil(n_samples / chunk_size),
                        num_workers=num_workers) as stream:
    done = _write_chunks(stream, workdir, done, n_samples, first_chunk * chunk_size,
                         _Progress(done, n_samples, log_every_s))
  return prefix_path


def _write_chunks(stream, workdir: pathlib.Path, done: int, n_samples: int, position: int,
                  progress: "_Progress") -> int:
  """Append the chunks' lines past `done` (up to `n_samples`); stop cleanly on a signal.

  `position` is the stream index of the first chunk's first sample.
  """
  prefix_path = workdir / PREFIX_FILE
  with _StopOnSignal() as stop, open(prefix_path, "a", encoding="utf-8") as prefix_file:
    for chunk_lines, stats in stream:
      lines = chunk_lines[max(0, done - position):n_samples - position]
      position += len(chunk_lines)
      prefix_file.write("".join(p for p, _ in lines))
      prefix_file.flush()
      if lines and lines[0][1] is not None:
        with open(workdir / INFIX_FILE, "a", encoding="utf-8") as infix_file:
          infix_file.write("".join(i for _, i in lines))
      done += len(lines)
      progress.update(done, stats)
      if stop.requested:
        raise ExportInterrupted(
            f"stopped by {stop.requested} with {done}/{n_samples} samples in"
            f" {prefix_path}; rerun the same command to resume", stop.requested)
  progress.finish(prefix_path)
  return done


class _StopOnSignal:
  """SIGINT/SIGTERM request a stop after the current chunk instead of interrupting a write.

  A second signal interrupts at once (a torn last line is then repaired on resume).
  """

  def __init__(self):
    self.requested = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.requested is not None:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    logging.warning("%s received: finishing the current chunk, then stopping", self.requested)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False


class _Progress:
  """Periodic progress lines: count, rate, ETA and the generator's acceptance rate."""

  def __init__(self, start: int, total: int, every_s: float):
    self.start, self.total, self.every_s = start, total, every_s
    self.t0 = self.last = time.monotonic()
    self.attempts = self.accepted = 0

  def update(self, done: int, stats) -> None:
    self.attempts += stats.get("attempts", 0)
    self.accepted += stats.get("accepted", 0)
    now = time.monotonic()
    if now - self.last >= self.every_s or done >= self.total:
      rate = (done - self.start) / max(now - self.t0, 1e-9)
      eta = (self.total - done) / rate if rate > 0 else float("inf")
      logging.info("exported %d/%d samples | %.1f samples/s | ETA %.0fs | accepted %.1f%% of"
                   " trees", done, self.total, rate, eta,
                   100.0 * self.accepted / max(self.attempts, 1))
      self.last = now
    self.done = done

  def finish(self, path) -> None:
    seconds = time.monotonic() - self.t0
    logging.info("done: %s has %d samples (%d new in %.1fs)", path, self.done,
                 self.done - self.start, seconds)


# ---------------------------------------------------------------------------------------------
# Dedup + split
# ---------------------------------------------------------------------------------------------


def _equation_key(record: dict, key: str) -> str:
  if key == "tree":
    return record["tree"]
  if key == "skeleton":
    return ",".join(record["skeleton_tree_encoded"])
  raise ValueError(f"unknown dedup key {key!r}; use 'tree' or 'skeleton'")


def split_corpus(path: str | os.PathLike, out_dir: str | os.PathLike, *, n_valid: int,
                 n_test: int, seed: int = 0, key: str = "tree") -> dict[str, int]:
  """Deduplicate a data.prefix by equation and split it into train/valid/test files.

  Each distinct equation (`key`: the `tree` prefix, or the skeleton) is kept once, so no
  valid or test equation can appear in train. Valid/test equations are drawn at random
  with `seed`. Writes `data.prefix.{train,valid,test}` in `out_dir`; returns line counts.
  """
  path, out_dir = pathlib.Path(path), pathlib.Path(out_dir)
  first_offsets = _first_occurrences(path, key)
  n_unique = len(first_offsets)
  if n_valid + n_test > n_unique:
    raise ValueError(f"{path} has {n_unique} distinct equations; cannot take {n_valid} valid +"
                     f" {n_test} test")
  order = np.random.default_rng(seed).permutation(n_unique)
  split_of = np.zeros(n_unique, dtype=np.int8)
  split_of[order[:n_valid]] = 1
  split_of[order[n_valid:n_valid + n_test]] = 2
  names = ("train", "valid", "test")
  out_dir.mkdir(parents=True, exist_ok=True)
  counts = dict.fromkeys(names, 0)
  files = [open(out_dir / f"{PREFIX_FILE}.{n}", "w", encoding="utf-8") for n in names]
  try:
    with open(path, "rb") as src:
      for index, offset in enumerate(first_offsets):
        src.seek(offset)
        files[split_of[index]].write(src.readline().decode("utf-8"))
        counts[names[split_of[index]]] += 1
  finally:
    for f in files:
      f.close()
  logging.info("split %s: %d lines, %d distinct equations -> %s", path, _n_lines(path), n_unique,
               counts)
  return counts


def _first_occurrences(path: pathlib.Path, key: str) -> list[int]:
  """Byte offsets of the first line of each distinct equation, in file order."""
  seen: set[bytes] = set()
  offsets = []
  offset = 0
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
        digest = hashlib.blake2b(_equation_key(record, key).encode(), digest_size=16).digest()
      except (ValueError, KeyError) as err:
        raise CorpusError(f"{path}:{lineno}: cannot read this data.prefix line: {err}") from None
      if digest not in seen:
        seen.add(digest)
        offsets.append(offset)
      offset += len(line)
  return offsets


def _n_lines(path: pathlib.Path) -> int:
  with open(path, "rb") as f:
    return sum(1 for _ in f)


# ---------------------------------------------------------------------------------------------
# The job launched from launch.py
# ---------------------------------------------------------------------------------------------


def validate_config(config, workdir: str) -> None:
  """Check the export options and the workdir before anything is written (UserError if wrong)."""
  checks.workdir(workdir)
  ex = config.export
  checks.at_least(1, ex, "export", "n_samples", "chunk_size")
  checks.at_least(0, ex, "export", "num_workers", "n_valid", "n_test")
  checks.one_of(ex.dedup_key, ("tree", "skeleton"), "export.dedup_key")
  if not ex.log_every_s > 0:
    raise UserError(f"export.log_every_s must be > 0, got {ex.log_every_s}")
  if ex.n_valid + ex.n_test > ex.n_samples:
    raise UserError(f"export.n_valid + export.n_test ({ex.n_valid} + {ex.n_test}) exceed"
                    f" export.n_samples ({ex.n_samples})")
  if ex.tfds and not (ex.n_valid or ex.n_test):
    raise UserError("export.tfds writes the train/valid/test split: set export.n_test (and/or"
                    " export.n_valid) > 0")
  with checks.as_user_error():
    env_config_from(config.env)


def run_export(config, workdir: str) -> pathlib.Path:
  """`launch.py` entry point: export `config.export.n_samples`, then split if asked."""
  env_cfg = env_config_from(config.env)
  ex = config.export
  path = export_corpus(workdir, env_cfg, n_samples=ex.n_samples, seed=config.seed,
                       chunk_size=ex.chunk_size, num_workers=ex.num_workers,
                       write_infix=ex.write_infix, log_every_s=ex.log_every_s)
  if ex.n_valid or ex.n_test:
    split_dir = pathlib.Path(workdir) / "split"
    counts = split_corpus(path, split_dir, n_valid=ex.n_valid, n_test=ex.n_test,
                          seed=config.seed, key=ex.dedup_key)
    if ex.tfds:
      from snip_jax.data.tfds_corpus import build_tfds_corpus  # pylint: disable=g-import-not-at-top

      splits = {s: split_dir / f"{PREFIX_FILE}.{s}" for s, n in counts.items() if n}
      corpus = build_tfds_corpus(splits, pathlib.Path(workdir) / "tfds", env_cfg)
      logging.info("TFDS copy of the split: %s", corpus.data_dir)
  return path
