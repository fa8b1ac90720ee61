"""The training loop: data, steps, evaluation, checkpoints, metrics, resumption.

`train_and_evaluate(config, workdir)` runs `configs/pretrain.py` (launch.py job `pretrain`);
with `make_task=snip_jax.tasks.proppred.proppred_task` the same loop trains the property
predictor (`configs/proppred.py`). A `Task` says what differs: the objective, the batches and
the evaluation. Everything lives in `workdir`:
- `config.json`: the model and env configs (and the run's config), so `init_from` and
  `load_pretrained` accept the workdir like a converted checkpoint.
- `checkpoints/<step>/`: Orbax checkpoints of the TrainState (params, optimizer state, step,
  log-temperature) and `meta` (next batch index, RNG key, best eval metric, the CRC-32 of
  every array, checked when it is restored: snip_jax.convert.integrity). The latest
  `train.keep_checkpoints` are kept, plus the best by `eval.best_metric`.
- `metrics.jsonl`: one JSON object per train log (step, loss, accuracy_f2y, accuracy_y2f, lr,
  grad_norm, temperature, samples_per_s, step_time_s; means over the log interval) and per
  evaluation (step, eval_loss, eval_accuracy_f2y, eval_accuracy_y2f; the task's eval metrics).
- `tensorboard/`: the same scalars as TensorBoard event files; `plots/*.png` at the end.

Resuming: a rerun with the same workdir restores the latest checkpoint and continues the data
stream at the batch after it, so it follows the same trajectory as an uninterrupted run. A
checkpoint that fails to restore (e.g. truncated files) or restores corrupt (arrays that differ
from their checksums, NaN/inf) gets one warning line, is moved to `checkpoints_unrestorable/`,
and the previous one is used instead.
SIGTERM (preemption) makes the loop save a checkpoint at the current step and return
(launch.py then exits 75). `validate_clip_config` (launch.py runs it first) checks the
settings, data sources and workdir before anything is built or written.

Multi-host: `jax.distributed.initialize` runs when `config.distributed.coordinator_address`
is set (with num_processes and process_id), when JAX_COORDINATOR_ADDRESS is in the
environment (with JAX_NUM_PROCESSES and JAX_PROCESS_ID), or under SLURM / Open MPI with more
than one task (jax detects the cluster). Each process builds only its share of every global
batch: with generated data, global batch k is the concatenation over processes p of stream
chunk k * n + p (batch_size / n samples each), so it depends on (seed, k, n) only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
import pathlib
import queue
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from snip_jax import __version__, checks
from snip_jax.convert.converter import (CONFIG_FILE, WORKDIR_CHECKPOINTS, load_converted,
                                       model_config_from_json, model_config_to_json)
from snip_jax.convert.integrity import (CHECKSUMS_KEY, CorruptCheckpointError, array_checksums,
                                       restoring, verify_arrays)
from snip_jax.data.batching import trim_equations
from snip_jax.data.export import env_config_from, scan_corpus
from snip_jax.data.stream import batch_stream
from snip_jax.errors import UserError
from snip_jax.model import SNIP, ModelConfig, clip_logits, init_params
from snip_jax.symbolic.config import EnvConfig
from snip_jax.train import plots
from snip_jax.train.optimizer import inverse_sqrt_schedule, snip_optimizer
from snip_jax.train.train_step import (BATCH_KEYS, CLIP, DATA_AXIS, Objective, TrainState,
                                       clip_temperature, create_train_state, data_mesh,
                                       make_eval_step, make_train_step)

CHECKPOINT_DIR = WORKDIR_CHECKPOINTS
UNRESTORABLE_DIR = "checkpoints_unrestorable"  # checkpoints that failed to restore
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVAL_METRICS = ("eval_loss", "eval_accuracy_f2y", "eval_accuracy_y2f")
LOWER_IS_BETTER = ("loss", "mse", "nmse")  # eval metric name endings minimised, not maximised
_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Model options that may differ from an init_from checkpoint's (no effect on the weights).
_FREE_MODEL_OPTIONS = ("dtype", "normalize_latents", "dropout", "attention_dropout",
                       "clip_temperature", "pool_over_padding")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; no checkpoint was written after it."""


@dataclasses.dataclass(frozen=True)
class Task:
  """What the shared loop trains on and how it evaluates; see clip_task.

  `host_batches(start_batch)` yields this process's rows of every global batch from
  `start_batch` on (a deterministic function of the batch index, for exact resumption);
  `evaluate(state)` returns the `eval_metrics`; `init_modules` are the modules `init_from`
  copies (the rest keep their fresh initialisation).
  """

  objective: Objective
  host_batches: Callable[[int], Iterator[dict]]
  evaluate: Callable[[TrainState], dict[str, float]]
  eval_metrics: tuple[str, ...]
  init_modules: Optional[tuple[str, ...]] = None  # None: all modules


# ------------------------------------------------------------------------- set-up


def initialize_distributed(dist) -> None:
  """jax.distributed.initialize from the config or the environment; no-op for one process."""
  if jax.distributed.is_initialized():
    return
  if dist.coordinator_address:
    jax.distributed.initialize(dist.coordinator_address,
                               dist.num_processes if dist.num_processes > 0 else None,
                               dist.process_id if dist.process_id >= 0 else None)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                               int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1):
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def model_config(config, env_cfg: EnvConfig) -> ModelConfig:
  """The ModelConfig of `config.model` and the train options, sized for `env_cfg`."""
  dtype = config.train.compute_dtype
  if dtype not in _COMPUTE_DTYPES:
    raise ValueError(f"train.compute_dtype must be one of {sorted(_COMPUTE_DTYPES)}, got"
                     f" {dtype!r}")
  return ModelConfig.from_env(env_cfg, **config.model.to_dict(),
                              normalize_latents=config.train.normalize_latents,
                              dtype=_COMPUTE_DTYPES[dtype])


def initial_params(config, model_cfg: ModelConfig, rng: jax.Array,
                   modules: Optional[Sequence[str]] = None) -> Any:
  """Fresh params, with `modules` (default all) from `train.init_from` (checked to fit).

  `train.init_from` is a converted directory (launch.py convert job) or a workdir of ours
  (its latest checkpoint).
  """
  fresh = init_params(SNIP(model_cfg), rng)
  if not config.train.init_from:
    return fresh
  loaded_cfg, _, loaded = load_converted(config.train.init_from)
  check_compatible(model_cfg, loaded_cfg, config.train.init_from)
  modules = tuple(fresh) if modules is None else tuple(modules)
  logging.info("initialised %s from %s", ", ".join(modules), config.train.init_from)
  return {m: loaded[m] if m in modules else p for m, p in fresh.items()}


def check_compatible(model_cfg: ModelConfig, loaded_cfg: ModelConfig, source: str) -> None:
  """Raise naming every model/vocabulary option where `source`'s weights differ from the config."""
  wanted = model_cfg.replace(**{k: getattr(loaded_cfg, k) for k in _FREE_MODEL_OPTIONS})
  if wanted == loaded_cfg:
    return
  diffs = [f"{f.name}: config {getattr(wanted, f.name)!r} vs checkpoint"
           f" {getattr(loaded_cfg, f.name)!r}" for f in dataclasses.fields(wanted)
           if getattr(wanted, f.name) != getattr(loaded_cfg, f.name)]
  vocab = any(d.startswith(("n_words", "n_float_words")) for d in diffs)
  hint = " (another vocabulary: set the env options it was trained with)" if vocab else ""
  raise UserError(f"train.init_from={source} does not fit this config{hint}; set these to"
                   f" match: {'; '.join(diffs)}")


def write_run_config(workdir: pathlib.Path, model_cfg: ModelConfig, env_cfg: EnvConfig,
                     config) -> None:
  """workdir/config.json: what init_from and load_pretrained need to read the checkpoints."""
  if jax.process_index() != 0:
    return
  record = {"model": model_config_to_json(model_cfg), "env": dataclasses.asdict(env_cfg),
            "source": {"workdir": str(workdir), "job": config.job},
            "snip_jax_version": __version__,
            "run_config": json.loads(config.to_json_best_effort())}
  (workdir / CONFIG_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")


def make_optimizer(optim) -> tuple[Any, Callable]:
  """(the original's optimizer, its learning-rate schedule) from `config.optim`."""
  if optim.optimizer != "adam_inverse_sqrt":
    raise ValueError(f"optim.optimizer={optim.optimizer!r} is not implemented; use"
                     " 'adam_inverse_sqrt' (the original's pretraining optimizer)")
  optimizer = snip_optimizer(optim.lr, optim.warmup_updates, optim.warmup_init_lr,
                             optim.clip_grad_norm, optim.b1, optim.b2, optim.eps)
  return optimizer, inverse_sqrt_schedule(optim.lr, optim.warmup_updates, optim.warmup_init_lr)


def local_batch_size(batch_size: int, option: str = "train.batch_size") -> int:
  """This process's share of a global batch, which must split evenly over processes/devices."""
  checks.multiple_of(batch_size, jax.device_count(), option, "the device count")
  return batch_size // jax.process_count()


# ------------------------------------------------------------------------- validation


def validate_config(config, workdir: str,
                    eval_metrics: Sequence[str] = EVAL_METRICS) -> EnvConfig:
  """Check the loop's settings, init_from and the workdir before anything is built or written.

  Raises UserError naming the first wrong setting; returns the EnvConfig. The batch sizes
  are checked against the devices by check_devices, which a job's validation calls last.
  """
  checks.workdir(workdir)
  tc = config.train
  checks.at_least(1, tc, "train", "batch_size", "num_train_steps", "log_every_steps",
                  "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                  "n_steps_per_epoch", "grad_accum_steps")
  checks.at_least(0, tc, "train", "num_workers", "prefetch_batches", "equation_bucket")
  checks.at_least(1, config.eval, "eval", "batch_size")
  checks.one_of(config.eval.best_metric, eval_metrics, "eval.best_metric")
  with checks.as_user_error():
    env_cfg = env_config_from(config.env)
    model_cfg = model_config(config, env_cfg)
    make_optimizer(config.optim)
  if tc.init_from:
    _check_init_from(tc.init_from, model_cfg)
  return env_cfg


def check_devices(config) -> None:
  """The batch sizes split over the devices (after starting jax.distributed, as the loop does)."""
  initialize_distributed(config.distributed)
  checks.multiple_of(config.train.batch_size, jax.device_count() * config.train.grad_accum_steps,
                     "train.batch_size", "the device count times train.grad_accum_steps")
  local_batch_size(config.eval.batch_size, "eval.batch_size")


def _check_init_from(path: str, model_cfg: ModelConfig) -> None:
  """train.init_from holds a config.json whose model fits `model_cfg` (the weights load later)."""
  source = checks.readable(path, "train.init_from", "dir",
                           hint="a converted checkpoint or a training workdir")
  saved = source / CONFIG_FILE
  if not saved.is_file():
    raise UserError(f"train.init_from={path} is neither a converted checkpoint nor a training"
                    f" workdir (no {CONFIG_FILE}); convert a .pth first: python -m"
                    " snip_jax.convert --pth FILE --out DIR")
  saved_model = json.loads(saved.read_text())["model"]
  check_compatible(model_cfg, model_config_from_json(saved_model), path)


def validate_clip_config(config, workdir: str) -> None:
  """validate_config plus configs/pretrain.py's data source and held-out set (UserError)."""
  env_cfg = validate_config(config, workdir)
  _check_eval_set(config.eval)
  data = config.data
  checks.one_of(data.source, ("generate", "jsonl", "tfds"), "data.source")
  checks.at_least(0, data, "data", "shuffle_buffer")
  if data.source == "jsonl":
    scan_corpus(checks.readable(data.jsonl_path, "data.jsonl_path",
                                hint="a data.prefix file (launch.py export job)"), env_cfg)
  elif data.source == "tfds":
    from snip_jax.data.tfds_corpus import corpus_source  # pylint: disable=g-import-not-at-top

    tfds_dir = checks.readable(data.tfds_dir, "data.tfds_dir", "dir",
                               hint="the output of build_tfds_corpus")
    with checks.as_user_error(FileNotFoundError):
      corpus_source(tfds_dir, data.tfds_split, env_cfg)
  check_devices(config)


def _check_eval_set(ev) -> None:
  """eval.n_samples must be a positive multiple of eval.batch_size (whole eval batches)."""
  checks.at_least(1, ev, "eval", "n_samples", "batch_size")
  checks.multiple_of(ev.n_samples, ev.batch_size, "eval.n_samples", "eval.batch_size")


# ------------------------------------------------------------------------- data


def host_batches(config, env_cfg: EnvConfig, start_batch: int) -> Iterator[dict]:
  """This process's local CLIP training batches from `start_batch` on, as numpy dicts."""
  source, seed = config.data.source, config.train.seed
  local_bs = local_batch_size(config.train.batch_size)
  index, count = jax.process_index(), jax.process_count()
  if source == "generate":
    stream = batch_stream(env_cfg, seed=seed, batch_size=local_bs,
                          num_workers=config.train.num_workers, start_batch=start_batch,
                          process_index=index, process_count=count)
    return ({k: chunk.payload[k] for k in BATCH_KEYS} for chunk in stream)
  if source == "jsonl":
    from snip_jax.data.tfds_corpus import jsonl_batches  # pylint: disable=g-import-not-at-top

    return jsonl_batches(config.data.jsonl_path, env_cfg, local_bs, seed=seed,
                         shuffle_buffer=config.data.shuffle_buffer, num_epochs=None,
                         shard_index=index, shard_count=count, start_step=start_batch)
  if source == "tfds":
    from snip_jax.data.tfds_corpus import corpus_batches, corpus_source  # pylint: disable=g-import-not-at-top

    corpus = corpus_source(config.data.tfds_dir, config.data.tfds_split, env_cfg)
    return corpus_batches(corpus, local_bs, seed, shard_index=index, shard_count=count,
                          start_step=start_batch)
  raise ValueError(f"data.source must be 'generate', 'jsonl' or 'tfds', got {source!r}")


def global_batch(local: dict, sharding: NamedSharding,
                 keys: Sequence[str] = BATCH_KEYS, equation_bucket: int = 0) -> dict:
  """Global arrays split along the batch axis from every process's local rows.

  `equation_bucket` > 0 trims the equation padding to a multiple of it (same latents, less
  work; see trim_equations). Only in single-process runs: every process would need the same
  width, so multi-process runs keep the full 200 columns.
  """
  if equation_bucket and jax.process_count() == 1 and "equations" in keys:
    local = trim_equations(local, equation_bucket)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k]))
          for k in keys}


class Prefetcher:
  """A background thread keeping `size` batches placed on the devices ahead of the loop."""

  _END = object()

  def __init__(self, batches: Iterator[dict], place: Callable[[dict], dict], size: int):
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(batches, place), daemon=True,
                                     name="prefetch")
    self._thread.start()

  def _put(self, item) -> bool:
    """Queue `item` unless asked to stop first."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, batches, place) -> None:
    """Place batches until the stream ends, fails or close() is called."""
    try:
      for batch in batches:
        if not self._put(place(batch)):
          break
      else:
        self._put(self._END)
    except BaseException as error:  # pylint: disable=broad-except
      self._put(error)
    finally:
      if hasattr(batches, "close"):
        batches.close()

  def __next__(self) -> dict:
    """The next placed batch; re-raises a data error in the loop's thread."""
    item = self._queue.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise RuntimeError(f"the training data stream failed: {item!r}") from item
    return item

  def close(self) -> None:
    """Stop the thread (and with it the data workers)."""
    self._stop.set()
    self._thread.join(timeout=30)


# ------------------------------------------------------------------------- evaluation


def eval_batches(config, env_cfg: EnvConfig) -> list[dict]:
  """The held-out generated set (seed train.seed + eval.seed_offset) in eval batches."""
  n, bs = config.eval.n_samples, config.eval.batch_size
  _check_eval_set(config.eval)
  seed = config.train.seed + config.eval.seed_offset
  start = time.time()
  batches = [{k: chunk.payload[k] for k in BATCH_KEYS}
             for chunk in batch_stream(env_cfg, seed=seed, batch_size=bs,
                                       num_workers=config.train.num_workers, end_batch=n // bs)]
  logging.info("generated the eval set: %d samples in %.1f s", n, time.time() - start)
  rows = local_batch_size(bs, "eval.batch_size")
  offset = jax.process_index() * rows
  return [{k: v[offset:offset + rows] for k, v in b.items()} for b in batches]


def make_encode(model_cfg: ModelConfig) -> Callable:
  """Jitted (params, batch) -> (z_f, z_y), replicated, for retrieval over the eval set."""
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


def evaluate(state: TrainState, batches: list[dict], eval_step: Callable, encode: Callable,
             model_cfg: ModelConfig) -> dict[str, float]:
  """Mean eval-batch CLIP loss and retrieval accuracy among all the eval set's samples."""
  losses, z_fs, z_ys = [], [], []
  for batch in batches:
    losses.append(eval_step(state, batch)["loss"])
    z_f, z_y = encode(state.params, batch)
    z_fs.append(z_f)
    z_ys.append(z_y)
  temperature = clip_temperature(model_cfg, state.log_temperature)
  f2y, y2f = _retrieval_accuracies(jnp.concatenate(z_fs), jnp.concatenate(z_ys), temperature,
                                   model_cfg.normalize_latents)
  return {"eval_loss": float(np.mean(jax.device_get(losses))),
          "eval_accuracy_f2y": float(f2y), "eval_accuracy_y2f": float(y2f)}


def clip_task(config, env_cfg: EnvConfig, model_cfg: ModelConfig, mesh) -> Task:
  """CLIP pretraining: generated or corpus batches, retrieval over the held-out set."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  evals = [global_batch(b, batch_sharding, equation_bucket=config.train.equation_bucket)
           for b in eval_batches(config, env_cfg)]
  run_eval = functools.partial(evaluate, batches=evals, eval_step=make_eval_step(model_cfg, mesh),
                               encode=make_encode(model_cfg), model_cfg=model_cfg)
  return Task(objective=CLIP,
              host_batches=functools.partial(host_batches, config, env_cfg),
              evaluate=run_eval, eval_metrics=EVAL_METRICS)


# ------------------------------------------------------------------------- checkpoints


def checkpoint_manager(directory: pathlib.Path, keep: int, best_metric: str,
                       eval_metrics: Sequence[str] = EVAL_METRICS) -> ocp.CheckpointManager:
  """Keeps the latest `keep` checkpoints and the best one by `best_metric` (async saves)."""
  if best_metric not in eval_metrics:
    raise ValueError(f"eval.best_metric must be one of {tuple(eval_metrics)}, got"
                     f" {best_metric!r}")
  metric, lower = operator.itemgetter(best_metric), _lower_is_better(best_metric)
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


def _lower_is_better(metric: str) -> bool:
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
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=eval_metrics, force=True)


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState,
                       step: int) -> tuple[TrainState, dict]:
  """The state (placed like `state`) and meta saved at `step`, verified against its checksums."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  where = f"checkpoint step {step} in {manager.directory}"
  with restoring(where):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  meta = dict(restored["meta"])
  verify_arrays(restored["state"], meta.pop(CHECKSUMS_KEY, None), where)
  return restored["state"], meta


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



# ------------------------------------------------------------------------- metrics


class MetricWriter:
  """Appends to metrics.jsonl and TensorBoard (process 0 only; others drop the records)."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self.tensorboard_dir = workdir / TENSORBOARD_DIR
    self._tb = None
    if not self.active:
      return
    _drop_records_after(self.path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=resume_step + 1,
                             flush_secs=10)

  def write(self, step: int, record: dict[str, float]) -> None:
    """One JSON line {step, **record} and one TensorBoard scalar per field."""
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **record}) + "\n")
    for key, value in record.items():
      self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    """Flush and close the event file."""
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
  """Forget records a stopped run logged past the checkpoint it resumes from."""
  if not path.exists():
    return
  lines = [line for line in path.read_text().splitlines()
           if line.strip() and _record_step(line, path) <= step]
  path.write_text("".join(line + "\n" for line in lines))


def _record_step(line: str, path: pathlib.Path) -> float:
  """A metrics line's step; inf (dropped) for a line a killed run left half-written."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError):
    logging.warning("dropping an unreadable line of %s (a killed run's last write?): %.80r",
                    path, line)
    return math.inf


def _check_finite(step: int, metrics: dict, manager: ocp.CheckpointManager) -> None:
  """Raise NonFiniteLossError naming `step` if its loss is NaN or infinite."""
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    latest = manager.latest_step()
    resume = ("starts over (no checkpoint was saved)" if latest is None else
              f"resumes from step {latest} in {manager.directory}")
    raise NonFiniteLossError(
        f"the training loss is {loss} at step {step}; stopped without saving it. Rerunning the"
        f" same command {resume} and meets the same batches again (checkpoints are verified"
        " when restored: the cause is the settings or the data, not a damaged checkpoint), so"
        " first lower optim.lr or raise optim.warmup_updates, or check the data for extreme"
        " values")


class _SigtermFlag:
  """Sets `requested` on SIGTERM (preemption); the loop saves and stops at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
    self.requested = True

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------- the loop


def _mean_train_metrics(window: list[dict]) -> dict[str, float]:
  """Means over a log interval of the step metrics (fetched from the devices once)."""
  fetched = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train_and_evaluate(config, workdir: str | os.PathLike,
                       make_task: Callable[..., Task] = clip_task) -> dict[str, Any]:
  """Train SNIP as `config` says (CLIP pretraining by default), in and resuming from `workdir`.

  `make_task(config, env_cfg, model_cfg, mesh)` builds the Task (default: clip_task).
  Returns the final metrics: the last train log's means, the last evaluation, `step`,
  `preempted` (True if SIGTERM stopped the run) and where the outputs are.
  """
  initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  tc = config.train
  env_cfg = env_config_from(config.env)
  model_cfg = model_config(config, env_cfg)
  mesh = data_mesh()
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  init_rng, step_rng = jax.random.split(jax.random.key(tc.seed))
  task = make_task(config, env_cfg, model_cfg, mesh)

  optimizer, schedule = make_optimizer(config.optim)
  params = initial_params(config, model_cfg, init_rng, task.init_modules)
  state = create_train_state(model_cfg, params, optimizer, trainable=tuple(tc.trainable),
                             learnable_temperature=tc.learnable_temperature)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  train_step = make_train_step(model_cfg, optimizer, mesh, trainable=tuple(tc.trainable),
                               learnable_temperature=tc.learnable_temperature,
                               grad_accum_steps=tc.grad_accum_steps, lr_schedule=schedule,
                               objective=task.objective)

  manager = checkpoint_manager(workdir / CHECKPOINT_DIR, tc.keep_checkpoints,
                               config.eval.best_metric, task.eval_metrics)
  write_run_config(workdir, model_cfg, env_cfg, config)
  meta = {"next_batch": 0, "rng": jax.device_get(jax.random.key_data(step_rng)).tolist(),
          "best": None, "batch_size": tc.batch_size, "process_count": jax.process_count()}
  if manager.all_steps():
    state, meta, latest = restore_latest_good(manager, state, workdir)
    _check_resumable(meta, tc.batch_size)
    step_rng = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
    logging.info("resumed from %s/%d (next batch %d)", manager.directory, latest,
                 meta["next_batch"])
  step = int(state.step)
  writer = MetricWriter(workdir, step)
  run_eval = task.evaluate

  train_log, eval_metrics, last_eval_step, preempted = {}, {}, -1, False
  keys = task.objective.batch_keys
  prefetch = Prefetcher(task.host_batches(meta["next_batch"]),
                        lambda b: global_batch(b, batch_sharding, keys, tc.equation_bucket),
                        tc.prefetch_batches)
  try:
    with _SigtermFlag() as sigterm:
      window, previous, t_log, steps_at_log = [], None, time.time(), step
      while step < tc.num_train_steps:
        if sigterm.requested or manager.reached_preemption(step):
          preempted = True
          break
        state, metrics = train_step(state, next(prefetch), step_rng)
        step += 1
        if previous is not None:
          _check_finite(*previous, manager)
        previous = (step, metrics)
        window.append(metrics)
        last = step == tc.num_train_steps
        if step % tc.log_every_steps == 0 or last:
          _check_finite(step, metrics, manager)
          elapsed = time.time() - t_log
          train_log = _mean_train_metrics(window)
          n = step - steps_at_log
          train_log.update(samples_per_s=n * tc.batch_size / elapsed, step_time_s=elapsed / n)
          writer.write(step, train_log)
          _log_progress(step, tc, train_log)
          window, t_log, steps_at_log = [], time.time(), step
        improved = False
        if step % tc.eval_every_steps == 0 or last:
          _check_finite(step, metrics, manager)
          t_eval = time.time()
          eval_metrics, last_eval_step = run_eval(state), step
          t_log += time.time() - t_eval  # throughput counts training time only
          writer.write(step, eval_metrics)
          logging.info("step %d eval: %s", step, _fmt(eval_metrics))
          improved = _is_better(eval_metrics[config.eval.best_metric], meta["best"],
                                config.eval.best_metric)
          if improved:
            meta["best"] = {"step": step, "value": eval_metrics[config.eval.best_metric]}
        if step % tc.checkpoint_every_steps == 0 or last or improved:
          _check_finite(step, metrics, manager)
          meta["next_batch"] = step
          save_checkpoint(manager, state, meta,
                          eval_metrics if last_eval_step == step else None)
      if preempted and manager.latest_step() != step:
        if previous is not None:
          _check_finite(*previous, manager)
        meta["next_batch"] = step
        save_checkpoint(manager, state, meta, None)
        logging.warning("preempted: saved step %d; rerun the same command to resume", step)
      if not preempted and last_eval_step != step:
        eval_metrics = run_eval(state)
  finally:
    prefetch.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()

  pngs = plots.plot_workdir(workdir) if jax.process_index() == 0 else []
  return {**train_log, **eval_metrics, "step": step, "preempted": preempted,
          "checkpoint_dir": str(manager.directory), "metrics_file": str(writer.path),
          "tensorboard_dir": str(writer.tensorboard_dir), "plots": [str(p) for p in pngs]}


def _check_resumable(meta: dict, batch_size: int) -> None:
  """Warn when the restored run used another global batch or process count (other data)."""
  if meta.get("batch_size") != batch_size or meta.get("process_count") != jax.process_count():
    logging.warning("the checkpoint was written with batch_size %s on %s processes, this run"
                    " has %d on %d: the data stream after the resume point differs",
                    meta.get("batch_size"), meta.get("process_count"), batch_size,
                    jax.process_count())


def _is_better(value: float, best: Optional[dict], metric: str) -> bool:
  """Whether `value` beats the best so far of `metric`."""
  if best is None:
    return True
  return value < best["value"] if _lower_is_better(metric) else value > best["value"]


def _fmt(metrics: dict[str, float]) -> str:
  """`k=v` pairs for a log line."""
  return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _log_progress(step: int, tc, train_log: dict[str, float]) -> None:
  """One progress line: step, epoch, loss (and accuracies), throughput, ETA."""
  eta_s = (tc.num_train_steps - step) * train_log["step_time_s"]
  accuracies = (f" acc f2y {train_log['accuracy_f2y']:.3f} y2f {train_log['accuracy_y2f']:.3f}"
                if "accuracy_f2y" in train_log else "")
  logging.info("step %d/%d (epoch %.2f) loss %.4f%s lr %.3g | %.1f samples/s, ETA %s", step,
               tc.num_train_steps, step / tc.n_steps_per_epoch, train_log["loss"], accuracies,
               train_log.get("lr", float("nan")), train_log["samples_per_s"],
               time.strftime("%H:%M:%S", time.gmtime(eta_s)) if eta_s < 86400
               else f"{eta_s / 86400:.1f} days")
