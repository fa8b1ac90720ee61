"""The training loop shared by every task: set-up, steps, evaluation, checkpoints, resumption.

`train_and_evaluate(config, workdir, make_task)` trains what the Task says (snip_jax.tasks.clip:
CLIP pretraining, configs/pretrain.py; snip_jax.tasks.proppred: the property predictor). A
`Task` gives the objective, the batches (a Grain dataset indexed by global batch), the
evaluation and which modules `init_from` copies. The workdir layout and the checkpoints are
snip_jax.train.checkpoints'; metrics.jsonl, TensorBoard and plots snip_jax.train.metrics'.

The steps between log steps never wait for the host: metrics stay on the devices and are
fetched once per log interval (`train.transfer_guard='disallow'` makes any other
device-to-host transfer in those steps an error). A NaN/inf loss is caught there, or before a
checkpoint or an evaluation, naming the step; a NaN state is never saved.

Resuming: a rerun with the same workdir restores the latest checkpoint and continues the data
at the batch after it, so it follows the same trajectory as an uninterrupted run. A checkpoint
that fails to restore (e.g. truncated files) or restores corrupt (arrays that differ from their
checksums, NaN/inf) gets one warning line, is moved to `checkpoints_unrestorable/`, and the
previous one is used instead. SIGTERM (preemption) makes the loop save a checkpoint at the
current step and return (launch.py then exits 75).

Multi-host: `jax.distributed.initialize` runs when `config.distributed.coordinator_address`
is set (with num_processes and process_id), when JAX_COORDINATOR_ADDRESS is in the
environment (with JAX_NUM_PROCESSES and JAX_PROCESS_ID), or under SLURM / Open MPI with more
than one task (jax detects the cluster). Each process reads only its rows of every global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from snip_jax import __version__, checks
from snip_jax.data import pipeline
from snip_jax.data.batching import trim_equations
from snip_jax.errors import UserError
from snip_jax.model import SNIP, ModelConfig, init_params
from snip_jax.symbolic.config import EnvConfig, env_config_from
from snip_jax.train import checkpoints, metrics, plots
from snip_jax.train.checkpoints import (CHECKPOINT_DIR, CONFIG_FILE, load_converted,
                                        model_config_from_json, model_config_to_json)
from snip_jax.train.optimizer import inverse_sqrt_schedule, snip_optimizer
from snip_jax.train.train_step import (BATCH_KEYS, DATA_AXIS, Objective, TrainState,
                                       create_train_state, data_mesh, make_train_step)

_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Model options that may differ from an init_from checkpoint's (no effect on the weights).
_FREE_MODEL_OPTIONS = ("dtype", "normalize_latents", "dropout", "attention_dropout",
                       "clip_temperature", "pool_over_padding", "attention")
# Options of the decoder side only: free when init_from copies no decoder or mapper.
DECODER_OPTIONS = ("dec_emb_dim", "n_dec_layers", "n_dec_heads", "n_dec_hidden_layers",
                   "share_inout_emb", "max_src_len")
TRANSFER_GUARDS = ("allow", "log", "disallow")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; no checkpoint was written after it."""


@dataclasses.dataclass(frozen=True)
class Task:
  """What the shared loop trains on and how it evaluates.

  `batches[k]` is this process's rows of global batch k (a pure function of k, for exact
  resumption); `evaluate(state)` returns the `eval_metrics`; `init_modules` are the modules
  `init_from` copies (the rest keep their fresh initialisation).
  """

  objective: Objective
  batches: grain.MapDataset
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


def _free_options(modules: Optional[Sequence[str]]) -> tuple[str, ...]:
  """The options init_from's weights may differ in when it provides `modules` (None: all)."""
  encoder_side = modules is not None and not {"decoder", "mapper"} & set(modules)
  return _FREE_MODEL_OPTIONS + (DECODER_OPTIONS if encoder_side else ())


def load_init_from(config, model_cfg: ModelConfig,
                   modules: Optional[Sequence[str]] = None) -> Optional[tuple[ModelConfig, Any]]:
  """(its model config, its params) of `train.init_from`, checked to fit; None without one.

  `train.init_from` is a converted directory (launch.py convert job) or a workdir of ours
  (its latest checkpoint; a learned temperature is the returned config's clip_temperature).
  """
  if not config.train.init_from:
    return None
  loaded_cfg, _, loaded = load_converted(config.train.init_from)
  check_compatible(model_cfg, loaded_cfg, config.train.init_from, _free_options(modules))
  return loaded_cfg, loaded


def initial_params(config, model_cfg: ModelConfig, rng: jax.Array,
                   modules: Optional[Sequence[str]] = None,
                   loaded: Optional[tuple[ModelConfig, Any]] = None, model_class=SNIP) -> Any:
  """Fresh params of `model_class`, with `modules` (default all) from `train.init_from` (or
  `loaded` from it)."""
  fresh = init_params(model_class(model_cfg), rng)
  loaded = loaded or load_init_from(config, model_cfg, modules)
  if loaded is None:
    return fresh
  loaded = loaded[1]
  modules = tuple(fresh) if modules is None else tuple(modules)
  logging.info("initialised %s from %s", ", ".join(modules), config.train.init_from)
  return {m: loaded[m] if m in modules else p for m, p in fresh.items()}


def check_compatible(model_cfg: ModelConfig, loaded_cfg: ModelConfig, source: str,
                     free: Sequence[str] = _FREE_MODEL_OPTIONS) -> None:
  """Raise naming every model/vocabulary option where `source`'s weights differ from the config
  (except the `free` ones)."""
  wanted = model_cfg.replace(**{k: getattr(loaded_cfg, k) for k in free})
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


def validate_config(config, workdir: str, eval_metrics: Sequence[str],
                    init_modules: Optional[Sequence[str]] = None) -> EnvConfig:
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
  checks.one_of(tc.transfer_guard, TRANSFER_GUARDS, "train.transfer_guard")
  with checks.as_user_error():
    env_cfg = env_config_from(config.env)
    model_cfg = model_config(config, env_cfg)
    make_optimizer(config.optim)
  if tc.init_from:
    _check_init_from(tc.init_from, model_cfg, init_modules)
  return env_cfg


def check_devices(config) -> None:
  """The batch sizes split over the devices (after starting jax.distributed, as the loop does)."""
  initialize_distributed(config.distributed)
  checks.multiple_of(config.train.batch_size, jax.device_count() * config.train.grad_accum_steps,
                     "train.batch_size", "the device count times train.grad_accum_steps")
  local_batch_size(config.eval.batch_size, "eval.batch_size")


def _check_init_from(path: str, model_cfg: ModelConfig,
                     modules: Optional[Sequence[str]] = None) -> None:
  """train.init_from holds a config.json whose model fits `model_cfg` (the weights load later)."""
  source = checks.readable(path, "train.init_from", "dir",
                           hint="a converted checkpoint or a training workdir")
  saved = source / CONFIG_FILE
  if not saved.is_file():
    raise UserError(f"train.init_from={path} is neither a converted checkpoint nor a training"
                    f" workdir (no {CONFIG_FILE}); convert a .pth first: python -m"
                    " snip_jax.convert --pth FILE --out DIR")
  saved_model = json.loads(saved.read_text())["model"]
  check_compatible(model_cfg, model_config_from_json(saved_model), path, _free_options(modules))


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
  return value < best["value"] if checkpoints.lower_is_better(metric) else value > best["value"]




# ------------------------------------------------------------------------- the loop


def train_and_evaluate(config, workdir: str | os.PathLike,
                       make_task: Callable[..., Task]) -> dict[str, Any]:
  """Train as `config` and `make_task(config, env_cfg, model_cfg, mesh)` say, in `workdir`.

  Resumes from the workdir's latest good checkpoint. Returns the final metrics: the last train
  log's means, the last evaluation, `step`, `preempted` (True if SIGTERM stopped the run) and
  where the outputs are.
  """
  initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  env_cfg = env_config_from(config.env)
  model_cfg = model_config(config, env_cfg)
  mesh = data_mesh()
  task = make_task(config, env_cfg, model_cfg, mesh)
  run = _TrainingRun.start(config, workdir, model_cfg, mesh, task)
  write_run_config(workdir, model_cfg, env_cfg, config)
  try:
    with _SigtermFlag() as sigterm:
      run.train(sigterm)
  finally:
    run.close()
  pngs = plots.plot_workdir(workdir) if jax.process_index() == 0 else []
  return {**run.train_log, **run.eval_metrics, "step": run.step, "preempted": run.preempted,
          "checkpoint_dir": str(run.manager.directory), "metrics_file": str(run.writer.path),
          "tensorboard_dir": str(run.writer.tensorboard_dir), "plots": [str(p) for p in pngs]}


def _initial_state(config, model_cfg: ModelConfig, mesh, task: Task, optimizer) -> TrainState:
  """The replicated TrainState before any checkpoint: fresh or `init_from` params.

  A learnable temperature starts from init_from's temperature (learned or configured), else
  from model.clip_temperature.
  """
  tc = config.train
  loaded = load_init_from(config, model_cfg, task.init_modules)
  init_rng = jax.random.split(jax.random.key(tc.seed))[0]
  params = initial_params(config, model_cfg, init_rng, task.init_modules, loaded,
                          task.objective.model)
  start_cfg = model_cfg
  if loaded is not None and tc.learnable_temperature:
    start_cfg = model_cfg.replace(clip_temperature=loaded[0].clip_temperature)
  state = create_train_state(start_cfg, params, optimizer, trainable=tuple(tc.trainable),
                             learnable_temperature=tc.learnable_temperature)
  return jax.device_put(state, NamedSharding(mesh, P()))


@dataclasses.dataclass
class _TrainingRun:
  """One run of the loop: its state, step function, data, checkpoints and metric writer."""

  config: Any
  task: Task
  state: TrainState
  train_step: Callable
  step_rng: jax.Array
  meta: dict
  manager: ocp.CheckpointManager
  writer: metrics.MetricWriter
  batches: pipeline.Batches
  step: int = 0
  train_log: dict = dataclasses.field(default_factory=dict)
  eval_metrics: dict = dataclasses.field(default_factory=dict)
  last_eval_step: int = -1
  preempted: bool = False

  @classmethod
  def start(cls, config, workdir: pathlib.Path, model_cfg: ModelConfig, mesh,
            task: Task) -> "_TrainingRun":
    """Build the state and step, restore the latest good checkpoint, open data and metrics."""
    tc = config.train
    optimizer, schedule = make_optimizer(config.optim)
    state = _initial_state(config, model_cfg, mesh, task, optimizer)
    train_step = make_train_step(model_cfg, optimizer, mesh, trainable=tuple(tc.trainable),
                                 learnable_temperature=tc.learnable_temperature,
                                 grad_accum_steps=tc.grad_accum_steps, lr_schedule=schedule,
                                 objective=task.objective)
    manager = checkpoints.checkpoint_manager(workdir / CHECKPOINT_DIR, tc.keep_checkpoints,
                                             config.eval.best_metric, task.eval_metrics)
    step_rng = jax.random.split(jax.random.key(tc.seed))[1]
    meta = {"next_batch": 0, "rng": jax.device_get(jax.random.key_data(step_rng)).tolist(),
            "best": None, "batch_size": tc.batch_size, "process_count": jax.process_count()}
    if manager.all_steps():
      state, meta, latest = checkpoints.restore_latest_good(manager, state, workdir)
      _check_resumable(meta, tc.batch_size)
      step_rng = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
      logging.info("resumed from %s/%d (next batch %d)", manager.directory, latest,
                   meta["next_batch"])
    step = int(state.step)
    place = functools.partial(global_batch, sharding=NamedSharding(mesh, P(DATA_AXIS)),
                              keys=task.objective.batch_keys, equation_bucket=tc.equation_bucket)
    batches = pipeline.iterate(task.batches, start=meta["next_batch"],
                               num_workers=tc.num_workers, buffer=tc.prefetch_batches,
                               place=place)
    return cls(config, task, state, train_step, step_rng, meta, manager,
               metrics.MetricWriter(workdir, step), batches, step)

  def train(self, sigterm: "_SigtermFlag") -> None:
    """Steps until num_train_steps or SIGTERM; logs, evaluates and saves as configured."""
    tc = self.config.train
    window, window_start, t_log = [], self.step, time.time()
    while self.step < tc.num_train_steps:
      n = self._steps_to_next_event()
      with jax.transfer_guard_device_to_host(tc.transfer_guard):
        for _ in range(n):
          if sigterm.requested or self.manager.reached_preemption(self.step):
            self.preempted = True
            break
          self.state, step_metrics = self.train_step(self.state, next(self.batches),
                                                     self.step_rng)
          window.append(step_metrics)
          self.step += 1
      if self.preempted:
        break
      if self._is_event(tc.log_every_steps):
        self._log(window, window_start, t_log)
        window, window_start, t_log = [], self.step, time.time()
      t_log += self._evaluate_and_save(window, window_start)
    self._finish(window, window_start)

  def _steps_to_next_event(self) -> int:
    """Steps until the next log, evaluation, checkpoint or the end."""
    tc = self.config.train
    every = (tc.log_every_steps, tc.eval_every_steps, tc.checkpoint_every_steps)
    return min([e - self.step % e for e in every] + [tc.num_train_steps - self.step])

  def _is_event(self, every: int) -> bool:
    """Whether this step is a multiple of `every` or the last one."""
    return self.step % every == 0 or self.step == self.config.train.num_train_steps

  def _log(self, window: list[dict], window_start: int, t_start: float) -> None:
    """Fetch the interval's metrics once, check them, write and print their means.

    The fetch waits for the interval's last step, so the time taken counts the computation.
    """
    tc = self.config.train
    fetched = jax.device_get(window)
    elapsed = time.time() - t_start
    _check_finite_losses(fetched, window_start, self.manager)
    n = self.step - window_start
    self.train_log = metrics.mean_metrics(fetched)
    self.train_log.update(samples_per_s=n * tc.batch_size / elapsed, step_time_s=elapsed / n)
    self.writer.write(self.step, self.train_log)
    metrics.log_progress(self.step, tc, self.train_log)

  def _evaluate_and_save(self, window: list[dict], window_start: int) -> float:
    """Evaluate and checkpoint when due (after checking the losses); returns the eval seconds."""
    tc, best_metric = self.config.train, self.config.eval.best_metric
    evaluate, save = self._is_event(tc.eval_every_steps), self._is_event(tc.checkpoint_every_steps)
    if not (evaluate or save):
      return 0.0
    _check_finite_losses(jax.device_get(window), window_start, self.manager)
    seconds, improved = 0.0, False
    if evaluate:
      t_eval = time.time()
      self.eval_metrics, self.last_eval_step = self.task.evaluate(self.state), self.step
      seconds = time.time() - t_eval
      self.writer.write(self.step, self.eval_metrics)
      logging.info("step %d eval: %s", self.step, metrics.fmt(self.eval_metrics))
      improved = _is_better(self.eval_metrics[best_metric], self.meta["best"], best_metric)
      if improved:
        self.meta["best"] = {"step": self.step, "value": self.eval_metrics[best_metric]}
    if save or improved:
      self._save()
    return seconds

  def _save(self) -> None:
    """An async checkpoint of the current state (with the eval metrics if evaluated now)."""
    self.meta["next_batch"] = self.step
    checkpoints.save_checkpoint(self.manager, self.state, self.meta,
                                self.eval_metrics if self.last_eval_step == self.step else None)

  def _finish(self, window: list[dict], window_start: int) -> None:
    """After the last step: save a preempted state, or evaluate the final one if not yet done."""
    if self.preempted and self.manager.latest_step() != self.step:
      _check_finite_losses(jax.device_get(window), window_start, self.manager)
      self._save()
      logging.warning("preempted: saved step %d; rerun the same command to resume", self.step)
    if not self.preempted and self.last_eval_step != self.step:
      self.eval_metrics = self.task.evaluate(self.state)

  def close(self) -> None:
    """Stop the data workers, finish pending saves, close the metric files."""
    self.batches.close()
    self.manager.wait_until_finished()
    self.manager.close()
    self.writer.close()


def _check_finite_losses(fetched: list[dict], first_step: int,
                         manager: ocp.CheckpointManager) -> None:
  """Raise NonFiniteLossError naming the first step (first_step + 1, ...) with a NaN/inf loss."""
  for offset, step_metrics in enumerate(fetched):
    loss = float(step_metrics["loss"])
    if not math.isfinite(loss):
      _raise_non_finite(loss, first_step + offset + 1, manager)


def _raise_non_finite(loss: float, step: int, manager: ocp.CheckpointManager) -> None:
  """The NonFiniteLossError for `step`: what a rerun does and what to change first."""
  latest = manager.latest_step()
  resume = ("starts over (no checkpoint was saved)" if latest is None else
            f"resumes from step {latest} in {manager.directory}")
  raise NonFiniteLossError(
      f"the training loss is {loss} at step {step}; stopped without saving it. Rerunning the"
      f" same command {resume} and meets the same batches again (checkpoints are verified"
      " when restored: the cause is the settings or the data, not a damaged checkpoint), so"
      " first lower optim.lr or raise optim.warmup_updates, or check the data for extreme"
      " values")
