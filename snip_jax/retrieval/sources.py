"""Where an index's equations come from: generated functions, a data.prefix corpus, a TFDS
corpus or a list, each read in chunks of prefix strings from any item on (resume and append).

A source's `identity` says which stream it is: a rebuild with the same identity continues it
from the items the index has consumed, a new identity appends another stream. The generated
stream is chunk c of `pipeline.generate_chunk` (seeded by (seed, c)), so it depends on
`chunk_size`, which is part of its identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import pathlib
from typing import Iterator, Optional, Sequence

import grain
import numpy as np

from snip_jax.data import pipeline
from snip_jax.data.corpus import read_corpus
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.trees import Expression

def skeleton_keys(skeletons: Sequence[str]) -> np.ndarray:
  """64-bit hashes of skeletons (uint64): compact keys for deduplicating millions of entries."""
  return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                   for s in skeletons], dtype=np.uint64)


def n_variables(expr: Expression) -> int:
  """1 + the highest variable index (0 for a constant): the inputs a dataset needs to fit it."""
  names = expr.variables()
  return int(names[-1][2:]) + 1 if names else 0


@dataclasses.dataclass(frozen=True)
class _GeneratedPrefixes:
  """Chunk index -> the prefix strings of that generated chunk (picklable for workers)."""

  env_cfg: EnvConfig
  seed: int
  chunk_size: int

  def __call__(self, chunk_index: int) -> list[str]:
    samples, _ = pipeline.generate_chunk(chunk_index, env_cfg=self.env_cfg, seed=self.seed,
                                         chunk_size=self.chunk_size)
    return [sample.tree.prefix() for sample in samples]


class GeneratedSource:
  """`limit` freshly generated functions of `env_cfg` (seeded), in `num_workers` processes."""

  def __init__(self, env_cfg: EnvConfig, *, limit: int, seed: int = 0, chunk_size: int = 1024,
               num_workers: int = 0):
    self.env_cfg, self.limit, self.chunk_size, self.num_workers = (env_cfg, limit, chunk_size,
                                                                   num_workers)
    self._chunk = _GeneratedPrefixes(env_cfg, seed, chunk_size)
    self.identity = {"kind": "generate", "seed": seed, "chunk_size": chunk_size,
                     "max_input_dimension": env_cfg.max_input_dimension}

  @contextlib.contextmanager
  def chunks(self, start: int) -> Iterator[Iterator[list[str]]]:
    """Chunks of prefixes from item `start` to `limit`."""
    first, skip = divmod(start, self.chunk_size)
    stop = -(-self.limit // self.chunk_size)
    dataset = grain.MapDataset.range(0, stop).map(self._chunk)
    with pipeline.iterate(dataset, start=first, num_workers=self.num_workers) as stream:
      yield _trimmed(stream, first * self.chunk_size + skip, self.limit, self.chunk_size)


def _trimmed(stream, start: int, limit: int, chunk_size: int) -> Iterator[list[str]]:
  """Chunk-aligned chunks cut to items [start, limit)."""
  position = start - start % chunk_size
  for chunk in stream:
    lo, hi = max(start - position, 0), min(limit - position, len(chunk))
    position += len(chunk)
    if lo < hi:
      yield chunk[lo:hi]


class CorpusSource:
  """The equations (`tree`) of a data.prefix file (.gz too), in file order, at most `limit`."""

  def __init__(self, path, env_cfg: EnvConfig, *, limit: Optional[int] = None,
               chunk_size: int = 1024):
    self.path, self.env_cfg = pathlib.Path(path).absolute(), env_cfg
    self.limit, self.chunk_size = limit, chunk_size
    self.identity = {"kind": "jsonl", "path": str(self.path),
                     "bytes": self.path.stat().st_size}

  @contextlib.contextmanager
  def chunks(self, start: int) -> Iterator[Iterator[list[str]]]:
    """Chunks of prefixes from line `start + 1` on; errors name file:line."""
    samples = read_corpus(self.path, self.env_cfg, points=False)
    trees = (sample.tree.prefix() for sample in itertools.islice(samples, start, self.limit))
    yield _grouped(trees, self.chunk_size)


class TfdsSource:
  """The equations of one split of a TFDS corpus (`build_tfds_corpus`), at most `limit`."""

  def __init__(self, data_dir, split: str, env_cfg: EnvConfig, *, limit: Optional[int] = None,
               chunk_size: int = 1024):
    from snip_jax.data.tfds_corpus import corpus_source  # pylint: disable=g-import-not-at-top

    self.data_dir = pathlib.Path(data_dir).absolute()
    self._source = corpus_source(self.data_dir, split, env_cfg)
    self.limit = len(self._source) if limit is None else min(limit, len(self._source))
    self.chunk_size = chunk_size
    self.identity = {"kind": "tfds", "dir": str(self.data_dir), "split": split}

  @contextlib.contextmanager
  def chunks(self, start: int) -> Iterator[Iterator[list[str]]]:
    """Chunks of prefixes from example `start` on (random access: no reading to skip)."""
    yield (self._read(lo, min(lo + self.chunk_size, self.limit))
           for lo in range(start, self.limit, self.chunk_size))

  def _read(self, lo: int, hi: int) -> list[str]:
    """The prefixes of examples lo..hi-1, in one batched read."""
    return [example["tree"] for example in self._source.__getitems__(range(lo, hi))]


class ListSource:
  """Equations given as prefix strings (the data.prefix `tree` form), named by their content."""

  def __init__(self, prefixes: Sequence[str], *, chunk_size: int = 1024):
    self.prefixes, self.chunk_size = list(prefixes), chunk_size
    digest = hashlib.sha256("\n".join(self.prefixes).encode()).hexdigest()[:16]
    self.identity = {"kind": "list", "n": len(self.prefixes), "sha256": digest}

  @contextlib.contextmanager
  def chunks(self, start: int) -> Iterator[Iterator[list[str]]]:
    """Chunks of the prefixes from item `start` on."""
    yield _grouped(iter(self.prefixes[start:]), self.chunk_size)


def _grouped(items: Iterator[str], size: int) -> Iterator[list[str]]:
  """Consecutive lists of `size` items (the last may be shorter)."""
  while chunk := list(itertools.islice(items, size)):
    yield chunk
