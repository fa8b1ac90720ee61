"""The original SNIP optimizer from optax pieces: torch-style clipping, its Adam, its schedule.

`adam_inverse_sqrt,warmup_updates=W,warmup_init_lr=L0` with `--lr LR` and `--clip_grad_norm C`:
- clip: grads *= min(1, C / (global L2 norm + 1e-6))   (torch `clip_grad_norm_`)
- Adam: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
        p -= lr * sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)
  eps is added to the *uncorrected* sqrt(v), unlike optax.adam / torch.optim.Adam.
- lr for the update after n updates: L0 + n (LR - L0) / W while n < W, then
  LR * W**0.5 * n**-0.5. The first update uses L0, not LR.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def inverse_sqrt_schedule(lr: float, warmup_updates: int = 10_000, warmup_init_lr: float = 1e-7,
                          exp_factor: float = 0.5) -> optax.Schedule:
  """lr as a function of the number of updates already made (`adam_inverse_sqrt`)."""
  lr_step = (lr - warmup_init_lr) / warmup_updates
  decay_factor = lr * warmup_updates ** exp_factor

  def schedule(count):
    n = jnp.asarray(count, jnp.float32)
    warm = warmup_init_lr + n * lr_step
    decayed = decay_factor * jnp.maximum(n, 1.0) ** -exp_factor
    return jnp.where(n < warmup_updates, warm, decayed)

  return schedule


def clip_by_global_norm_like_torch(max_norm: float) -> optax.GradientTransformation:
  """torch `clip_grad_norm_`: scale by min(1, max_norm / (norm + 1e-6)) (optax has no 1e-6)."""

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class SnipAdamState(NamedTuple):
  count: jax.Array  # updates made so far (the original's per-parameter `step` / num_updates)
  mu: optax.Updates
  nu: optax.Updates


def snip_adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> optax.GradientTransformation:
  """The original's Adam (snip/optim.py), returning updates to add to the params."""

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p)
    return SnipAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                         jax.tree.map(zeros, params))

  def update_fn(grads, state, params=None):
    del params
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    count = state.count + 1
    t = count.astype(jnp.float32)
    step_size = lr * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    mu = jax.tree.map(lambda m, g: m * b1 + (1.0 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: v * b2 + (1.0 - b2) * (g * g), state.nu, grads)
    updates = jax.tree.map(
        lambda m, v: -(step_size.astype(m.dtype) * m) / (jnp.sqrt(v) + eps), mu, nu)
    return updates, SnipAdamState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def snip_optimizer(lr: float = 4e-5, warmup_updates: int = 10_000, warmup_init_lr: float = 1e-7,
                   clip_grad_norm: float = 0.5, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """Clipping (if clip_grad_norm > 0) then the original's Adam with its inverse-sqrt schedule."""
  schedule = inverse_sqrt_schedule(lr, warmup_updates, warmup_init_lr)
  adam = snip_adam(schedule, b1, b2, eps)
  if clip_grad_norm > 0:
    return optax.chain(clip_by_global_norm_like_torch(clip_grad_norm), adam)
  return adam
