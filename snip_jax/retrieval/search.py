"""Top-k over an index's shards by the model's own similarity, jitted and batched over datasets.

The score of dataset latent z_y and equation latent z_f is the model's CLIP logit
z_f · z_y / T, with both L2-normalised first when the model was trained that way. The index
stores its latents already normalised, so a shard's scores are one matrix product. Each shard
gives its top k (exact `jax.lax.top_k`, or `jax.lax.approx_max_k` with `approximate=True`,
which is fast on TPU and exact elsewhere), merged into the running top k, so no array
outgrows a shard; the shards stay on the device between queries (`cache`), or are read from
their memory-mapped files for each query (`cache=False`: indexes larger than memory). Entries whose variables a dataset lacks (x_2 for 2 columns) are
left out. `dtype="bfloat16"` keeps the shards (and queries) in bfloat16 on the device: half
the memory and, for one dataset at a time on CPU (memory-bound), about half the latency (but
several at once are slower: CPU bfloat16 matrix products are slow); scores then carry
bfloat16's ~3 significant digits, so near-ties may swap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from snip_jax.retrieval.store import Index

_MIN_ROWS = 1024  # the smallest row bucket a shard is padded to (few compiled shapes)
QUERY_BLOCK = 256  # datasets per search pass: scores [256, 65,536] are 64 MB
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # of the shards on the device


def scoring_form(latents: np.ndarray, normalize: bool) -> np.ndarray:
  """float32 latents as they are scored: L2-normalised if the model normalises its latents."""
  latents = np.asarray(latents, dtype=np.float32)
  if not normalize:
    return latents
  norms = np.linalg.norm(latents, axis=-1, keepdims=True)
  return latents / np.where(norms > 0, norms, 1.0)


def query_form(latents: np.ndarray, normalize: bool, temperature: float) -> np.ndarray:
  """Dataset latents such that query · row is the model's similarity (its CLIP logit)."""
  return scoring_form(latents, normalize) / np.float32(temperature)


def _bucket(n: int, floor: int) -> int:
  """The power of two >= max(n, floor): padded shapes, so few compilations."""
  return 1 << (max(n, floor, 1) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("k", "approximate"))
def _merge_shard(queries, dims, rows, n_vars, count, offset, best_scores, best_ids, *, k: int,
                 approximate: bool):
  """The running top k after one shard: its scores, masked, top k, merged with the best."""
  scores = jnp.dot(queries.astype(rows.dtype), rows.T, preferred_element_type=jnp.float32)
  valid = (jnp.arange(rows.shape[0]) < count)[None, :] & (n_vars[None, :] <= dims[:, None])
  scores = jnp.where(valid, scores, -jnp.inf)
  if approximate:
    top_scores, top_rows = jax.lax.approx_max_k(scores, k)
  else:
    top_scores, top_rows = jax.lax.top_k(scores, k)
  scores = jnp.concatenate([best_scores, top_scores], axis=1)
  ids = jnp.concatenate([best_ids, top_rows.astype(jnp.int32) + offset], axis=1)
  best, where = jax.lax.top_k(scores, best_scores.shape[1])
  return best, jnp.take_along_axis(ids, where, axis=1)


class ShardSearch:
  """Top-k search over an Index; shards are placed on the device once and kept (`cache`)."""

  def __init__(self, index: Index, cache: bool = True, dtype: str = "float32"):
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    self.index, self.cache, self.dtype = index, cache, DTYPES[dtype]
    self._placed: dict[int, tuple[jax.Array, jax.Array, int]] = {}

  def _shard(self, shard: int, k: int) -> tuple[jax.Array, jax.Array, int]:
    """Shard rows and n_vars on the device; a partial shard padded to a power of two >= k."""
    if shard in self._placed and self._placed[shard][0].shape[0] >= k:
      return self._placed[shard]
    latents, n_vars = self.index.latents(shard), self.index.meta(shard)["n_vars"]
    count = len(latents)
    size = count if count == self.index.shard_size else _bucket(count, _MIN_ROWS)
    size = max(size, k)
    rows, padded_vars = np.zeros((size, latents.shape[1]), np.float32), np.zeros(size, np.int32)
    rows[:count], padded_vars[:count] = latents, n_vars
    placed = (jax.device_put(rows.astype(self.dtype)), jax.device_put(padded_vars), count)
    if self.cache:
      self._placed[shard] = placed
    return placed

  def top_k(self, queries: np.ndarray, dims: np.ndarray, k: int, approximate: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, entry ids), both [B, k], best first; -inf / -1 where fewer entries qualify.
    Datasets are searched `QUERY_BLOCK` at a time (a block's scores take block x shard)."""
    blocks = [self._top_k_block(queries[lo:lo + QUERY_BLOCK], dims[lo:lo + QUERY_BLOCK], k,
                                approximate) for lo in range(0, len(queries), QUERY_BLOCK)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

  def _top_k_block(self, queries: np.ndarray, dims: np.ndarray, k: int, approximate: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """top_k for at most QUERY_BLOCK datasets, padded to a power of two (few compilations)."""
    n = len(queries)
    padded = _bucket(n, 1)
    q = np.zeros((padded, queries.shape[1]), np.float32)
    q[:n] = queries
    d = np.full(padded, -1, np.int32)  # padding rows: no entry qualifies
    d[:n] = dims
    q, d = jax.device_put(q), jax.device_put(d)
    best = jnp.full((padded, k), -jnp.inf, jnp.float32)
    ids = jnp.full((padded, k), -1, jnp.int32)
    for shard in range(len(self.index.counts)):
      rows, n_vars, count = self._shard(shard, k)
      best, ids = _merge_shard(q, d, rows, n_vars, count, shard * self.index.shard_size, best,
                               ids, k=k, approximate=approximate)
    best, ids = np.asarray(best)[:n], np.asarray(ids)[:n]
    return best, np.where(np.isfinite(best), ids, -1)
