"""Equation retrieval: an on-disk index of equations embedded by SNIP's encoder_f, searched with
datasets embedded by encoder_y; the nearest equations' constants are fitted to the data.

  from snip_jax.retrieval import GeneratedSource, Retriever, build_index
  build_index("INDEX", model, GeneratedSource(model.env_cfg, limit=100_000))
  Retriever(model, "INDEX").query(x, y, k=20)      # [Match], best R² first

Layout (imports point down): sources (equation streams) and store (the files) below build
(indexing) and search (jitted top-k over shards), below query (datasets -> Matches) and
commands (the launch.py jobs).
"""

from snip_jax.retrieval.build import BuildSummary, build_index
from snip_jax.retrieval.query import Match, Retriever
from snip_jax.retrieval.sources import CorpusSource, GeneratedSource, ListSource, TfdsSource
from snip_jax.retrieval.store import Index

__all__ = ["BuildSummary", "CorpusSource", "GeneratedSource", "Index", "ListSource", "Match",
           "Retriever", "TfdsSource", "build_index"]
