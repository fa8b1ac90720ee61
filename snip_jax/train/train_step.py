"""The CLIP train and eval steps, jitted once over a `data` mesh (the original's `enc_dec_step`).

One step: latents of the points (embedder + encoder_y) and of the equations (encoder_f), the
symmetric CLIP loss on z_f z_y^T / T, gradients for the `trainable` modules only, then the
optimizer (for the original: torch-style clipping and its Adam, `snip_optimizer`).

Sharding: batch arrays are split over the `data` mesh axis along their leading (batch) dim;
params, optimizer state and metrics are replicated. The loss is the CLIP loss of the GLOBAL
batch: its logits are [B_global, B_global], so every sample on every device is a negative
for every other. The original (torch DDP) computed the loss per GPU, with only that GPU's
samples as negatives; on one device both are the same.

Frozen modules (not in `trainable`, for CLIP: decoder, regressor, classifier) get no
gradient and no optimizer state, and come out of a step bit-identical, as in the original,
where their `.grad` is None and Adam skips them.

Gradient accumulation (`grad_accum_steps=k`): the batch is split into k interleaved
micro-batches (micro-batch j = samples j, j+k, j+2k, ..., so no sample changes device),
each is its own CLIP batch (negatives only within it), and the update uses the mean of their
gradients. That is the original's `accumulate_gradients=k` (k backward passes of loss/k,
then one step), NOT one CLIP loss over the whole batch.

The objective is CLIP by default; `PROPERTY` (the original's property-prediction step: MSE
of regressor(encoder_f(equation)) against `target_property`) runs through the same steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from snip_jax.model import (MODULE_NAMES, SNIP, SNIPSR, SR_MODULE_NAMES, ModelConfig, clip_logits,
                            clip_loss, decoder_loss, decoder_token_accuracy, model_kind)

DATA_AXIS = "data"
CLIP_TRAINABLE = ("embedder", "encoder_y", "encoder_f")  # the original's CLIP step
BATCH_KEYS = ("points", "n_points", "equations", "equation_lengths")
PROPERTY_BATCH_KEYS = ("equations", "equation_lengths", "target_property")

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything a step updates: params of all modules, optimizer state of the trainable ones.

  `opt_state` is the optimizer's state over `trainables(state)`: {"params": the trainable
  modules' params, "log_temperature": the learnable log-temperature or None}. `step` counts
  updates (the original's `num_updates`).
  """

  step: jax.Array
  params: Any
  opt_state: optax.OptState
  log_temperature: Optional[jax.Array]
  trainable: tuple[str, ...] = flax.struct.field(pytree_node=False)


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis `data` over `devices` (default: all of them)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _check_trainable(trainable: Sequence[str],
                     modules: Sequence[str] = MODULE_NAMES) -> tuple[str, ...]:
  """The trainable module names as a tuple in `modules` order; unknown names raise."""
  unknown = [m for m in trainable if m not in modules]
  if unknown or not trainable:
    raise ValueError(f"trainable must name some of {', '.join(modules)}; got"
                     f" {tuple(trainable)!r}")
  return tuple(m for m in modules if m in trainable)


def _split(params: Any, trainable: tuple[str, ...]) -> tuple[dict, dict]:
  """(trainable modules' params, frozen modules' params)."""
  return ({m: params[m] for m in params if m in trainable},
          {m: params[m] for m in params if m not in trainable})


def trainables(state: TrainState) -> dict:
  """The tree the optimizer sees: trainable modules' params and the log-temperature."""
  return {"params": _split(state.params, state.trainable)[0],
          "log_temperature": state.log_temperature}


def create_train_state(model_cfg: ModelConfig, params: Any,
                       optimizer: optax.GradientTransformation, *,
                       trainable: Sequence[str] = CLIP_TRAINABLE,
                       learnable_temperature: bool = False) -> TrainState:
  """A step-0 state holding float32 copies of `params` (the steps donate their input state).

  With `learnable_temperature` the CLIP temperature is exp(log_temperature), a trained
  scalar initialised to log(model_cfg.clip_temperature); otherwise it is the fixed
  clip_temperature, as in the original.
  """
  modules = SR_MODULE_NAMES if model_kind(params) == "sr" else MODULE_NAMES
  missing = [m for m in modules if m not in params]
  if missing:
    raise ValueError(f"params lack module(s) {', '.join(missing)}: pass the full params tree"
                     " (params_from_checkpoint or init_params)")
  params = jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32), params)
  log_temperature = (jnp.asarray(math.log(model_cfg.clip_temperature), jnp.float32)
                     if learnable_temperature else None)
  state = TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=None,
                     log_temperature=log_temperature,
                     trainable=_check_trainable(trainable, modules))
  return state.replace(opt_state=optimizer.init(trainables(state)))


def clip_temperature(model_cfg: ModelConfig, log_temperature: Optional[jax.Array]) -> jax.Array:
  """The CLIP temperature: learned exp(log_temperature), or the config's fixed one."""
  if log_temperature is None:
    return jnp.asarray(model_cfg.clip_temperature, jnp.float32)
  return jnp.exp(log_temperature)


def _retrieval_accuracy(logits: jax.Array) -> jax.Array:
  """Fraction of rows whose largest logit is on the diagonal (in-batch top-1 retrieval)."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0]))


def _clip_objective(model: SNIP, normalize: bool, params: dict,
                    log_temperature: Optional[jax.Array], batch: Batch, rng: jax.Array,
                    deterministic: bool) -> tuple[jax.Array, Metrics]:
  """The original's CLIP loss of one batch and its retrieval accuracies."""
  z_y, z_f = model.apply({"params": params}, batch["points"], batch["n_points"],
                         batch["equations"], batch["equation_lengths"],
                         deterministic=deterministic, rngs={"dropout": rng})
  temperature = clip_temperature(model.cfg, log_temperature)
  loss = clip_loss(z_f, z_y, temperature, normalize)
  logits_per_f, logits_per_y = clip_logits(z_f, z_y, temperature, normalize)
  return loss, {"loss": loss, "accuracy_f2y": _retrieval_accuracy(logits_per_f),
                "accuracy_y2f": _retrieval_accuracy(logits_per_y)}


def _property_objective(model: SNIP, normalize: bool, params: dict,
                        log_temperature: Optional[jax.Array], batch: Batch, rng: jax.Array,
                        deterministic: bool) -> tuple[jax.Array, Metrics]:
  """The original's property loss: MSE of regressor(z_f) against target_property."""
  del normalize, log_temperature
  prediction, _ = model.apply({"params": params}, batch["equations"], batch["equation_lengths"],
                              deterministic=deterministic, rngs={"dropout": rng},
                              method=SNIP.predict_property)
  loss = jnp.mean(jnp.square(prediction - batch["target_property"].astype(jnp.float32)))
  return loss, {"loss": loss}


def _equation_objective(model: SNIPSR, normalize: bool, params: dict,
                        log_temperature: Optional[jax.Array], batch: Batch, rng: jax.Array,
                        deterministic: bool) -> tuple[jax.Array, Metrics]:
  """Symbolic regression's loss: next-token cross-entropy of the equation given the points
  (the original's mean over all target tokens of the batch), and the token accuracy."""
  del normalize, log_temperature
  logits = model.apply({"params": params}, batch["points"], batch["n_points"],
                       batch["equations"], batch["equation_lengths"],
                       deterministic=deterministic, rngs={"dropout": rng})
  loss = decoder_loss(logits, batch["equations"], batch["equation_lengths"])
  return loss, {"loss": loss, "token_accuracy": decoder_token_accuracy(
      logits, batch["equations"], batch["equation_lengths"])}


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the steps optimise: the batch arrays they read, (loss, metrics) of a batch, and the
  model (class and module names) it trains."""

  batch_keys: tuple[str, ...]
  metric_names: tuple[str, ...]
  loss_and_metrics: Callable[..., tuple[jax.Array, Metrics]]
  uses_temperature: bool
  model: type = SNIP
  modules: tuple[str, ...] = MODULE_NAMES


CLIP = Objective(BATCH_KEYS, ("loss", "accuracy_f2y", "accuracy_y2f"), _clip_objective,
                 uses_temperature=True)
PROPERTY = Objective(PROPERTY_BATCH_KEYS, ("loss",), _property_objective,
                     uses_temperature=False)
EQUATION = Objective(BATCH_KEYS, ("loss", "token_accuracy"), _equation_objective,
                     uses_temperature=False, model=SNIPSR, modules=SR_MODULE_NAMES)


def _objective_of(objective: Objective, model: SNIP, normalize: bool, train: dict, frozen: dict,
                  batch: Batch, rng: jax.Array, deterministic: bool):
  """`objective` on the merged trainable and frozen params."""
  return objective.loss_and_metrics(model, normalize, {**frozen, **train["params"]},
                                    train["log_temperature"], batch, rng, deterministic)


def _micro_batches(batch: Batch, k: int, mesh: Mesh) -> Batch:
  """[B, ...] -> [k, B/k, ...]: micro-batch j holds samples j, j+k, ... (no resharding)."""

  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    spec = P(None, DATA_AXIS, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  return jax.tree.map(split, batch)


def _grads_fn(model_cfg: ModelConfig, mesh: Mesh, trainable: tuple[str, ...], normalize: bool,
              grad_accum_steps: int, objective_spec: Objective) -> Callable:
  """(state, batch, rng) -> (grads over `trainables(state)`, metrics), not jitted."""
  model = objective_spec.model(model_cfg)

  def objective(train, frozen, batch, rng):
    return _objective_of(objective_spec, model, normalize, train, frozen, batch, rng,
                         deterministic=False)

  value_and_grad = jax.value_and_grad(objective, has_aux=True)

  def grads_fn(state, batch, rng):
    _check_state(state, trainable)
    train, frozen = trainables(state), _split(state.params, trainable)[1]
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum_steps == 1:
      (_, metrics), grads = value_and_grad(train, frozen, batch, rng)
      return grads, metrics

    def accumulate(carry, micro):
      index, micro_batch = micro
      (_, metrics), grads = value_and_grad(train, frozen, micro_batch,
                                           jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, (train, _metric_shapes(objective_spec)))
    micro = (jnp.arange(grad_accum_steps), _micro_batches(batch, grad_accum_steps, mesh))
    total, _ = jax.lax.scan(accumulate, zeros, micro)
    return jax.tree.map(lambda x: x / grad_accum_steps, total)

  return grads_fn


def _metric_shapes(objective: Objective) -> Metrics:
  """Zero scalars shaped like the objective's metrics (the accumulation carry)."""
  return {k: jnp.zeros([], jnp.float32) for k in objective.metric_names}


def _check_state(state: TrainState, trainable: tuple[str, ...]) -> None:
  """The state must have been created for the same trainable modules as the step."""
  if state.trainable != trainable:
    raise ValueError(f"the state was created with trainable={state.trainable} but the step"
                     f" with trainable={trainable}: pass the same modules to"
                     " create_train_state and make_train_step")


def _check_options(trainable: Sequence[str], grad_accum_steps: int, objective: Objective
                   ) -> tuple[tuple[str, ...], int]:
  """Validated (trainable, grad_accum_steps)."""
  if int(grad_accum_steps) < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
  return _check_trainable(trainable, objective.modules), int(grad_accum_steps)


def _shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, split over `data` along the leading dim)."""
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"the mesh has axes {mesh.axis_names}; the steps need a {DATA_AXIS!r}"
                     " axis (use data_mesh())")
  return NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))


def _batch_arrays(batch: Batch, mesh: Mesh, multiple: int, keys: tuple[str, ...]) -> Batch:
  """The objective's batch arrays, checked to split evenly into `multiple` parts, sharded."""
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"the batch lacks {', '.join(missing)}; it needs {', '.join(keys)}"
                     " (as snip_jax.data.batching.collate makes them)")
  arrays = {k: batch[k] for k in keys}
  size = int(np.shape(arrays[keys[0]])[0])
  if size % multiple:
    raise ValueError(f"batch size {size} must be a multiple of {multiple} (the {DATA_AXIS}"
                     f" mesh axis has {mesh.shape[DATA_AXIS]} devices; times grad_accum_steps)")
  return jax.device_put(arrays, _shardings(mesh)[1])


def _placed(state: TrainState, mesh: Mesh) -> TrainState:
  """The state replicated on `mesh` (a no-op once it is), so every call sees one input type."""
  return jax.device_put(state, _shardings(mesh)[0])


def make_grad_fn(model_cfg: ModelConfig, mesh: Mesh, *,
                 trainable: Sequence[str] = CLIP_TRAINABLE,
                 normalize_latents: Optional[bool] = None, grad_accum_steps: int = 1,
                 objective: Objective = CLIP
                 ) -> Callable[[TrainState, Batch, jax.Array], tuple[dict, Metrics]]:
  """Jitted (state, batch, rng) -> (grads, metrics) of the train step, without the update.

  `grads` has the structure of `trainables(state)`; for checking gradients and debugging.
  """
  trainable, grad_accum_steps = _check_options(trainable, grad_accum_steps, objective)
  normalize = model_cfg.normalize_latents if normalize_latents is None else normalize_latents
  replicated, split = _shardings(mesh)
  jitted = jax.jit(_grads_fn(model_cfg, mesh, trainable, normalize, grad_accum_steps,
                             objective),
                   in_shardings=(replicated, split, replicated),
                   out_shardings=(replicated, replicated))
  multiple = mesh.shape[DATA_AXIS] * grad_accum_steps
  return lambda state, batch, rng: jitted(
      _placed(state, mesh), _batch_arrays(batch, mesh, multiple, objective.batch_keys), rng)


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh, *, trainable: Sequence[str] = CLIP_TRAINABLE,
                    normalize_latents: Optional[bool] = None,
                    learnable_temperature: bool = False, grad_accum_steps: int = 1,
                    lr_schedule: Optional[optax.Schedule] = None, objective: Objective = CLIP
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """The jitted train step (state, batch, rng) -> (new state, metrics), CLIP by default.

  `batch` holds points [B, slen, T], n_points [B], equations [B, 200], equation_lengths [B]
  (other keys are ignored); B must split evenly over the mesh's `data` axis (and into
  `grad_accum_steps` micro-batches). `rng` drives dropout (folded with the step number, so a
  fixed key is fine). The input state is donated: use only the returned one.

  `optimizer` is the one the state was created with, `trainable` and `learnable_temperature`
  must match create_train_state's. `normalize_latents` (default: model_cfg's) L2-normalises
  the latents before the logits (the original does not). The compute dtype is
  model_cfg.dtype (bfloat16 computes in bfloat16; params, grads and optimizer stay float32).

  Metrics (replicated scalars): loss, accuracy_f2y (equation -> its points, top-1 in the
  batch), accuracy_y2f, grad_norm (global L2 norm before clipping), temperature, and lr
  when `lr_schedule` (the schedule inside `optimizer`) is given: its value at state.step,
  i.e. the rate this update uses. With `objective=PROPERTY` the batch holds equations,
  equation_lengths and target_property [B], and the metrics are loss (MSE), grad_norm, lr.
  """
  trainable, grad_accum_steps = _check_options(trainable, grad_accum_steps, objective)
  normalize = model_cfg.normalize_latents if normalize_latents is None else normalize_latents
  grads_fn = _grads_fn(model_cfg, mesh, trainable, normalize, grad_accum_steps, objective)

  def train_step(state, batch, rng):
    if (state.log_temperature is not None) != learnable_temperature:
      raise ValueError(f"learnable_temperature={learnable_temperature} but the state was"
                       f" created with learnable_temperature={not learnable_temperature}")
    grads, metrics = grads_fn(state, batch, rng)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if objective.uses_temperature:
      metrics["temperature"] = clip_temperature(model_cfg, state.log_temperature)
    if lr_schedule is not None:
      metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    train = trainables(state)
    updates, opt_state = optimizer.update(grads, state.opt_state, train)
    train = optax.apply_updates(train, updates)
    params = {m: train["params"].get(m, p) for m, p in state.params.items()}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              log_temperature=train["log_temperature"])
    return new_state, metrics

  replicated, split = _shardings(mesh)
  jitted = jax.jit(train_step, in_shardings=(replicated, split, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  multiple = mesh.shape[DATA_AXIS] * grad_accum_steps

  def step(state, batch, rng):
    return jitted(_placed(state, mesh),
                  _batch_arrays(batch, mesh, multiple, objective.batch_keys), rng)

  step.jitted = jitted  # for inspection, e.g. jitted._cache_size(): compilations so far
  return step


def make_eval_step(model_cfg: ModelConfig, mesh: Mesh, *,
                   normalize_latents: Optional[bool] = None, objective: Objective = CLIP
                   ) -> Callable[[TrainState, Batch], Metrics]:
  """Jitted (state, batch) -> metrics: loss, accuracy_f2y, accuracy_y2f, temperature.

  No update and no dropout; the loss and accuracies are over the global batch, as in
  make_train_step. For `objective=PROPERTY`: the loss (MSE) only.
  """
  normalize = model_cfg.normalize_latents if normalize_latents is None else normalize_latents
  model = objective.model(model_cfg)

  def eval_step(state, batch):
    train, frozen = trainables(state), _split(state.params, state.trainable)[1]
    _, metrics = _objective_of(objective, model, normalize, train, frozen, batch,
                               jax.random.key(0), deterministic=True)
    if objective.uses_temperature:
      metrics["temperature"] = clip_temperature(model_cfg, state.log_temperature)
    return metrics

  replicated, split = _shardings(mesh)
  jitted = jax.jit(eval_step, in_shardings=(replicated, split), out_shardings=replicated)
  multiple = mesh.shape[DATA_AXIS]
  return lambda state, batch: jitted(
      _placed(state, mesh), _batch_arrays(batch, mesh, multiple, objective.batch_keys))
