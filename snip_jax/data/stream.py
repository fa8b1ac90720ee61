"""Deterministic streams of generated samples and batches, from one process or a pool.

The stream is cut into chunks; chunk `c` is generated with `np.random.default_rng([seed, c])`,
so sample `k` is the same whatever the number of workers, the timing, or where a run
resumed (it lives in chunk `k // chunk_size`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable, Iterator, Optional

import numpy as np

from snip_jax.data.batching import collate
from snip_jax.data.pool import ChunkPool
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.generator import Sample, generate_sample


@dataclasses.dataclass
class Chunk:
  """What a worker sends back: the chunk's payload and its generation statistics."""

  index: int
  payload: object
  stats: collections.Counter


def chunk_rng(seed: int, chunk_index: int) -> np.random.Generator:
  return np.random.default_rng([seed, chunk_index])


def generate_chunk(chunk_index: int, *, env_cfg: EnvConfig, seed: int, chunk_size: int,
                   train: bool = True) -> tuple[list[Sample], collections.Counter]:
  """The `chunk_size` samples of chunk `chunk_index`, with attempt/rejection counts."""
  rng = chunk_rng(seed, chunk_index)
  stats: collections.Counter = collections.Counter()
  samples = [generate_sample(rng, env_cfg, train=train, stats=stats) for _ in range(chunk_size)]
  return samples, stats


def _batch_chunk(chunk_index: int, *, env_cfg: EnvConfig, seed: int, batch_size: int,
                 use_skeleton: bool, process_index: int, process_count: int) -> Chunk:
  samples, stats = generate_chunk(chunk_index * process_count + process_index, env_cfg=env_cfg,
                                  seed=seed, chunk_size=batch_size)
  return Chunk(chunk_index, collate(samples, env_cfg, use_skeleton=use_skeleton), stats)


def _mapped_chunk(chunk_index: int, *, env_cfg: EnvConfig, seed: int, chunk_size: int,
                  fn: Callable[[list[Sample]], object]) -> Chunk:
  samples, stats = generate_chunk(chunk_index, env_cfg=env_cfg, seed=seed,
                                  chunk_size=chunk_size)
  return Chunk(chunk_index, fn(samples), stats)


def batch_stream(env_cfg: EnvConfig, *, seed: int, batch_size: int, num_workers: int = 0,
                 start_batch: int = 0, end_batch: Optional[int] = None,
                 use_skeleton: bool = False, process_index: int = 0, process_count: int = 1,
                 **pool_kwargs) -> Iterator[Chunk]:
  """Collated training batches (one chunk = one batch), in order, from a worker pool.

  With several processes (hosts), process p's batch k is stream chunk k * count + p, so the
  hosts' `batch_size`-sample slices together form a deterministic global batch.
  """
  produce = functools.partial(_batch_chunk, env_cfg=env_cfg, seed=seed, batch_size=batch_size,
                              use_skeleton=use_skeleton, process_index=process_index,
                              process_count=process_count)
  return _stream(produce, num_workers, start_batch, end_batch, pool_kwargs)


def mapped_stream(env_cfg: EnvConfig, fn: Callable[[list[Sample]], object], *, seed: int,
                  chunk_size: int, num_workers: int = 0, start_chunk: int = 0,
                  end_chunk: Optional[int] = None, **pool_kwargs) -> Iterator[Chunk]:
  """Chunks of samples transformed in the workers by `fn` (picklable), in order."""
  produce = functools.partial(_mapped_chunk, env_cfg=env_cfg, seed=seed, chunk_size=chunk_size,
                              fn=fn)
  return _stream(produce, num_workers, start_chunk, end_chunk, pool_kwargs)


def _stream(produce, num_workers, start, end, pool_kwargs) -> Iterator[Chunk]:
  with ChunkPool(produce, num_workers=num_workers, start_chunk=start, end_chunk=end,
                 **pool_kwargs) as pool:
    for _, chunk in pool:
      yield chunk
