"""Building an equation index: read a source in chunks, keep each skeleton's first equation,
embed the new ones with encoder_f (batched, jitted: `Pretrained.embed_equations`), append them
to the shards and commit every `commit_every_s` seconds.

Resumable and appendable: the manifest records how many items of each source were consumed, so
rerunning the same build continues where the last commit left it (an interrupted build ends
as an uninterrupted one would), a larger limit extends the stream, and another source appends
its new skeletons to the same index. A build killed at any moment loses at most the work since
its last commit.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Optional

import numpy as np
from absl import logging

from snip_jax.retrieval import store
from snip_jax.retrieval.search import scoring_form
from snip_jax.retrieval.sources import n_variables, skeleton_keys
from snip_jax.symbolic.generator import skeleton
from snip_jax.symbolic.trees import parse_prefix

DEFAULT_SHARD_SIZE = 65_536
EQUATION_BUCKET = 32  # equation columns are cut to a multiple of this (as training does)
_MERGE_EVERY = 1 << 20  # recent keys kept in a set before they are merged into the sorted array


class SkeletonSet:
  """The skeleton keys seen so far: a sorted uint64 array and a set of recent keys (10M keys
  take ~80 MB, not the ~1 GB of a Python set)."""

  def __init__(self, keys: np.ndarray):
    self._sorted = np.unique(keys.astype(np.uint64))
    self._recent: set[int] = set()

  def first_seen(self, keys: np.ndarray) -> np.ndarray:
    """Which keys are new (not seen before, nor earlier in `keys`); records them as seen."""
    keys = keys.astype(np.uint64)
    pos = np.minimum(np.searchsorted(self._sorted, keys), max(len(self._sorted) - 1, 0))
    known = (self._sorted[pos] == keys) if len(self._sorted) else np.zeros(len(keys), bool)
    new = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys.tolist()):
      if not known[i] and key not in self._recent:
        self._recent.add(key)
        new[i] = True
    if len(self._recent) >= _MERGE_EVERY:
      self._sorted = np.union1d(self._sorted, np.fromiter(self._recent, np.uint64))
      self._recent.clear()
    return new


class _Writer:
  """Appends rows to an index: reopens its last partial shard, writes full shards as they fill,
  and commits (shard files, then the manifest) on request."""

  def __init__(self, directory: pathlib.Path, manifest: dict):
    self.directory, self.manifest = directory, manifest
    self.shard_size = manifest["shard_size"]
    counts = [s["count"] for s in manifest["shards"]]
    reopen = bool(counts) and counts[-1] < self.shard_size
    self.first_open = len(counts) - 1 if reopen else len(counts)
    latent_dim = manifest["model"]["latent_dim"]
    self.rows = (store.Index(directory).rows(self.first_open) if reopen
                 else store.ShardRows.empty(latent_dim))
    self.dirty = False

  @property
  def n_entries(self) -> int:
    """Entries in the index, committed or not."""
    return self.first_open * self.shard_size + len(self.rows)

  def append(self, rows: store.ShardRows) -> None:
    """Add rows to the open shard (written at the next commit)."""
    self.rows.extend(rows)
    self.dirty = self.dirty or len(rows) > 0

  def commit(self, record: dict, consumed: int, added: int) -> None:
    """Write the new rows, then the manifest with `record`'s progress (the commit point)."""
    if self.dirty:
      shards = self.manifest["shards"][:self.first_open]
      while len(self.rows) >= self.shard_size:
        full, self.rows = self.rows.split(self.shard_size)
        store.write_shard(self.directory, len(shards), full)
        shards.append({"count": len(full)})
      if len(self.rows):
        store.write_shard(self.directory, len(shards), self.rows)
      self.first_open = len(shards)
      self.manifest["shards"] = shards + ([{"count": len(self.rows)}] if len(self.rows) else [])
    record.update(consumed=consumed, added=record.get("added", 0) + added)
    store.write_json(self.directory / store.MANIFEST_FILE, self.manifest)
    self.dirty = False


def _open_manifest(directory: pathlib.Path, model, model_path: str, shard_size: int) -> dict:
  """The index's manifest, checked against `model`; a new one for an empty directory."""
  if (directory / store.MANIFEST_FILE).exists():
    index = store.Index(directory)
    index.check_model(model)
    store.remove_uncommitted(directory, len(index.counts))
    return index.manifest
  store.remove_uncommitted(directory, 0)
  return store.new_manifest(model, model_path, shard_size)


@dataclasses.dataclass
class BuildSummary:
  """What a build did: the index, its size, and this source's progress."""

  directory: str
  n_entries: int
  added: int  # entries this run added
  consumed: int  # items of this source read so far (all runs)
  duplicates: int  # items this run skipped: their skeleton was already in the index
  seconds: float


def _embed(model, exprs: list) -> np.ndarray:
  """encoder_f latents in the given order, computed shortest first: batches of similar length
  are cut to little padding (`equation_bucket`)."""
  order = np.argsort([len(e) for e in exprs], kind="stable")
  latents = model.embed_equations([exprs[i] for i in order], equation_bucket=EQUATION_BUCKET)
  out = np.empty_like(latents)
  out[order] = latents
  return out


def new_rows(model, prefixes: list[str], seen: SkeletonSet) -> tuple[store.ShardRows, int]:
  """The rows of the equations whose skeleton is new, embedded; and how many were skipped."""
  exprs = [parse_prefix(p) for p in prefixes]
  skeletons = [skeleton(e) for e in exprs]
  new = seen.first_seen(skeleton_keys(skeletons))
  keep = np.flatnonzero(new)
  latent_dim = model.model_cfg.latent_dim
  if not len(keep):
    return store.ShardRows.empty(latent_dim), len(prefixes)
  latents = scoring_form(_embed(model, [exprs[i] for i in keep]),
                         model.model_cfg.normalize_latents)
  lines = [json.dumps({"equation": prefixes[i], "skeleton": skeletons[i]}) for i in keep]
  rows = store.ShardRows(latents, skeleton_keys([skeletons[i] for i in keep]),
                         np.array([n_variables(exprs[i]) for i in keep], np.int16), lines)
  return rows, len(prefixes) - len(keep)


def build_index(directory, model, source, *, model_path: str = "",
                shard_size: int = DEFAULT_SHARD_SIZE, commit_every_s: float = 30.0,
                log_every_s: float = 5.0) -> BuildSummary:
  """Add `source`'s equations (one per new skeleton) to the index in `directory` (created if
  needed); refuses an index built with another model. Returns what was done."""
  directory = pathlib.Path(directory).absolute()
  if (directory / store.MANIFEST_FILE).exists():
    store.Index(directory).check_model(model)  # before anything is written, even the lock file
  with store.build_lock(directory):
    manifest = _open_manifest(directory, model, model_path, shard_size)
    record = store.find_source(manifest, source.identity)
    if record is None:
      record = {"identity": source.identity, "consumed": 0, "added": 0}
      manifest["sources"].append(record)
    writer = _Writer(directory, manifest)
    return _run(writer, model, source, record, commit_every_s,
                _Progress(record["consumed"], getattr(source, "limit", None), log_every_s))


def _run(writer: _Writer, model, source, record: dict, commit_every_s: float,
         progress: "_Progress") -> BuildSummary:
  """The build loop: chunks -> new rows -> appended; a commit every `commit_every_s`."""
  seen = SkeletonSet(store.Index(writer.directory).all_keys() if writer.manifest["shards"]
                     else np.zeros(0, np.uint64))
  consumed, added, pending, last_commit = record["consumed"], 0, 0, time.monotonic()
  with source.chunks(consumed) as chunks:
    for prefixes in chunks:
      rows, skipped = new_rows(model, prefixes, seen)
      writer.append(rows)
      consumed, added, pending = consumed + len(prefixes), added + len(rows), pending + len(rows)
      progress.update(consumed, writer.n_entries, skipped)
      if time.monotonic() - last_commit >= commit_every_s:
        writer.commit(record, consumed, pending)
        pending, last_commit = 0, time.monotonic()
  writer.commit(record, consumed, pending)
  progress.finish(writer.directory, writer.n_entries, added)
  return BuildSummary(str(writer.directory), writer.n_entries, added, consumed,
                      progress.duplicates, progress.seconds())


class _Progress:
  """Periodic progress lines: a bar, items read, entries, duplicates, rate and ETA."""

  def __init__(self, start: int, total: Optional[int], every_s: float):
    self.start, self.total, self.every_s = start, total, every_s
    self.t0 = self.last = time.monotonic()
    self.duplicates = 0

  def seconds(self) -> float:
    """Seconds since the build started."""
    return time.monotonic() - self.t0

  def update(self, consumed: int, n_entries: int, skipped: int) -> None:
    """Count a chunk; a progress line every `every_s` seconds."""
    self.duplicates += skipped
    now = time.monotonic()
    if now - self.last < self.every_s:
      return
    self.last = now
    rate = (consumed - self.start) / max(now - self.t0, 1e-9)
    where = f"{consumed:,}"
    if self.total:
      done = consumed / self.total
      bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
      eta = (self.total - consumed) / rate if rate > 0 else float("inf")
      where = f"[{bar}] {consumed:,}/{self.total:,} ({100 * done:.0f}%), ETA {eta:.0f}s,"
    logging.info("indexed %s %.0f equations/s | %s entries, %s duplicate skeletons skipped",
                 where, rate, f"{n_entries:,}", f"{self.duplicates:,}")

  def finish(self, directory: pathlib.Path, n_entries: int, added: int) -> None:
    """The closing line: the index, its size and what this run added."""
    logging.info("index %s: %s entries (%s new, %s duplicate skeletons skipped) in %.1fs",
                 directory, f"{n_entries:,}", f"{added:,}", f"{self.duplicates:,}",
                 self.seconds())
