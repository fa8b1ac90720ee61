"""CLIP train step: the original's 6-step replays (plain and clipped), frozen modules, gradient
accumulation, learnable temperature, bfloat16, 8 devices against 1 (in a subprocess), retrieval
accuracies against the original's CLIP logits, and one compilation per equation width.

The replays feed the original's recorded batches (tiny_replay*_train_steps.npz) to the step,
starting from its recorded initial weights, and compare losses, learning rates, grad norms,
step-1 gradients and final weights with what the original recorded.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from snip_jax.convert.pth import load_pth
from snip_jax.model import params_from_checkpoint, params_to_state_dicts, state_dicts_to_params
from snip_jax.tasks import clip
from snip_jax.train import train_step as train_step_lib
from snip_jax.train import trainer
from snip_jax.train.optimizer import inverse_sqrt_schedule, snip_optimizer
from snip_jax.train.train_step import (create_train_state, data_mesh, make_eval_step,
                                       make_grad_fn, make_train_step)

ROOT = pathlib.Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "snip_original"
REPLAYS = ("tiny_replay", "tiny_replay_clip")
FROZEN = ("decoder", "regressor", "classifier")
PARAM_TOL = 3e-6  # final weights vs the original's, absolute (measured: 1.8e-6)
# Its true gradient is zero (softmax is shift-invariant): the recorded one is rounding noise
# that Adam amplifies, so it replays only loosely (see the fixture README's replay note).
NOISY_PARAM = "glob_attn_module.0.bias"
NOISY_TOL = 1e-3
N_DEVICES = 8
MULTI_DEVICE_STEPS = 2


def _batch(steps, k):
  """Step k's recorded inputs, sequence-major as fed to the original -> batch-major int32."""
  return {"points": steps[f"step{k}_embedder_tokens"].swapaxes(0, 1).astype(np.int32),
          "n_points": steps[f"step{k}_len1"].astype(np.int32),
          "equations": steps[f"step{k}_x2"].swapaxes(0, 1).astype(np.int32),
          "equation_lengths": steps[f"step{k}_len2"].astype(np.int32)}


def _optimizer(meta):
  """(optimizer, its schedule) from a replay meta's `optimizer` and `clip_grad_norm`."""
  opt = meta["optimizer"]
  args = (opt["lr"], int(opt["warmup_updates"]), opt["warmup_init_lr"])
  return (snip_optimizer(*args, clip_grad_norm=meta["clip_grad_norm"], b1=opt["betas"][0],
                         b2=opt["betas"][1], eps=opt["eps"]),
          inverse_sqrt_schedule(*args))


def _load(name):
  """meta, recorded steps, config, initial params (numpy) and final checkpoint of a replay."""
  meta = json.loads((FIXTURES / f"{name}_meta.json").read_text())
  steps = dict(np.load(FIXTURES / f"{name}_train_steps.npz"))
  final = load_pth(FIXTURES / f"{name}.pth")
  cfg, _ = params_from_checkpoint(final)  # the init file has state_dicts only
  init = state_dicts_to_params(load_pth(FIXTURES / f"{name}_init.pth"), cfg)
  return meta, steps, cfg, init, final


def _state_dicts(params, cfg):
  """Params tree (jax or numpy) -> the original's state_dicts."""
  return params_to_state_dicts(jax.device_get(params), cfg)


def _max_errors(actual, expected):
  """{module/key: max abs error} for every key of `actual`'s state_dicts."""
  return {f"{m}/{k}": float(np.abs(v - np.asarray(expected[m][k], np.float32)).max())
          for m, sd in actual.items() for k, v in sd.items()}


def _assert_params_close(name, errors, tol=PARAM_TOL):
  """Every error within tol, the pooling bias within NOISY_TOL."""
  bad = {k: e for k, e in errors.items() if e > (NOISY_TOL if k.endswith(NOISY_PARAM) else tol)}
  assert not bad, f"{name}: {len(bad)} tensors off: {bad}"


@pytest.fixture(scope="module")
def mesh():
  return data_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def replay_data():
  return {name: _load(name) for name in REPLAYS}


def _run_replay(data, mesh):
  """Run the recorded steps: metrics per step, params after every step (numpy), last state."""
  meta, steps, cfg, init, final = data
  optimizer, schedule = _optimizer(meta)
  step = make_train_step(cfg, optimizer, mesh, lr_schedule=schedule)
  state = create_train_state(cfg, init, optimizer)
  metrics, params_after = [], {}
  for k in range(1, len(meta["train_steps"]) + 1):
    state, m = step(state, _batch(steps, k), jax.random.key(0))
    metrics.append(jax.device_get(m))
    params_after[k] = jax.device_get(state.params)
  return dict(meta=meta, steps=steps, cfg=cfg, init=init, final=final, metrics=metrics,
              params_after=params_after, state=state)


@pytest.fixture(scope="module")
def replays(replay_data, mesh):
  """replays(name): that replay's run, made on first use (one compilation per optimizer)."""
  return functools.cache(lambda name: _run_replay(replay_data[name], mesh))


@pytest.fixture(scope="module")
def fresh_state(replay_data):
  """fresh_state(): a step-0 state of the plain replay (same structure for every use)."""
  meta, _, cfg, init, _ = replay_data[REPLAYS[0]]
  optimizer, _ = _optimizer(meta)
  return lambda: create_train_state(cfg, init, optimizer)


@pytest.mark.parametrize("name", REPLAYS)
def test_replay_losses_learning_rates_and_grad_norms(replays, name):
  replay = replays(name)
  for recorded, m in zip(replay["meta"]["train_steps"], replay["metrics"]):
    k = recorded["step"]
    # Fed at the recorded slen (the original pools over it), not padded to max_len.
    assert replay["steps"][f"step{k}_embedder_tokens"].shape[0] == recorded["slen_points"]
    np.testing.assert_allclose(m["loss"], recorded["loss"], rtol=1e-5, err_msg=f"step {k} loss")
    np.testing.assert_allclose(m["lr"], recorded["lr_used"], rtol=1e-6, err_msg=f"step {k} lr")
    np.testing.assert_allclose(m["grad_norm"], recorded["grad_norm_before_clip"], rtol=1e-4,
                               err_msg=f"step {k} grad norm")
    assert m["temperature"] == 1.0
    for direction in ("accuracy_f2y", "accuracy_y2f"):
      assert 0.0 <= m[direction] <= 1.0 and m[direction] * 8 == round(m[direction] * 8)
  assert int(replay["state"].step) == len(replay["metrics"])
  if name == "tiny_replay_clip":  # steps 3-6 are clipped at 0.08
    assert [m["grad_norm"] > 0.08 for m in replay["metrics"]] == [False, False] + [True] * 4


@pytest.mark.parametrize("name", REPLAYS)
def test_replay_final_weights_match_the_original(replays, name):
  replay = replays(name)
  params = replay["params_after"][len(replay["metrics"])]
  errors = _max_errors(_state_dicts(params, replay["cfg"]), replay["final"])
  _assert_params_close(name, errors)
  moved = _max_errors(_state_dicts(params, replay["cfg"]), _state_dicts(replay["init"],
                                                                        replay["cfg"]))
  assert max(moved.values()) > 1e-3  # the weights did move, far beyond the tolerance


@pytest.mark.parametrize("name", REPLAYS)
def test_replay_frozen_modules_are_bit_identical(replays, name):
  replay = replays(name)
  final = replay["params_after"][len(replay["metrics"])]
  for module in FROZEN:
    jax.tree.map(np.testing.assert_array_equal, final[module], replay["init"][module])
  opt_state_leaves = jax.tree.leaves(replay["state"].opt_state)
  n_trainable = sum(x.size for m in ("embedder", "encoder_y", "encoder_f")
                    for x in jax.tree.leaves(final[m]))
  # Moments exist for the trainable modules only (plus the step count).
  assert sum(x.size for x in opt_state_leaves) == 2 * n_trainable + 1


@pytest.fixture(scope="module")
def grad_fn(replay_data, mesh):
  return make_grad_fn(replay_data[REPLAYS[0]][2], mesh)


def test_step1_gradients_match_the_original(replay_data, grad_fn, fresh_state):
  meta, steps, cfg, init, _ = replay_data[REPLAYS[0]]
  grads, metrics = grad_fn(fresh_state(), _batch(steps, 1), jax.random.key(0))
  np.testing.assert_allclose(metrics["loss"], meta["train_steps"][0]["loss"], rtol=1e-5)
  assert set(grads["params"]) == {"embedder", "encoder_y", "encoder_f"}
  zeros = jax.tree.map(np.zeros_like, init)
  ours = _state_dicts({**zeros, **grads["params"]}, cfg)
  scale = max(np.abs(steps[f"grad_step1/{p}"]).max() for p in meta["grad_step1_params"])
  for p in meta["grad_step1_params"]:
    module, key = p.split("/", 1)
    expected = steps[f"grad_step1/{p}"]
    tol = 1e-6 if key == NOISY_PARAM else 2e-5 * scale
    np.testing.assert_allclose(ours[module][key], expected, rtol=1e-4, atol=tol, err_msg=p)
  # What had no gradient in the original (.grad None: z_projection) gets exactly zero.
  recorded = set(meta["grad_step1_params"])
  for module in ("embedder", "encoder_y", "encoder_f"):
    for key, g in ours[module].items():
      if f"{module}/{key}" not in recorded:
        assert not g.any(), f"{module}/{key}"


@pytest.fixture(scope="module")
def eval_step(replay_data, mesh):
  return make_eval_step(replay_data[REPLAYS[0]][2], mesh)


def test_eval_step_gives_the_loss_without_updating(replay_data, eval_step, fresh_state):
  meta, steps, _, init, _ = replay_data[REPLAYS[0]]
  state = fresh_state()
  metrics = jax.device_get(eval_step(state, _batch(steps, 1)))
  np.testing.assert_allclose(metrics["loss"], meta["train_steps"][0]["loss"], rtol=1e-5)
  assert set(metrics) == {"loss", "accuracy_f2y", "accuracy_y2f", "temperature"}
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), init)


def _top1(logits):
  """Fraction of rows whose largest entry is on the diagonal, in numpy."""
  logits = np.asarray(logits)
  return float(np.mean(np.argmax(logits, axis=1) == np.arange(len(logits))))


def test_retrieval_accuracies_match_the_originals_clip_logits(mesh):
  """Both metrics, from tiny.pth on tiny_io's batch, equal top-1 of the original's logits."""
  io = dict(np.load(FIXTURES / "tiny_io.npz"))
  expected = {"accuracy_f2y": _top1(io["clip_logits_per_f"]),
              "accuracy_y2f": _top1(io["clip_logits_per_y"])}
  assert expected == {"accuracy_f2y": 1 / 8, "accuracy_y2f": 1 / 8}
  cfg, params = params_from_checkpoint(load_pth(FIXTURES / "tiny.pth"))
  batch = {"points": io["embedder_tokens"].transpose(1, 0, 2).astype(np.int32),
           "n_points": io["len1"].astype(np.int32), "equations": io["x2"].T.astype(np.int32),
           "equation_lengths": io["len2"].astype(np.int32)}
  state = create_train_state(cfg, params, snip_optimizer(lr=1e-3))
  metrics = jax.device_get(make_eval_step(cfg, mesh)(state, batch))
  assert {k: float(metrics[k]) for k in expected} == expected
  f2y, y2f = clip._retrieval_accuracies(  # pylint: disable=protected-access
      io["encoder_f_latent"], io["encoder_y_latent"], float(io["clip_temperature"]), False)
  assert [float(f2y), float(y2f)] == list(expected.values())


def test_retrieval_accuracy_directions_differ_on_a_hand_built_pair(replay_data, mesh,
                                                                   fresh_state, monkeypatch):
  """Logits [[1, 0], [2, 3]]: each equation finds its points, only the second points theirs."""
  z_f, z_y = np.array([[1.0, 0.0], [2.0, 3.0]], np.float32), np.eye(2, dtype=np.float32)
  expected = {"accuracy_f2y": _top1(z_f @ z_y.T), "accuracy_y2f": _top1(z_y @ z_f.T)}
  assert expected == {"accuracy_f2y": 1.0, "accuracy_y2f": 0.5}
  # The eval step as it is, with the model's latents replaced by the hand-built ones.
  monkeypatch.setattr(train_step_lib.SNIP, "apply", lambda *args, **kwargs: (z_y, z_f))
  cfg = replay_data[REPLAYS[0]][2]
  batch = {"points": np.zeros((2, 1, cfg.tokens_per_point), np.int32),
           "n_points": np.ones(2, np.int32), "equations": np.zeros((2, 3), np.int32),
           "equation_lengths": np.full(2, 3, np.int32)}
  metrics = jax.device_get(make_eval_step(cfg, mesh)(fresh_state(), batch))
  assert {k: float(metrics[k]) for k in expected} == expected
  f2y, y2f = clip._retrieval_accuracies(z_f, z_y, 1.0, False)  # pylint: disable=protected-access
  assert [float(f2y), float(y2f)] == list(expected.values())


def _interleave(a, b):
  """[a0, b0, a1, b1, ...]: with grad_accum_steps=2, micro-batch 0 is `a` and 1 is `b`."""
  return jax.tree.map(lambda x, y: np.stack([x, y], axis=1).reshape((-1,) + x.shape[1:]), a, b)


def test_gradient_accumulation_averages_micro_batch_gradients(replays, replay_data, mesh,
                                                              grad_fn, eval_step, fresh_state):
  """k micro-batches, each its own CLIP batch, update with the mean of their gradients."""
  meta, steps, cfg, _, _ = replay_data[REPLAYS[0]]
  step = make_train_step(cfg, _optimizer(meta)[0], mesh, grad_accum_steps=2)
  a, b = _batch(steps, 1), _batch(steps, 2)
  fresh = fresh_state

  # Two different micro-batches: loss and accuracies are their means, the gradient too.
  _, metrics = step(fresh(), _interleave(a, b), jax.random.key(0))
  expected = [jax.device_get(eval_step(fresh(), x)) for x in (a, b)]
  for key in ("loss", "accuracy_f2y", "accuracy_y2f"):
    np.testing.assert_allclose(metrics[key], (expected[0][key] + expected[1][key]) / 2,
                               rtol=1e-6, err_msg=key)
  grads = [grad_fn(fresh(), x, jax.random.key(0))[0] for x in (a, b)]
  mean_norm = optax.tree.norm(jax.tree.map(lambda x, y: (x + y) / 2, *grads))
  np.testing.assert_allclose(metrics["grad_norm"], mean_norm, rtol=1e-5)

  # The same micro-batch twice: exactly one plain step on it (the replay's step 1).
  state, metrics = step(fresh(), _interleave(a, a), jax.random.key(0))
  recorded = meta["train_steps"][0]
  np.testing.assert_allclose(metrics["loss"], recorded["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], recorded["grad_norm_before_clip"], rtol=1e-4)
  errors = _max_errors(_state_dicts(state.params, cfg),
                       _state_dicts(replays(REPLAYS[0])["params_after"][1], cfg))
  _assert_params_close("accumulated step 1", errors)


def test_learnable_temperature_is_trained(replay_data, mesh):
  meta, steps, cfg, init, _ = replay_data[REPLAYS[0]]
  optimizer, _ = _optimizer(meta)
  step = make_train_step(cfg, optimizer, mesh, learnable_temperature=True,
                         normalize_latents=True)
  state = create_train_state(cfg, init, optimizer, learnable_temperature=True)
  assert float(state.log_temperature) == 0.0  # log(clip_temperature = 1)
  temperatures = []
  for k in (1, 2):
    state, metrics = step(state, _batch(steps, k), jax.random.key(0))
    temperatures.append(float(metrics["temperature"]))
    assert np.isfinite(float(metrics["loss"]))
    # Normalised latents with T ~ 1: logits in [-1, 1], the loss stays near log(8).
    assert abs(float(metrics["loss"]) - np.log(8)) < 0.3
  assert temperatures[0] == 1.0
  np.testing.assert_allclose(temperatures[1], np.exp(float(jax.device_get(
      state.log_temperature))), rtol=0.01)
  assert abs(float(state.log_temperature)) > 5e-5  # Adam moved it by about lr (1e-4 + 4e-4)
  assert temperatures[1] != 1.0


def test_bfloat16_compute_tracks_float32(replay_data, mesh):
  meta, steps, cfg, init, _ = replay_data[REPLAYS[0]]
  optimizer, _ = _optimizer(meta)
  cfg16 = cfg.replace(dtype=jnp.bfloat16)
  step = make_train_step(cfg16, optimizer, mesh)
  state, metrics = step(create_train_state(cfg16, init, optimizer), _batch(steps, 1),
                        jax.random.key(0))
  recorded = meta["train_steps"][0]
  np.testing.assert_allclose(metrics["loss"], recorded["loss"], rtol=1e-2)
  np.testing.assert_allclose(metrics["grad_norm"], recorded["grad_norm_before_clip"], rtol=0.1)
  params = jax.device_get(state.params)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  for module in FROZEN:
    jax.tree.map(np.testing.assert_array_equal, params[module], init[module])


def test_misuse_raises_actionable_errors(replay_data, mesh):
  meta, steps, cfg, init, _ = replay_data[REPLAYS[0]]
  optimizer, _ = _optimizer(meta)
  with pytest.raises(ValueError, match="trainable must name"):
    make_train_step(cfg, optimizer, mesh, trainable=("encoder_x",))
  with pytest.raises(ValueError, match="grad_accum_steps"):
    make_train_step(cfg, optimizer, mesh, grad_accum_steps=0)
  with pytest.raises(ValueError, match="lack module"):
    create_train_state(cfg, {"embedder": init["embedder"]}, optimizer)
  step = make_train_step(cfg, optimizer, mesh, grad_accum_steps=3)
  state = create_train_state(cfg, init, optimizer)
  with pytest.raises(ValueError, match="multiple of 3"):
    step(state, _batch(steps, 1), jax.random.key(0))
  with pytest.raises(ValueError, match="lacks equation_lengths"):
    step(state, {k: v for k, v in _batch(steps, 1).items() if k != "equation_lengths"},
         jax.random.key(0))
  other = create_train_state(cfg, init, optimizer, trainable=("encoder_f",))
  with pytest.raises(ValueError, match="same modules"):
    make_train_step(cfg, optimizer, mesh)(other, _batch(steps, 1), jax.random.key(0))
  learnable = create_train_state(cfg, init, optimizer, learnable_temperature=True)
  with pytest.raises(ValueError, match="learnable_temperature"):
    make_train_step(cfg, optimizer, mesh)(learnable, _batch(steps, 1), jax.random.key(0))


# ---- 8 devices ----------------------------------------------------------------------------

def multi_device_main(out_path):
  """(Run in a subprocess with 8 host devices.) Replay steps 1-2 over 8 devices, save results."""
  assert jax.device_count() == N_DEVICES, jax.devices()
  meta, steps, cfg, init, _ = _load(REPLAYS[0])
  optimizer, _ = _optimizer(meta)
  step = make_train_step(cfg, optimizer, data_mesh())
  state = create_train_state(cfg, init, optimizer)
  results = {}
  for k in range(1, MULTI_DEVICE_STEPS + 1):
    batch = _batch(steps, k)
    state, metrics = step(state, batch, jax.random.key(0))
    kernel = state.params["encoder_y"]["bottleneck_module"]["fc1"]["kernel"]
    assert len(kernel.sharding.device_set) == N_DEVICES and kernel.sharding.is_fully_replicated
    results.update({f"step{k}/{key}": v for key, v in jax.device_get(metrics).items()})
  for module, sd in _state_dicts(state.params, cfg).items():
    results.update({f"params/{module}/{key}": v for key, v in sd.items()})
  np.savez(out_path, **results)


@pytest.fixture(scope="module", autouse=True)
def multi_device_run(tmp_path_factory):
  """Start the 8-device run in a subprocess right away, so it overlaps the other tests."""
  out = tmp_path_factory.mktemp("multi_device")
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={N_DEVICES}"
  env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
  code = ("from tests.test_train_step import multi_device_main;"
          f" multi_device_main({str(out / 'results.npz')!r})")
  with open(out / "log.txt", "w") as log:
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
  yield proc, out
  if proc.poll() is None:  # its test was deselected
    proc.kill()
    proc.wait()


def test_eight_devices_match_one_device_with_global_negatives(multi_device_run, replays):
  """Each device holds one sample: per-device negatives would give a loss of exactly 0."""
  proc, out = multi_device_run
  replay = replays(REPLAYS[0])
  assert proc.wait(timeout=300) == 0, (out / "log.txt").read_text()[-3000:]
  results = dict(np.load(out / "results.npz"))
  for k in range(1, MULTI_DEVICE_STEPS + 1):
    ours = replay["metrics"][k - 1]
    for key in ("loss", "grad_norm", "accuracy_f2y", "accuracy_y2f", "temperature"):
      np.testing.assert_allclose(results[f"step{k}/{key}"], ours[key], rtol=1e-5,
                                 err_msg=f"step {k} {key}")
  one_device = _state_dicts(replay["params_after"][MULTI_DEVICE_STEPS], replay["cfg"])
  errors = {f"{m}/{key}": float(np.abs(results[f"params/{m}/{key}"] - v).max())
            for m, sd in one_device.items() for key, v in sd.items()}
  _assert_params_close("8 devices vs 1", errors, tol=1e-5)


TRIMMED_WIDTHS = (32, 64, 96, 128, 160, 192, 200)  # equation_bucket=32: ceil(200 / 32) = 7


def _placed_widths(batches, sharding, bucket):
  """The equation widths global_batch gives `batches` with train.equation_bucket=`bucket`."""
  return [trainer.global_batch(b, sharding, equation_bucket=bucket)["equations"].shape[1]
          for b in batches]


def test_train_step_compiles_once_per_equation_width(replay_data, mesh):
  """equation_bucket=0: one compilation; 32: one per trimmed width, at most 7 (README)."""
  from snip_jax.data.batching import collate  # pylint: disable=g-import-not-at-top
  from snip_jax.symbolic import default_env_config, generate_sample  # pylint: disable=g-import-not-at-top

  meta, _, cfg, init, _ = replay_data[REPLAYS[0]]
  env_cfg = default_env_config(max_input_dimension=cfg.max_input_dimension,
                               float_precision=cfg.float_precision, mantissa_len=cfg.mantissa_len)
  rng = np.random.default_rng(0)
  batches = [collate([generate_sample(rng, env_cfg) for _ in range(4)], env_cfg)
             for _ in range(50)]
  sharding = NamedSharding(mesh, P(train_step_lib.DATA_AXIS))
  assert set(_placed_widths(batches, sharding, 0)) == {200}
  trimmed = set(_placed_widths(batches, sharding, 32))
  assert trimmed <= set(TRIMMED_WIDTHS) and len(trimmed) >= 2
  # Every longest-equation length 1..200 lands on one of the 7 widths, and each is reached.
  one_row = {k: v[:1] for k, v in batches[0].items()}
  lengths = [{**one_row, "equation_lengths": np.array([n], np.int32)} for n in range(1, 201)]
  assert sorted(set(_placed_widths(lengths, sharding, 32))) == list(TRIMMED_WIDTHS)

  optimizer, schedule = _optimizer(meta)
  step = make_train_step(cfg, optimizer, mesh, lr_schedule=schedule)
  state = create_train_state(cfg, init, optimizer)
  stepped, compilations = batches[:5], {}
  for bucket in (0, 32):
    for batch in stepped:
      state, metrics = step(state, trainer.global_batch(batch, sharding, equation_bucket=bucket),
                            jax.random.key(0))
      assert np.isfinite(float(metrics["loss"]))
    compilations[bucket] = step.jitted._cache_size()  # pylint: disable=protected-access
  widths = set(_placed_widths(stepped, sharding, 32))
  assert len(widths) == 2  # 64 and 96: enough to tell one compilation per width from per batch
  assert compilations == {0: 1, 32: 1 + len(widths)}


def test_trimmed_equation_padding_gives_the_same_step_with_few_compilations(replay_data, mesh):
  """trim_equations (train.equation_bucket) changes only the work: loss and grads as at 200."""
  from snip_jax.data.batching import collate, trim_equations  # pylint: disable=g-import-not-at-top
  from snip_jax.symbolic import default_env_config, generate_sample  # pylint: disable=g-import-not-at-top

  _, _, cfg, init, _ = replay_data[REPLAYS[0]]
  env_cfg = default_env_config(max_input_dimension=cfg.max_input_dimension,
                               float_precision=cfg.float_precision, mantissa_len=cfg.mantissa_len)
  rng = np.random.default_rng(1)
  grad_fn = make_grad_fn(cfg, mesh)
  state = create_train_state(cfg, init, snip_optimizer(lr=1e-3))
  widths = set()
  for _ in range(3):
    batch = collate([generate_sample(rng, env_cfg) for _ in range(4)], env_cfg)
    trimmed = trim_equations(batch, 16)
    widths.add(trimmed["equations"].shape[1])
    assert trimmed["equations"].shape[1] < 200
    assert trimmed["equations"].shape[1] >= batch["equation_lengths"].max()
    full_grads, full_metrics = grad_fn(state, batch, jax.random.key(0))
    trim_grads, trim_metrics = grad_fn(state, trimmed, jax.random.key(0))
    np.testing.assert_allclose(trim_metrics["loss"], full_metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(trim_grads), jax.tree.leaves(full_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert len(widths) >= 2
