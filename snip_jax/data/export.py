"""`data.prefix` corpora: export, reload, resume, and a dedup + train/valid/test split.

The JSONL layout is the original SNIP export's, field for field (info fields as strings, then
`x_to_fit`/`y_to_fit` as `%.{float_precision}e` strings, the `tree` prefix with raw float
constants, `skeleton_tree_encoded`, and `target_property` for property corpora), so files move
both ways between this project and the original. An optional `data.infix` holds line i's
infix on line i; it is a separate file because the original's reader turns every unknown
field of a data.prefix line into an int.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Iterator, Optional, Sequence

import numpy as np
from absl import logging

from snip_jax import __version__, checks
from snip_jax.data.batching import check_sample
from snip_jax.data.stream import mapped_stream
from snip_jax.errors import UserError
from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.symbolic.generator import Sample
from snip_jax.symbolic.tokenizers import encode_prefix
from snip_jax.symbolic.trees import parse_prefix

INFO_FIELDS = ("n_input_points", "n_unary_ops", "n_binary_ops", "d_in", "d_out",
               "input_distribution_type", "n_centroids")
_NON_INFO_FIELDS = frozenset(("x_to_fit", "y_to_fit", "x_to_predict", "y_to_predict", "tree",
                              "tree_encoded", "skeleton_tree_encoded", "target_property"))
PREFIX_FILE = "data.prefix"
INFIX_FILE = "data.infix"
META_FILE = "export_meta.json"
SCAN_LIMIT_BYTES = 100 * 2**20  # validation reads corpora up to this size in full (~10 s)


# ---------------------------------------------------------------------------------------------
# Lines
# ---------------------------------------------------------------------------------------------


def _format_points(values: np.ndarray, precision: int) -> list[list[str]]:
  fmt = f"%.{precision}e"
  return [[fmt % v for v in row] for row in np.asarray(values).tolist()]


def sample_to_record(sample: Sample, cfg: EnvConfig) -> dict:
  """The original export's JSON object for one sample, in its key order."""
  record = {name: str(sample.infos[name]) for name in INFO_FIELDS}
  record["x_to_fit"] = _format_points(sample.x, cfg.float_precision)
  record["y_to_fit"] = _format_points(sample.y, cfg.float_precision)
  record["tree"] = sample.tree.prefix()
  record["skeleton_tree_encoded"] = list(sample.skeleton_tree_encoded)
  if sample.target_property is not None:
    record["target_property"] = float(sample.target_property)
  return record


def samples_to_lines(samples: Sequence[Sample], *, cfg: EnvConfig,
                     with_infix: bool) -> list[tuple[str, Optional[str]]]:
  """(`data.prefix` line, `data.infix` line or None) per sample, newline-terminated."""
  out = []
  for sample in samples:
    prefix_line = json.dumps(sample_to_record(sample, cfg)) + "\n"
    out.append((prefix_line, sample.tree.infix() + "\n" if with_infix else None))
  return out


# ---------------------------------------------------------------------------------------------
# Reload
# ---------------------------------------------------------------------------------------------


class ExportInterrupted(Exception):
  """The export stopped on SIGINT/SIGTERM after writing whole lines; rerun to resume."""

  def __init__(self, message: str, signal_name: str):
    super().__init__(message)
    self.signal_name = signal_name


class CorpusError(UserError):
  """A data.prefix line that cannot be read; the message names the file and line."""


def record_to_sample(record: dict, cfg: EnvConfig) -> Sample:
  """A Sample from one data.prefix object, as the original's `read_sample` interprets it."""
  x = np.array([[float(v) for v in row] for row in record["x_to_fit"]], dtype=np.float64)
  y = np.array([[float(v) for v in row] for row in record["y_to_fit"]], dtype=np.float64)
  tree = parse_prefix(record["tree"])
  infos = {k: int(v) for k, v in record.items() if k not in _NON_INFO_FIELDS}
  target = record.get("target_property")
  return Sample(tree=tree, tree_encoded=encode_prefix(tree.prefix_list(), cfg),
                skeleton_tree_encoded=list(record["skeleton_tree_encoded"]), x=x, y=y,
                infos=infos, target_property=None if target is None else float(target))


def _open_text(path: pathlib.Path):
  if path.suffix == ".gz":
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def read_corpus(path: str | os.PathLike, env_cfg: EnvConfig, *, points: bool = True,
                require_target: bool = False) -> Iterator[Sample]:
  """Samples of a data.prefix file (ours or the original's, optionally .gz).

  Every sample is checked against `env_cfg` as `collate` would: its equation tokens and, with
  `points`, its x/y (columns, count, NaN/inf); `require_target` also wants a
  target_property. Errors name file:line.
  """
  path = pathlib.Path(path)
  with _open_text(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.endswith("\n"):
        raise CorpusError(f"{path}:{lineno}: truncated last line (no newline); an export was"
                          " interrupted mid-write: resume the export to repair it")
      try:
        sample = record_to_sample(json.loads(line), env_cfg)
        check_sample(sample, env_cfg, points)
      except (ValueError, KeyError, TypeError) as err:
        problem = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise CorpusError(f"{path}:{lineno}: cannot read this data.prefix line: {problem}") from None
      if require_target and sample.target_property is None:
        raise CorpusError(f"{path}:{lineno} has no target_property: export property data with"
                          " env.is_proppred=True (configs/export.py:ncr, upward, yavg or oscil)")
      yield sample


def scan_corpus(path: str | os.PathLike, env_cfg: EnvConfig, *, points: bool = True,
                require_target: bool = False,
                limit_bytes: int = SCAN_LIMIT_BYTES) -> Optional[int]:
  """Read a corpus of at most `limit_bytes` in full (CorpusError at file:line); its samples.

  `points` and `require_target` are read_corpus's. None for a larger file: read_corpus
  checks its lines (naming file:line too) as training reads them.
  """
  path = pathlib.Path(path)
  if path.stat().st_size > limit_bytes:
    logging.info("%s is over %d MB: its lines are checked as training reads them", path,
                 limit_bytes >> 20)
    return None
  n = sum(1 for _ in read_corpus(path, env_cfg, points=points, require_target=require_target))
  if not n:
    raise CorpusError(f"{path} is empty: it holds no samples")
  return n


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


def env_config_from(config_env) -> EnvConfig:
  """An EnvConfig from an ml_collections sub-config (or any mapping) of original names."""
  values = dict(config_env.to_dict() if hasattr(config_env, "to_dict") else config_env)
  return default_env_config(**values)


def export_corpus(workdir: str | os.PathLike, env_cfg: EnvConfig, *, n_samples: int,
                  seed: int = 0, chunk_size: int = 64, num_workers: int = 0,
                  write_infix: bool = False, log_every_s: float = 5.0,
                  chunk_timeout_s: Optional[float] = None) -> pathlib.Path:
  """Write (or complete) `workdir/data.prefix` with the first `n_samples` of the stream.

  Resumable: rerunning after an interruption, or with a larger `n_samples`, appends exactly
  the missing lines, byte-identical to an uninterrupted run.
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
  fn = functools.partial(samples_to_lines, cfg=env_cfg, with_infix=write_infix)
  stream = mapped_stream(env_cfg, fn, seed=seed, chunk_size=chunk_size, num_workers=num_workers,
                         start_chunk=done // chunk_size,
                         end_chunk=math.ceil(n_samples / chunk_size),
                         chunk_timeout_s=chunk_timeout_s)
  progress = _Progress(done, n_samples, log_every_s)
  position = (done // chunk_size) * chunk_size
  with _StopOnSignal() as stop, \
      open(prefix_path, "a", encoding="utf-8") as prefix_file, \
      open(workdir / INFIX_FILE, "a", encoding="utf-8") if write_infix else _nothing() as infix_file:
    for chunk in stream:
      lines = chunk.payload[max(0, done - position):n_samples - position]
      position += chunk_size
      prefix_file.write("".join(p for p, _ in lines))
      prefix_file.flush()
      if infix_file is not None:
        infix_file.write("".join(i for _, i in lines))
        infix_file.flush()
      done += len(lines)
      progress.update(done, chunk.stats)
      if stop.requested:
        stream.close()
        raise ExportInterrupted(
            f"stopped by {stop.requested} with {done}/{n_samples} samples in"
            f" {prefix_path}; rerun the same command to resume", stop.requested)
  progress.finish(prefix_path)
  return prefix_path


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


class _nothing:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
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
  if not ex.log_every_s > 0 or ex.chunk_timeout_s < 0:
    raise UserError(f"export.log_every_s must be > 0 and export.chunk_timeout_s >= 0 (0: no"
                    f" limit), got {ex.log_every_s} and {ex.chunk_timeout_s}")
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
                       write_infix=ex.write_infix, log_every_s=ex.log_every_s,
                       chunk_timeout_s=ex.chunk_timeout_s or None)
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
