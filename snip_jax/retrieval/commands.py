"""The retrieval jobs of launch.py: `retrieval_build` (configs/retrieval.py:build, runlocal) and
`retrieval_query` (configs/retrieval.py:query). Each checks its whole config and inputs (the
model, the corpus or the CSVs, read in full) before it writes anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np
from absl import logging

from snip_jax import checks
from snip_jax.data.tabular import clean_data, read_csv
from snip_jax.errors import UserError
from snip_jax.retrieval import sources
from snip_jax.retrieval.build import BuildSummary, build_index
from snip_jax.retrieval.query import Match, Retriever
from snip_jax.retrieval.search import DTYPES
from snip_jax.retrieval.store import MANIFEST_FILE, Index, write_json

RESULTS_FILE = "results.json"
SOURCES = ("generate", "jsonl", "tfds")
UNTRAINED = "untrained (randomly initialised runlocal model: for trying the commands only)"


# ------------------------------------------------------------------------- the model


def untrained_model(config, batch_size: int):
  """The randomly initialised tiny model `config.untrained_model` (seeded by config.seed)."""
  from snip_jax.model import SNIP, ModelConfig, init_params  # pylint: disable=g-import-not-at-top
  from snip_jax.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
  from snip_jax.symbolic.config import env_config_from  # pylint: disable=g-import-not-at-top

  section = config.untrained_model
  env_cfg = env_config_from(section.env)
  model_cfg = ModelConfig.from_env(env_cfg, **section.model.to_dict(),
                                   normalize_latents=section.normalize_latents)
  params = init_params(SNIP(model_cfg), jax.random.key(config.seed))
  return Pretrained(model_cfg, env_cfg, params, batch_size)


def load_model(config):
  """The SNIP model of `config.model_path` (or the untrained one); UserError if unusable."""
  if config.untrained:
    logging.warning("using an %s", UNTRAINED)
    return untrained_model(config, config.batch_size)
  from snip_jax.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top

  with checks.as_user_error(FileNotFoundError):
    model = load_pretrained(config.model_path, batch_size=config.batch_size)
  if model.kind != "snip":
    raise UserError(f"{config.model_path} is a symbolic-regression model (no encoder_f): index"
                    " equations with a SNIP pretraining checkpoint, its converted directory or"
                    " a pretraining workdir")
  return model


def _check_model_path(config) -> None:
  """A model path that exists, unless the untrained model is asked for."""
  if not config.untrained and not (config.model_path and os.path.exists(config.model_path)):
    raise UserError(f"config.model_path={config.model_path!r} does not exist: set it to a SNIP"
                    " checkpoint (.pth), its converted directory or a pretraining workdir (or"
                    " config.untrained=True for a random tiny model, to try the commands)")


def _model_label(config) -> str:
  """How the index and the results name the model."""
  return UNTRAINED if config.untrained else str(pathlib.Path(config.model_path).absolute())


# ------------------------------------------------------------------------- build


def validate_build(config, workdir: str) -> None:
  """The build's options, model path and corpus (read in full when small), before writing."""
  directory = checks.workdir(workdir)
  if directory.is_dir() and any(directory.iterdir()) and not (directory / MANIFEST_FILE).exists():
    raise UserError(f"--workdir={workdir} holds other files and no {MANIFEST_FILE}: give a new"
                    " or empty directory for a new index, or an existing index to extend")
  _check_model_path(config)
  checks.one_of(config.data.source, SOURCES, "config.data.source")
  checks.at_least(0, config.data, "config.data", "n_equations", "input_dimension")
  checks.at_least(1, config.build, "config.build", "chunk_size", "shard_size")
  checks.at_least(0, config.build, "config.build", "num_workers")
  checks.at_least(1, config, "config", "batch_size")
  if config.data.source == "generate" and config.data.n_equations < 1:
    raise UserError("config.data.n_equations must be >= 1 for generated functions")
  if config.data.source == "jsonl":
    checks.readable(config.data.jsonl_path, "config.data.jsonl_path", hint="a data.prefix file")
  if config.data.source == "tfds":
    checks.readable(config.data.tfds_dir, "config.data.tfds_dir", kind="dir",
                    hint="a build_tfds_corpus output directory")
  for name in ("commit_every_s", "log_every_s"):
    if not config.build[name] >= 0:
      raise UserError(f"config.build.{name} must be >= 0, got {config.build[name]}")


def make_source(config, env_cfg):
  """The source `config.data` names, for a model of environment `env_cfg`."""
  data, build = config.data, config.build
  limit = data.n_equations or None
  if data.source == "generate":
    dims = data.input_dimension or env_cfg.max_input_dimension
    if dims > env_cfg.max_input_dimension:
      raise UserError(f"config.data.input_dimension={dims} exceeds the model's"
                      f" max_input_dimension={env_cfg.max_input_dimension}")
    env = dataclasses.replace(env_cfg, max_input_dimension=dims,
                              min_input_dimension=min(env_cfg.min_input_dimension, dims))
    return sources.GeneratedSource(env, limit=data.n_equations, seed=config.seed,
                                   chunk_size=build.chunk_size, num_workers=build.num_workers)
  if data.source == "jsonl":
    from snip_jax.data.corpus import scan_corpus  # pylint: disable=g-import-not-at-top

    scan_corpus(data.jsonl_path, env_cfg, points=False)  # CorpusError (file:line) before writing
    return sources.CorpusSource(data.jsonl_path, env_cfg, limit=limit, chunk_size=build.chunk_size)
  with checks.as_user_error(FileNotFoundError):
    return sources.TfdsSource(data.tfds_dir, data.tfds_split, env_cfg, limit=limit,
                              chunk_size=build.chunk_size)


def run_build(config, workdir: str) -> BuildSummary:
  """Load the model, open the source, and build (or resume, or extend) the index."""
  model = load_model(config)
  source = make_source(config, model.env_cfg)
  return build_index(workdir, model, source, model_path=_model_label(config),
                     shard_size=config.build.shard_size,
                     commit_every_s=config.build.commit_every_s,
                     log_every_s=config.build.log_every_s)


# ------------------------------------------------------------------------- query


def read_datasets(config) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
  """(file, X, y, feature names) of each CSV of config.data.csv, NaN rows dropped."""
  paths = [p.strip() for p in config.data.csv.split(",") if p.strip()]
  if not paths:
    raise UserError("set config.data.csv to a CSV with a header row (or several, comma-separated)")
  if not config.data.target:
    raise UserError("set config.data.target to the column the equations should explain")
  out = []
  for path in paths:
    csv_path = checks.readable(path, "config.data.csv", hint="a CSV with a header row")
    X, y, names = read_csv(csv_path, config.data.target)
    try:
      X, y = clean_data(X, y)
    except ValueError as err:
      raise UserError(f"{csv_path}: {err}") from None
    out.append((str(csv_path), X, y, names))
  return out


def validate_query(config, workdir: str) -> None:
  """The query's options, index, model path and CSVs (read in full), before writing."""
  checks.workdir(workdir)
  _check_model_path(config)
  checks.readable(config.index, "config.index", kind="dir", hint="a retrieval build's --workdir")
  Index(config.index)  # an index at all (the model is checked against it once loaded)
  checks.at_least(1, config.query, "config.query", "k", "fit_max_iter")
  checks.at_least(0, config.query, "config.query", "n_fit")
  checks.one_of(config.query.latent_dtype, DTYPES, "config.query.latent_dtype")
  checks.at_least(1, config, "config", "batch_size")
  if not config.query.fit_time_limit > 0:
    raise UserError(f"config.query.fit_time_limit must be > 0, got {config.query.fit_time_limit}")
  read_datasets(config)


def run_query(config, workdir: str) -> dict[str, Any]:
  """Query the index with each CSV; print a table per dataset; write workdir/results.json."""
  datasets = read_datasets(config)
  model = load_model(config)
  for path, X, _, _ in datasets:
    if X.shape[1] > model.env_cfg.max_input_dimension:
      raise UserError(f"{path} has {X.shape[1]} input columns; this model takes at most"
                      f" {model.env_cfg.max_input_dimension}: drop columns")
  retriever = Retriever(model, config.index, cache_shards=False,  # one search: stream shards
                        dtype=config.query.latent_dtype)
  q = config.query
  matches = retriever.query([(X, y) for _, X, y, _ in datasets], k=q.k, n_fit=q.n_fit,
                            approximate=q.approximate, seed=config.seed,
                            refine_options={"time_limit": q.fit_time_limit,
                                            "max_iter": q.fit_max_iter})
  results = {"index": str(retriever.index.directory), "n_entries": retriever.index.n_entries,
             "model": _model_label(config),
             "datasets": [_dataset_results(d, m) for d, m in zip(datasets, matches)]}
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  write_json(pathlib.Path(workdir) / RESULTS_FILE, results)
  return results


def _finite(value):
  """JSON has no inf: a failed fit's R² (−inf) is written as null."""
  return value if value is None or math.isfinite(value) else None


def _dataset_results(dataset, matches: list[Match]) -> dict:
  """One dataset's entry of results.json: the CSV, its variables and the matches."""
  path, X, _, names = dataset
  return {"csv": path, "n_rows": int(len(X)),
          "variables": {f"x_{j}": name for j, name in enumerate(names)},
          "matches": [{**dataclasses.asdict(m), "r2": _finite(m.r2)} for m in matches]}


def format_table(dataset: dict) -> str:
  """One dataset's matches as a text table: R², similarity, size, fitted equation."""
  variables = ", ".join(f"{k} = {v}" for k, v in dataset["variables"].items())
  lines = [f"{dataset['csv']} ({dataset['n_rows']} rows; {variables})",
           f"{'#':>3} {'R2':>8} {'sim':>8} {'size':>4}  fitted equation  [as indexed]"]
  for i, m in enumerate(dataset["matches"], start=1):
    r2 = "-" if m["r2"] is None else "<-999" if m["r2"] < -999 else f"{m['r2']:.4f}"
    fitted = m["fitted_readable"] or "(not fitted)"
    lines.append(f"{i:>3} {r2:>8} {m['similarity']:>8.3f} {m['size']:>4}  {fitted}"
                 f"  [{m['readable']}]")
  return "\n".join(lines)
