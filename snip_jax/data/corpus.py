"""The `data.prefix` format: the original SNIP export's JSONL, written, read and checked here.

The layout is the original's field for field (info fields as strings, then `x_to_fit`/`y_to_fit`
as `%.{float_precision}e` strings, the `tree` prefix with raw float constants,
`skeleton_tree_encoded`, and `target_property` for property corpora), so files move both ways
between this project and the original. An optional `data.infix` holds line i's infix on line i;
it is a separate file because the original's reader turns every unknown field of a data.prefix
line into an int. The exporter (data/export.py), the TFDS builder (data/tfds_corpus.py) and the
training pipeline (data/pipeline.py) all read and write through this module.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from typing import Iterator, Optional, Sequence

import numpy as np
from absl import logging

from snip_jax.data.batching import check_sample
from snip_jax.errors import UserError
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.generator import Sample
from snip_jax.symbolic.tokenizers import encode_prefix
from snip_jax.symbolic.trees import parse_prefix

INFO_FIELDS = ("n_input_points", "n_unary_ops", "n_binary_ops", "d_in", "d_out",
               "input_distribution_type", "n_centroids")
_NON_INFO_FIELDS = frozenset(("x_to_fit", "y_to_fit", "x_to_predict", "y_to_predict", "tree",
                              "tree_encoded", "skeleton_tree_encoded", "target_property"))
PREFIX_FILE = "data.prefix"
INFIX_FILE = "data.infix"
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
