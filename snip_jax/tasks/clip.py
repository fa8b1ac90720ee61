"""CLIP pretraining of SNIP as a Task for the training loop: data sources, evaluation, checks.

`train_and_evaluate(config, workdir)` runs `configs/pretrain.py` (launch.py job `pretrain`).
Training batches come from one Grain pipeline (snip_jax.data.pipeline) whatever the source:
generated on the fly (`data.source='generate'`), a data.prefix read into memory (`'jsonl'`) or
an ArrayRecord corpus (`'tfds'`). With generated data, global batch k is the concatenation over
processes p of generator chunk k * n + p (batch_size / n samples each), so it depends on
(seed, k, n) only. The held-out set is generated with seed train.seed + eval.seed_offset; its
evaluation runs the encoders once per batch and takes the loss and the retrieval accuracy
among all held-out samples from the same latents.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from snip_jax import checks
from snip_jax.data import pipeline
from snip_jax.data.corpus import scan_corpus
from snip_jax.model import SNIP, ModelConfig, clip_logits, clip_loss
from snip_jax.symbolic.config import EnvConfig
from snip_jax.train import trainer
from snip_jax.train.train_step import BATCH_KEYS, CLIP, DATA_AXIS, TrainState, clip_temperature

EVAL_METRICS = ("eval_loss", "eval_accuracy_f2y", "eval_accuracy_y2f")
SOURCES = ("generate", "jsonl", "tfds")


def validate_config(config, workdir: str) -> None:
  """The loop's checks plus the data source and the held-out set (UserError if wrong)."""
  env_cfg = trainer.validate_config(config, workdir, EVAL_METRICS)
  validate_eval_set(config.eval)
  data = config.data
  checks.one_of(data.source, SOURCES, "data.source")
  if data.source == "jsonl":
    scan_corpus(checks.readable(data.jsonl_path, "data.jsonl_path",
                                hint="a data.prefix file (launch.py export job)"), env_cfg)
  elif data.source == "tfds":
    from snip_jax.data.tfds_corpus import corpus_source  # pylint: disable=g-import-not-at-top

    tfds_dir = checks.readable(data.tfds_dir, "data.tfds_dir", "dir",
                               hint="the output of build_tfds_corpus")
    with checks.as_user_error(FileNotFoundError):
      corpus_source(tfds_dir, data.tfds_split, env_cfg)
  trainer.check_devices(config)


def validate_eval_set(ev) -> None:
  """eval.n_samples must be a positive multiple of eval.batch_size (whole eval batches)."""
  checks.at_least(1, ev, "eval", "n_samples", "batch_size")
  checks.multiple_of(ev.n_samples, ev.batch_size, "eval.n_samples", "eval.batch_size")


def training_batches(config, env_cfg: EnvConfig) -> grain.MapDataset:
  """This process's rows of every global training batch, indexed by batch, from any source."""
  data, seed = config.data, config.train.seed
  local_bs = trainer.local_batch_size(config.train.batch_size)
  shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
  if data.source == "generate":
    return pipeline.generated_batches(env_cfg, seed=seed, batch_size=local_bs,
                                      process_index=shard["shard_index"],
                                      process_count=shard["shard_count"])
  if data.source == "jsonl":
    return pipeline.corpus_batches(pipeline.corpus_samples(data.jsonl_path, env_cfg), local_bs,
                                   seed, env_cfg=env_cfg, shuffle=data.shuffle, **shard)
  if data.source == "tfds":
    from snip_jax.data.tfds_corpus import corpus_source  # pylint: disable=g-import-not-at-top

    source = corpus_source(data.tfds_dir, data.tfds_split, env_cfg)
    return pipeline.corpus_batches(source, local_bs, seed, shuffle=data.shuffle, **shard)
  raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")


def eval_batches(config, env_cfg: EnvConfig,
                 keys: tuple[str, ...] = BATCH_KEYS) -> list[dict]:
  """This process's rows of the held-out generated set, in eval batches (arrays `keys`)."""
  n, bs = config.eval.n_samples, config.eval.batch_size
  validate_eval_set(config.eval)
  start = time.time()
  ds = pipeline.generated_batches(env_cfg, seed=config.train.seed + config.eval.seed_offset,
                                  batch_size=bs)
  with pipeline.iterate(ds, stop=n // bs, num_workers=config.train.num_workers) as batches:
    full = [{k: b[k] for k in keys} for b in batches]
  logging.info("generated the eval set: %d samples in %.1f s", n, time.time() - start)
  rows = trainer.local_batch_size(bs, "eval.batch_size")
  offset = jax.process_index() * rows
  return [{k: v[offset:offset + rows] for k, v in b.items()} for b in full]


def make_encode(model_cfg: ModelConfig) -> Callable:
  """Jitted (params, batch) -> (z_f, z_y), deterministic, for the evaluation."""
  model = SNIP(model_cfg)

  @jax.jit
  def encode(params, batch):
    z_y, z_f = model.apply({"params": params}, batch["points"], batch["n_points"],
                           batch["equations"], batch["equation_lengths"], deterministic=True)
    return z_f, z_y

  return encode


@functools.partial(jax.jit, static_argnums=3)
def _retrieval_accuracies(z_f, z_y, temperature, normalize):
  """Top-1 retrieval among all N candidates, both directions, from the [N, N] logits."""
  logits_f, logits_y = clip_logits(z_f, z_y, temperature, normalize)
  labels = jnp.arange(z_f.shape[0])
  return (jnp.mean(jnp.argmax(logits_f, -1) == labels),
          jnp.mean(jnp.argmax(logits_y, -1) == labels))


def evaluate(state: TrainState, batches: list[dict], encode: Callable,
             model_cfg: ModelConfig) -> dict[str, float]:
  """Mean eval-batch CLIP loss and retrieval among all held-out samples, one forward per batch."""
  temperature = clip_temperature(model_cfg, state.log_temperature)
  normalize = model_cfg.normalize_latents
  losses, z_fs, z_ys = [], [], []
  for batch in batches:
    z_f, z_y = encode(state.params, batch)
    losses.append(clip_loss(z_f, z_y, temperature, normalize))
    z_fs.append(z_f)
    z_ys.append(z_y)
  f2y, y2f = _retrieval_accuracies(jnp.concatenate(z_fs), jnp.concatenate(z_ys), temperature,
                                   normalize)
  return {"eval_loss": float(np.mean(jax.device_get(losses))),
          "eval_accuracy_f2y": float(f2y), "eval_accuracy_y2f": float(y2f)}


def clip_task(config, env_cfg: EnvConfig, model_cfg: ModelConfig, mesh) -> trainer.Task:
  """CLIP pretraining: generated or corpus batches, retrieval over the held-out set."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  evals = [trainer.global_batch(b, batch_sharding, equation_bucket=config.train.equation_bucket)
           for b in eval_batches(config, env_cfg)]
  run_eval = functools.partial(evaluate, batches=evals, encode=make_encode(model_cfg),
                               model_cfg=model_cfg)
  return trainer.Task(objective=CLIP, batches=training_batches(config, env_cfg),
                      evaluate=run_eval, eval_metrics=EVAL_METRICS)


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """CLIP pretraining as `config` says, in and resuming from `workdir` (see trainer)."""
  return trainer.train_and_evaluate(config, workdir, clip_task)
