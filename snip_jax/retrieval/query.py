"""Equation retrieval: from datasets to their nearest indexed equations, constants fitted.

  model = snip_jax.load_pretrained("ckpt/snip-10dmax")
  retriever = Retriever(model, "INDEX")                  # refuses an index of another model
  matches = retriever.query(x, y, k=20)                  # one dataset -> [Match], best R² first
  many = retriever.query([(x1, y1), (x2, y2)], k=20)     # several, searched in one batch

Each dataset is embedded with encoder_y, the index is searched by the model's similarity
(search.py), and the stored constants of the first `n_fit` hits start a BFGS fit to the data
(`refine_many`); the hits are then ranked by R² (ties: similarity).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from snip_jax.data.tabular import clean_data
from snip_jax.errors import UserError
from snip_jax.retrieval.search import ShardSearch, query_form
from snip_jax.retrieval.store import Index
from snip_jax.symbolic.refine import refine_many
from snip_jax.symbolic.trees import Expression, is_integer_text, is_number, parse_prefix

DEFAULT_REFINE = {"time_limit": 1.0, "max_iter": 200}  # per hit: bounded, however odd the hit


@dataclasses.dataclass
class Match:
  """One retrieved equation: as stored (prefix, with the constants of its skeleton's first
  occurrence) and as math, the model's similarity to the dataset, the equation with constants
  fitted to the data (prefix and math) and its R² (None when not fitted), size (nodes), entry
  id and similarity rank (1 = most similar)."""

  equation: str
  readable: str
  similarity: float
  fitted_equation: Optional[str]
  fitted_readable: Optional[str]
  r2: Optional[float]
  size: int
  entry: int
  rank: int
  status: str = "not_fitted"


def readable(expr: Expression, digits: int = 4) -> str:
  """The equation as math (sympy's text, never evaluated as code), constants to `digits`
  significant digits."""
  expr = expr.copy()
  stack = list(expr.nodes)
  while stack:
    node = stack.pop()
    if not node.children and is_number(node.value) and not is_integer_text(node.value):
      node.value = f"{float(node.value):.{digits}g}"
    stack.extend(node.children)
  return str(expr.to_sympy())


def _datasets(x, y) -> list[tuple[np.ndarray, np.ndarray]]:
  """The (x [n, d], y [n]) pairs of `query(x, y)` or `query([(x1, y1), ...])`, NaN rows dropped."""
  pairs = [(x, y)] if y is not None else list(x)
  out = []
  for i, (xi, yi) in enumerate(pairs):
    yi = np.asarray(yi, dtype=np.float64)
    try:
      out.append(clean_data(xi, yi[:, 0] if yi.ndim == 2 and yi.shape[1] == 1 else yi))
    except ValueError as err:
      raise ValueError(f"dataset {i}: {err}") from None
  return out


class Retriever:
  """An index opened for queries with the model that built it (see the module docstring);
  `cache_shards` keeps the shards on the device between queries, `dtype` is search.py's."""

  def __init__(self, model, index_dir: str | os.PathLike, *, cache_shards: bool = True,
               dtype: str = "float32"):
    self.model, self.index = model, Index(index_dir)
    self.index.check_model(model)
    self.normalize = bool(model.model_cfg.normalize_latents)
    self.temperature = float(model.model_cfg.clip_temperature)
    self._search = ShardSearch(self.index, cache=cache_shards, dtype=dtype)

  def embed(self, datasets: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0
            ) -> np.ndarray:
    """Query vectors of (x, y) datasets: their latents in scoring form (datasets with more than
    max_len points are subsampled, seeded)."""
    latents = self.model.embed_points([(x, y) for x, y in datasets],
                                      subsample=np.random.default_rng(seed))
    return query_form(latents, self.normalize, self.temperature)

  def search(self, queries: np.ndarray, dims: Sequence[int], k: int, approximate: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, entry ids) [B, k] of query vectors (`embed`) for datasets with `dims`
    input columns; -inf / -1 past the qualifying entries."""
    k = min(int(k), self.index.n_entries)
    if k < 1:
      raise UserError(f"k must be >= 1 and the index non-empty (it has {self.index.n_entries}"
                       " entries)")
    return self._search.top_k(np.asarray(queries, np.float32), np.asarray(dims, np.int32), k,
                              approximate)

  def query(self, x, y=None, *, k: int = 20, n_fit: Optional[int] = None,
            approximate: bool = False, seed: int = 0, refine_options: Optional[dict] = None):
    """The top-k equations of one dataset (`query(x, y)` -> [Match]) or several
    (`query([(x1, y1), ...])` -> [[Match], ...]); the first `n_fit` (default all k) fitted and
    ranked by R², the rest after them by similarity."""
    datasets = _datasets(x, y)
    scores, ids = self.search(self.embed(datasets, seed), [d[0].shape[1] for d in datasets], k,
                              approximate)
    options = {**DEFAULT_REFINE, **(refine_options or {})}
    out = [self._matches(data, s, i, k if n_fit is None else n_fit, options)
           for data, s, i in zip(datasets, scores, ids)]
    return out[0] if y is not None else out

  def _matches(self, data, scores: np.ndarray, ids: np.ndarray, n_fit: int, options: dict
               ) -> list[Match]:
    """One dataset's hits as Matches, the first n_fit refined, ranked by R² then similarity."""
    found = ids >= 0
    entries = self.index.entries(ids[found])
    matches = []
    for rank, (entry, score, entry_id) in enumerate(zip(entries, scores[found], ids[found])):
      expr = parse_prefix(entry["equation"])
      matches.append(Match(entry["equation"], readable(expr), float(score), None, None,
                           None, len(expr), int(entry_id), rank + 1))
    fitted = refine_many([m.equation for m in matches[:n_fit]], *data, **options)
    for match, result in zip(matches, fitted):
      match.status = result.status
      match.r2 = float(result.r2)
      if result.expression is not None and result.status != "invalid":
        match.fitted_equation = result.expression.prefix()
        match.fitted_readable = readable(result.expression)
    return sorted(matches, key=lambda m: (m.r2 is None, -(m.r2 if m.r2 is not None else 0.0),
                                          m.rank))
