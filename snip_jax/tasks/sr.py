"""Symbolic-regression training (configs/sr.py) as a Task for the training loop.

The batches are CLIP pretraining's (the same generated functions, one Grain pipeline); the
objective is the decoder's next-token cross-entropy of each equation given its points
(train_step.EQUATION). The held-out evaluation (seed train.seed + eval.seed_offset) reports the
teacher-forced loss and token accuracy, and the share of functions whose greedy decoding, with
its constants as decoded, fits the function's own points with R^2 > 0.99 (`eval_r2_above_0.99`;
invalid decodings count as misses).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from snip_jax import checks
from snip_jax.errors import UserError
from snip_jax.model import SNIPSR, SR_MODULE_NAMES, ModelConfig
from snip_jax.sr import decoding
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.refine import fit_scores
from snip_jax.symbolic.tokenizers import build_vocab, generated_expression
from snip_jax.tasks import clip
from snip_jax.train import trainer
from snip_jax.train.train_step import (BATCH_KEYS, DATA_AXIS, EQUATION, TrainState,
                                       make_eval_step)

EVAL_METRICS = ("eval_loss", "eval_token_accuracy", "eval_r2_above_0.99")
R2_THRESHOLD = 0.99


def validate_config(config, workdir: str) -> None:
  """The loop's checks, the module lists and the held-out set (UserError if wrong)."""
  for option in ("trainable", "init_modules"):
    modules = tuple(config.train[option])
    if not modules or any(m not in SR_MODULE_NAMES for m in modules):
      raise UserError(f"train.{option} must name some of {', '.join(SR_MODULE_NAMES)};"
                             f" got {modules!r}")
  checks.at_least(2, config.eval, "eval", "decode_max_len")
  trainer.validate_config(config, workdir, EVAL_METRICS, tuple(config.train.init_modules))
  clip.validate_eval_set(config.eval)
  trainer.check_devices(config)


def fit_share(rows: np.ndarray, lengths: np.ndarray, batch: dict, env_cfg: EnvConfig) -> float:
  """Share of decoded rows whose expression fits its sample's points with R^2 > 0.99."""
  words = build_vocab(env_cfg).equation_id2word
  hits = 0
  for row, length, x, y, n in zip(rows, lengths, batch["x_values"], batch["y_values"],
                                  batch["n_points"]):
    expression = generated_expression([words[i] for i in row[1:length - 1]], env_cfg)
    if expression is not None and expression.output_dimension == y.shape[-1]:
      prediction = expression.evaluate(np.asarray(x[:n], np.float64))
      hits += fit_scores(np.asarray(y[:n], np.float64), prediction)[1] > R2_THRESHOLD
  return hits / len(rows)


def evaluate(state: TrainState, batches: list[dict], host_batches: list[dict], eval_step,
             encode, model: SNIPSR, env_cfg: EnvConfig, max_len: int) -> dict[str, float]:
  """Mean teacher-forced loss and token accuracy, and the greedy decodings' R^2 > 0.99 share.

  The share needs every row on one host: with several processes it is NaN.
  """
  losses, accuracies, shares = [], [], []
  for batch, host in zip(batches, host_batches):
    metrics = eval_step(state, batch)
    losses.append(metrics["loss"])
    accuracies.append(metrics["token_accuracy"])
    if jax.process_count() > 1:
      shares.append(np.nan)
      continue
    latents = encode(state.params, batch["points"], batch["n_points"])
    ids, lengths, _ = decoding.generate_from_latent(model, state.params, latents,
                                                    max_len=max_len)
    shares.append(fit_share(np.asarray(ids), np.asarray(lengths), host, env_cfg))
  return {"eval_loss": float(np.mean(jax.device_get(losses))),
          "eval_token_accuracy": float(np.mean(jax.device_get(accuracies))),
          "eval_r2_above_0.99": float(np.mean(shares))}


def sr_task(config, env_cfg: EnvConfig, model_cfg: ModelConfig, mesh) -> trainer.Task:
  """SR training: generated batches, the equation objective, the held-out evaluation."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  host = clip.eval_batches(config, env_cfg, BATCH_KEYS + ("x_values", "y_values"))
  placed = [trainer.global_batch(b, batch_sharding) for b in host]
  model = SNIPSR(model_cfg)
  encode = jax.jit(lambda params, points, n: model.apply(
      {"params": params}, points, n, method=lambda m, *a: m.encode_points(*a)))
  run_eval = functools.partial(
      evaluate, batches=placed, host_batches=host,
      eval_step=make_eval_step(model_cfg, mesh, objective=EQUATION), encode=encode,
      model=model, env_cfg=env_cfg, max_len=config.eval.decode_max_len)
  return trainer.Task(objective=EQUATION, batches=clip.training_batches(config, env_cfg),
                      evaluate=run_eval, eval_metrics=EVAL_METRICS,
                      init_modules=tuple(config.train.init_modules))


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """SR training as `config` says, in and resuming from `workdir` (see trainer)."""
  return trainer.train_and_evaluate(config, workdir, sr_task)
