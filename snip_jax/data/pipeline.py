"""One Grain pipeline for every data source, indexed by global batch.

A source is a `grain.MapDataset` whose element k is this process's rows of global batch k, a
pure function of (seed, k, process index and count), so one resume rule serves every source:
start at batch k.
- `generated_batches`: the generator run per batch with its own seed. Process p's batch k is
  generator chunk k * count + p (`chunk_rng`: `np.random.default_rng([seed, chunk])`), so the
  processes' slices form a global batch that depends on (seed, k, count) only.
- `generated_chunks`: the exporter's chunks of `data.prefix` lines (chunk c from the same seeds).
- `corpus_batches`: an ArrayRecord split (`tfds_corpus.corpus_source`) or a `data.prefix` read
  into memory (`corpus_samples`), shuffled per epoch with (seed, epoch), sharded over processes,
  batched (`collate`'s keys, shapes and dtypes either way).

`iterate(ds, start=k)` reads ds[k:] in this process (`num_workers=0`, one reader thread ahead of
the loop) or in worker processes (Grain's `mp_prefetch`: the same elements in the same order
whatever their number), optionally placed on the devices by a thread ahead of the loop. Workers
start with one BLAS thread each (set before they import numpy). A worker that dies ends the run
with a `DataPipelineError` naming the batch; rerunning resumes from the last checkpoint.
Generation cannot hang: `max_eval_work` bounds every attempt deterministically.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import pathlib
import sys
from multiprocessing import resource_tracker
from typing import Any, Callable, Optional, Sequence

import grain
import numpy as np
from absl import flags

from snip_jax.data.batching import collate
from snip_jax.data.corpus import read_corpus, samples_to_lines
from snip_jax.errors import UserError
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.generator import Sample, generate_sample

ENDLESS = 2**62  # the length of an endless source (Grain datasets have a length)
_BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class DataPipelineError(RuntimeError):
  """The input pipeline failed (e.g. a worker process died); names the batch it was reading."""


# ------------------------------------------------------------------------- generated data


def chunk_rng(seed: int, chunk_index: int) -> np.random.Generator:
  """The generator's random stream for chunk `chunk_index` of the stream seeded by `seed`."""
  return np.random.default_rng([seed, chunk_index])


def generate_chunk(chunk_index: int, *, env_cfg: EnvConfig, seed: int, chunk_size: int,
                   train: bool = True) -> tuple[list[Sample], collections.Counter]:
  """The `chunk_size` samples of chunk `chunk_index`, with attempt/rejection counts."""
  rng = chunk_rng(seed, chunk_index)
  stats: collections.Counter = collections.Counter()
  samples = [generate_sample(rng, env_cfg, train=train, stats=stats) for _ in range(chunk_size)]
  return samples, stats


@dataclasses.dataclass(frozen=True)
class _GeneratedBatch:
  """Batch index -> this process's collated rows of that global batch (picklable for workers)."""

  env_cfg: EnvConfig
  seed: int
  batch_size: int
  use_skeleton: bool
  process_index: int
  process_count: int

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    chunk = batch_index * self.process_count + self.process_index
    samples, _ = generate_chunk(chunk, env_cfg=self.env_cfg, seed=self.seed,
                                chunk_size=self.batch_size)
    return collate(samples, self.env_cfg, use_skeleton=self.use_skeleton)


def generated_batches(env_cfg: EnvConfig, *, seed: int, batch_size: int,
                      use_skeleton: bool = False, process_index: int = 0,
                      process_count: int = 1) -> grain.MapDataset:
  """Endless generated batches of `batch_size` rows (this process's share of a global batch)."""
  return grain.MapDataset.range(0, ENDLESS).map(_GeneratedBatch(
      env_cfg, seed, batch_size, use_skeleton, process_index, process_count))


@dataclasses.dataclass(frozen=True)
class _ExportChunk:
  """Chunk index -> ((data.prefix line, data.infix line or None) per sample, generator stats)."""

  env_cfg: EnvConfig
  seed: int
  chunk_size: int
  with_infix: bool

  def __call__(self, chunk_index: int) -> tuple[list, collections.Counter]:
    samples, stats = generate_chunk(chunk_index, env_cfg=self.env_cfg, seed=self.seed,
                                    chunk_size=self.chunk_size)
    return samples_to_lines(samples, cfg=self.env_cfg, with_infix=self.with_infix), stats


def generated_chunks(env_cfg: EnvConfig, *, seed: int, chunk_size: int,
                     with_infix: bool) -> grain.MapDataset:
  """Endless chunks of exported lines: chunk c holds samples c * chunk_size ... of the stream."""
  return grain.MapDataset.range(0, ENDLESS).map(
      _ExportChunk(env_cfg, seed, chunk_size, with_infix))


# ------------------------------------------------------------------------- corpora


def corpus_samples(path: str | os.PathLike, env_cfg: EnvConfig) -> list[Sample]:
  """Every sample of a data.prefix file, checked (CorpusError names file:line), in memory."""
  samples = list(read_corpus(pathlib.Path(path), env_cfg))
  if not samples:
    raise UserError(f"{path} is empty: it holds no samples")
  return samples


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
  """Example indices -> one batch: a CorpusSource's rows read at once and stacked, or Samples
  collated as `collate` lays them out (target_property if all have one); picklable."""

  source: Any
  env_cfg: Optional[EnvConfig] = None
  with_target: bool = True

  def __call__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    indices = [int(i) for i in indices]
    if self.env_cfg is None:
      rows = self.source.__getitems__(indices)
      return {k: np.stack([row[k] for row in rows]) for k in rows[0] if k != "tree"}
    batch = collate([self.source[i] for i in indices], self.env_cfg)
    if not self.with_target:
      batch.pop("target_property", None)
    return batch


@dataclasses.dataclass(frozen=True)
class _EpochOrder:
  """Position in this shard's stream of examples -> example index (picklable).

  Epoch e's order is `np.random.default_rng([seed, e]).permutation(n)` (the identity without
  shuffling), drawn once per epoch and process; the shard takes every shard_count-th entry.
  """

  n: int
  seed: int
  shuffle: bool
  shard_index: int
  shard_count: int

  @property
  def per_shard(self) -> int:
    return self.n // self.shard_count

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(int(position), self.per_shard)
    return int(self.order(epoch)[self.shard_index + offset * self.shard_count])

  @functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
  def order(self, epoch: int) -> np.ndarray:
    """The example order of `epoch`."""
    if not self.shuffle:
      return np.arange(self.n)
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)


def corpus_batches(source, batch_size: int, seed: int, *, env_cfg: Optional[EnvConfig] = None,
                   shuffle: bool = True, num_epochs: Optional[int] = None,
                   shard_index: int = 0, shard_count: int = 1,
                   drop_remainder: bool = True) -> grain.MapDataset:
  """Batches of a corpus: a CorpusSource (ArrayRecord rows) or a list of Samples (`env_cfg`).

  Each epoch is shuffled with the seeds (seed, epoch); process `shard_index` of `shard_count`
  takes every shard_count-th example of it (equal disjoint shares; the last n % shard_count are
  left out). Epochs run back to back (a batch may span two); `num_epochs=None` repeats
  forever. A batch's examples are read in one call (ArrayRecord's batched read).
  """
  _check_sharding(batch_size, shard_index, shard_count)
  order = _EpochOrder(len(source), seed, shuffle, shard_index, shard_count)
  if order.per_shard == 0:
    raise UserError(f"{len(source)} examples cannot be split into {shard_count} non-empty"
                    " shards")
  length = ENDLESS if num_epochs is None else num_epochs * order.per_shard
  with_target = env_cfg is None or all(s.target_property is not None for s in source)
  return grain.MapDataset.range(length).map(order).batch(
      batch_size, drop_remainder=drop_remainder,
      batch_fn=_ReadBatch(source, env_cfg, with_target))


def _check_sharding(batch_size: int, shard_index: int, shard_count: int) -> None:
  """Argument errors at call time, before any data is read."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")


# ------------------------------------------------------------------------- reading


def iterate(ds: grain.MapDataset, *, start: int = 0, stop: Optional[int] = None,
            num_workers: int = 0, read_threads: int = 1, buffer: int = 2,
            place: Optional[Callable[[Any], Any]] = None) -> "Batches":
  """Elements start, start + 1, ... (to `stop`) of `ds`, read ahead of the consumer.

  `num_workers` > 0 reads in that many processes (each with `read_threads` threads), else in
  `read_threads` threads of this process; `place` (e.g. onto devices) runs in a thread that
  keeps `buffer` placed elements ready.
  """
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  return Batches(ds[start:stop], start, num_workers, read_threads, buffer, place)


class Batches:
  """The pipeline's iterator: `next_index` is the batch it returns next; close() ends workers."""

  def __init__(self, ds: grain.MapDataset, start: int, num_workers: int, read_threads: int,
               buffer: int, place: Optional[Callable[[Any], Any]]):
    self.next_index = start
    options = grain.ReadOptions(num_threads=read_threads,
                                prefetch_buffer_size=max(1, buffer, read_threads))
    chain = ds.to_iter_dataset(options)
    if num_workers > 0:
      _mark_flags_parsed()
      _quiet_resource_tracker()
      chain = chain.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=num_workers, per_worker_buffer_size=max(1, buffer)))
    if place is not None:
      chain = grain.experimental.ThreadPrefetchIterDataset(chain, prefetch_buffer_size=buffer)
      chain = grain.experimental.ThreadPrefetchIterDataset(chain.map(place),
                                                           prefetch_buffer_size=buffer)
    self._blas_vars = _one_blas_thread_per_worker(num_workers)
    self._iterator = iter(chain)

  def __iter__(self) -> "Batches":
    return self

  def __next__(self):
    try:
      element = next(self._iterator)
    except (StopIteration, UserError, KeyboardInterrupt):
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise DataPipelineError(
          f"the input pipeline failed while reading batch {self.next_index}: {error}. Rerun the"
          " same command: it resumes from the last checkpoint and reads the same batches"
          " again") from error
    self.next_index += 1
    return element

  def close(self) -> None:
    """Stop the reader threads and worker processes."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    for name in self._blas_vars:
      os.environ.pop(name, None)
    self._blas_vars = []

  def __enter__(self) -> "Batches":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _mark_flags_parsed() -> None:
  """Grain's worker processes read absl flags; a library caller may not have parsed any."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _quiet_resource_tracker() -> None:
  """Start multiprocessing's resource tracker without its exit warnings about shared memory.

  Grain 0.2.18 unlinks the shared memory of batches it read ahead itself, so the tracker (which
  still lists them) warns of "leaked" objects at exit and then fails to unlink them again. The
  tracker takes its -W options from sys.warnoptions when it starts.
  """
  option = "ignore::UserWarning:multiprocessing.resource_tracker"
  if option not in sys.warnoptions:
    sys.warnoptions.append(option)
  resource_tracker.ensure_running()


def _one_blas_thread_per_worker(num_workers: int) -> list[str]:
  """While workers run, their environment asks for one BLAS thread (unless the user set one).

  The variables only take effect before numpy is imported, i.e. in a fresh worker process; the
  parent's own BLAS (already loaded) is unaffected. Returns the names set, removed by close().
  """
  added = [v for v in _BLAS_THREAD_VARS if num_workers > 0 and v not in os.environ]
  for name in added:
    os.environ[name] = "1"
  return added
