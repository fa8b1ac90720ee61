"""The original's optimizer: schedule values from its runs, Adam/clipping against a restatement."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from snip_jax.train.optimizer import (clip_by_global_norm_like_torch, inverse_sqrt_schedule,
                                      snip_optimizer)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"


def test_schedule_matches_the_originals_recorded_learning_rates():
  for name in ("tiny_replay_meta.json", "tiny_replay_clip_meta.json"):
    meta = json.loads((FIXTURES / name).read_text())
    opt = meta["optimizer"]
    schedule = inverse_sqrt_schedule(opt["lr"], int(opt["warmup_updates"]), opt["warmup_init_lr"])
    for step in meta["train_steps"]:
      assert float(schedule(step["num_updates_before"])) == pytest.approx(step["lr_used"], rel=1e-6)
      assert float(schedule(step["num_updates_after"])) == pytest.approx(step["lr_after"], rel=1e-6)
  default = inverse_sqrt_schedule(1e-5)  # SNIP_REFERENCE item 23
  np.testing.assert_allclose([default(0), default(1), default(2)], [1e-7, 1.0099e-7, 1.0198e-7],
                             rtol=1e-6)
  assert float(default(40_000)) == pytest.approx(1e-5 * math.sqrt(10_000 / 40_000), rel=1e-6)


def _reference_steps(params, grads_per_step, lr_fn, clip, b1=0.9, b2=0.999, eps=1e-8):
  """The original's update rule restated in float64 numpy, one parameter list."""
  params = [p.astype(np.float64) for p in params]
  m = [np.zeros_like(p) for p in params]
  v = [np.zeros_like(p) for p in params]
  for t, grads in enumerate(grads_per_step, start=1):
    grads = [g.astype(np.float64) for g in grads]
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    coef = min(1.0, clip / (norm + 1e-6))
    grads = [g * coef for g in grads]
    step_size = lr_fn(t - 1) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    for i, g in enumerate(grads):
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      params[i] = params[i] - step_size * m[i] / (np.sqrt(v[i]) + eps)
  return params


def test_updates_match_the_original_rule_with_and_without_clipping():
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
  grads = [{k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
           for s in (0.01, 0.3, 2.0, 0.05, 1.0, 0.001)]
  for clip in (0.5, 0.08, 100.0):
    opt = snip_optimizer(lr=1e-3, warmup_updates=3, warmup_init_lr=1e-4, clip_grad_norm=clip)
    state = opt.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
      updates, state = jax.jit(opt.update)(g, state, p)
      p = optax.apply_updates(p, updates)
    schedule = inverse_sqrt_schedule(1e-3, 3, 1e-4)
    expected = _reference_steps([params["a"], params["b"]], [[g["a"], g["b"]] for g in grads],
                                lambda n: float(schedule(n)), clip)
    np.testing.assert_allclose(p["a"], expected[0], rtol=0, atol=2e-6)
    np.testing.assert_allclose(p["b"], expected[1], rtol=0, atol=2e-6)
    assert int(state[-1].count) == 6


def test_eps_is_added_to_the_uncorrected_root():
  # One step with a tiny gradient: optax.adam's eps placement gives a visibly different update.
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.full(3, 1e-9)}
  ours, _ = snip_optimizer(lr=1.0, warmup_updates=1, warmup_init_lr=1.0, clip_grad_norm=0).update(
      grads, snip_optimizer(lr=1.0, warmup_updates=1, warmup_init_lr=1.0, clip_grad_norm=0).init(params))
  t = 1
  expected = -1.0 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * (0.1 * 1e-9) / (
      math.sqrt(0.001 * 1e-18) + 1e-8)
  np.testing.assert_allclose(ours["w"], expected, rtol=1e-5)
  theirs, _ = optax.adam(1.0).update(grads, optax.adam(1.0).init(params))
  assert abs(float(theirs["w"][0]) - expected) > 0.1 * abs(expected)


def test_clipping_coefficient_matches_torch():
  grads = {"a": jnp.array([3.0, 4.0])}
  clipped, _ = clip_by_global_norm_like_torch(0.5).update(grads, optax.EmptyState())
  np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) * 0.5 / (5.0 + 1e-6), rtol=1e-6)
  small, _ = clip_by_global_norm_like_torch(10.0).update(grads, optax.EmptyState())
  np.testing.assert_array_equal(small["a"], grads["a"])
