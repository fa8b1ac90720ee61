"""A training workdir's layout and its checkpoints: writing, verified restoring, reading params.

The one place that knows the layout (launch.py pretrain / proppred write it; `init_from`,
`load_pretrained` and the converter read it):
- `config.json`: the model and env configs (and the run's config).
- `checkpoints/<step>/state` and `/meta`: Orbax checkpoints of the TrainState (params, optimizer
  state, step, log-temperature) and the meta (next batch index, RNG key, best eval metric, the
  CRC-32 of every array, checked when restored: snip_jax.convert.integrity).
- `checkpoints_unrestorable/`: checkpoints that failed to restore, set aside.
- `metrics.jsonl`, `tensorboard/`, `plots/` (snip_jax.train.metrics).
A converted checkpoint (python -m snip_jax.convert) is `config.json` plus `params/<module>/`.
`load_converted` reads either; a learned CLIP temperature comes back as the returned model
config's `clip_temperature`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import pathlib
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from snip_jax.convert.integrity import (CHECKSUMS_KEY, CorruptCheckpointError, array_checksums,
                                       restoring, verify_arrays)
from snip_jax.errors import UserError
from snip_jax.model import ModelConfig, check_kind
from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.train.train_step import TrainState

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"  # a converted checkpoint's Orbax params
CHECKPOINT_DIR = "checkpoints"
UNRESTORABLE_DIR = "checkpoints_unrestorable"  # checkpoints that failed to restore
STATE_ITEM, META_ITEM = "state", "meta"  # the two items of every checkpoint step
LOWER_IS_BETTER = ("loss", "mse", "nmse")  # eval metric name endings minimised, not maximised
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_config_to_json(cfg: ModelConfig) -> dict:
  values = dataclasses.asdict(cfg)
  values["dtype"] = jnp.dtype(cfg.dtype).name
  return values


def model_config_from_json(values: Mapping[str, Any]) -> ModelConfig:
  values = dict(values)
  values["dtype"] = _DTYPES[values.get("dtype", "float32")]
  return ModelConfig(**values)


def checkpoint_manager(directory: pathlib.Path, keep: int, best_metric: str,
                       eval_metrics: Sequence[str]) -> ocp.CheckpointManager:
  """Keeps the latest `keep` checkpoints and the best one by `best_metric` (async saves)."""
  if best_metric not in eval_metrics:
    raise ValueError(f"eval.best_metric must be one of {tuple(eval_metrics)}, got"
                     f" {best_metric!r}")
  metric, lower = operator.itemgetter(best_metric), lower_is_better(best_metric)
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=max(1, keep)),
      ocp.checkpoint_managers.BestN(get_metric_fn=metric, reverse=lower, n=1,
                                    keep_checkpoints_without_metrics=False)])
  # best_fn makes Orbax write each step's metrics, so BestN still knows them after a restart;
  # it then warns on every save without metrics, which steps between evaluations are.
  logging.get_absl_logger().addFilter(_not_a_missing_metrics_warning)
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=metric,
                                         best_mode="min" if lower else "max", create=True,
                                         enable_async_checkpointing=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options)


def _not_a_missing_metrics_warning(record) -> bool:
  """Drops Orbax's warning for a checkpoint saved without eval metrics (expected here)."""
  return "did not provide metrics" not in record.getMessage()


def lower_is_better(metric: str) -> bool:
  """Losses and squared errors are minimised; accuracies and R^2 maximised."""
  return metric.endswith(LOWER_IS_BETTER)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, meta: dict,
                    eval_metrics: Optional[dict]) -> None:
  """Start an async save of `state` and `meta` (plus the state's checksums) at state.step.

  The checksums read the host copy of the state that the save fetches anyway (no extra
  device sync); `eval_metrics` rank the best checkpoint.
  """
  step = int(state.step)
  meta = {**meta, CHECKSUMS_KEY: array_checksums(state)}
  manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                                META_ITEM: ocp.args.JsonSave(meta)}),
               metrics=eval_metrics, force=True)


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState,
                       step: int) -> tuple[TrainState, dict]:
  """The state (placed like `state`) and meta saved at `step`, verified against its checksums."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  where = f"checkpoint step {step} in {manager.directory}"
  with restoring(where):
    restored = manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract), META_ITEM: ocp.args.JsonRestore()}))
  meta = dict(restored[META_ITEM])
  verify_arrays(restored[STATE_ITEM], meta.pop(CHECKSUMS_KEY, None), where)
  return restored[STATE_ITEM], meta


def restore_latest_good(manager: ocp.CheckpointManager, state: TrainState,
                        workdir: pathlib.Path) -> tuple[TrainState, dict, int]:
  """The newest checkpoint that restores intact; newer bad ones are set aside, one warning each."""
  steps, failed = sorted(manager.all_steps(), reverse=True), []
  for step in steps:
    try:
      restored_state, meta = restore_checkpoint(manager, state, step)
    except CorruptCheckpointError as error:
      failed.append(error)
      continue
    for bad, error in zip(steps, failed):
      _set_aside(manager, bad, workdir / UNRESTORABLE_DIR)
      logging.warning("%s; moved it to %s and resumed from step %d", error,
                      workdir / UNRESTORABLE_DIR, step)
    return restored_state, meta, step
  raise UserError(
      f"none of the checkpoints in {manager.directory} restores (a changed model/optimizer"
      " config, or corrupt files?): " + "; ".join(map(str, failed))
      + ". Restore the config they were written with, or use a new workdir to start over")


def _set_aside(manager: ocp.CheckpointManager, step: int, directory: pathlib.Path) -> None:
  """Move checkpoint `step` out of the manager's directory so a new save can take its step."""
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    (pathlib.Path(manager.directory) / str(step)).rename(target)
  multihost_utils.sync_global_devices(f"snip_set_aside_checkpoint_{step}")
  manager.reload()


def load_converted(path: str | os.PathLike, kind: Optional[str] = None
                   ) -> tuple[ModelConfig, EnvConfig, Any]:
  """(model config, env config, params) from a converted directory or a training workdir.

  A training workdir gives the params of its latest checkpoint, and a temperature it learned
  as the model config's clip_temperature. kind: the model kind required ("snip" or "sr";
  None: either), else a one-line ValueError.
  """
  path = pathlib.Path(path).absolute()
  if not (path / CONFIG_FILE).exists():
    raise FileNotFoundError(f"{path} is neither a converted checkpoint nor a training workdir"
                            f" (no {CONFIG_FILE}); convert a .pth first: python -m"
                            " snip_jax.convert --pth FILE --out DIR")
  config = json.loads((path / CONFIG_FILE).read_text())
  model_cfg = model_config_from_json(config["model"])
  if (path / PARAMS_DIR).is_dir():
    params = _converted_params(path, config.get(CHECKSUMS_KEY))
  else:
    params, log_temperature = latest_checkpoint(path / CHECKPOINT_DIR)
    if log_temperature is not None:
      model_cfg = model_cfg.replace(clip_temperature=math.exp(log_temperature))
  check_kind(params, kind, str(path))
  return model_cfg, default_env_config(**config["env"]), params


def _converted_params(path: pathlib.Path, checksums: Optional[Mapping[str, str]]) -> Any:
  """The params of converted directory `path`, verified against its recorded `checksums`."""
  where = f"the converted checkpoint {path}"
  fix = "Convert the .pth again: python -m snip_jax.convert --pth FILE --out DIR --overwrite"
  checkpointer = ocp.StandardCheckpointer()
  with restoring(where, fix):
    params = {module.name: jax.tree.map(np.asarray, checkpointer.restore(module))
              for module in sorted((path / PARAMS_DIR).iterdir())}
  verify_arrays(params, checksums, where, fix)
  return params


def checkpoint_steps(directory: pathlib.Path) -> list[int]:
  """The steps saved in a workdir's checkpoints/ directory, oldest first."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def latest_checkpoint(directory: pathlib.Path) -> tuple[Any, Optional[float]]:
  """(model params, learned log-temperature or None) of the newest step in `directory`."""
  steps = checkpoint_steps(directory)
  if not steps:
    raise FileNotFoundError(f"{directory} holds no checkpoint: has that training run saved one?")
  step_dir = directory / str(steps[-1])
  where = f"checkpoint step {steps[-1]} in {directory}"
  fix = (f"Move {step_dir} out of {directory} to use the previous step (rerunning its training"
         " job does that itself)")
  with restoring(where, fix):
    state = ocp.StandardCheckpointer().restore(step_dir / STATE_ITEM)
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / META_ITEM)
  params = jax.tree.map(np.asarray, state["params"])
  log_temperature = state.get("log_temperature")
  checked = {"params": params}
  if log_temperature is not None:
    checked["log_temperature"] = np.asarray(log_temperature)
  verify_arrays(checked, meta.get(CHECKSUMS_KEY), where, fix)
  return params, None if log_temperature is None else float(np.asarray(log_temperature))
