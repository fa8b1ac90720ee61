"""ModelConfig.attention: the softmax_attention kernel and jax.nn.dot_product_attention agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snip_jax.train.checkpoints import model_config_from_json, model_config_to_json
from snip_jax.model import SNIP, SNIPSR, ModelConfig, init_params
from snip_jax.model.modules import MultiHeadAttention, resolve_attention
from tests.test_model import TINY_CFG

DIM, HEADS, BATCH = 8, 2, 3
LENGTHS = np.array([7, 4, 1])


def _key_padding_mask(slen):
  """[B, 1, 1, slen]: True at the keys before each sample's length."""
  return jnp.asarray(np.arange(slen)[None, None, None, :] < LENGTHS[:, None, None, None])


# (name, query length, key length, key padding mask?, causal?)
CASES = [("encoder_self", 7, 7, True, False), ("decoder_self", 6, 6, False, True),
         ("cross", 5, 9, False, False)]


def _attention_loss(attention, dtype=jnp.float32, dropout=0.0, deterministic=True):
  """(loss(params, x, kv, mask, causal), module) of one MultiHeadAttention with `attention`."""
  module = MultiHeadAttention(HEADS, DIM, dropout, dtype, attention)

  def loss(params, x, kv, mask, causal):
    out = module.apply({"params": params}, x, kv, mask, deterministic, causal=causal,
                       rngs={"dropout": jax.random.PRNGKey(3)})
    return jnp.sum(out.astype(jnp.float32) * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
  return loss, module


def _case_inputs(q_len, k_len, padded, self_attention):
  """(x, kv, mask) for one case, kv = x for self-attention."""
  rng = np.random.default_rng(q_len)
  x = jnp.asarray(rng.normal(size=(BATCH, q_len, DIM)), jnp.float32)
  kv = x if self_attention else jnp.asarray(rng.normal(size=(BATCH, k_len, DIM)), jnp.float32)
  return x, kv, _key_padding_mask(k_len) if padded else None


@pytest.mark.parametrize("name,q_len,k_len,padded,causal", CASES, ids=[c[0] for c in CASES])
def test_dot_product_equals_kernel_outputs_and_gradients(name, q_len, k_len, padded, causal):
  x, kv, mask = _case_inputs(q_len, k_len, padded, name != "cross")
  kernel_loss, module = _attention_loss("kernel")
  dot_loss, _ = _attention_loss("dot_product")
  params = module.init(jax.random.PRNGKey(0), x, kv, mask, True, causal=causal)["params"]
  out = {a: module.clone(attention=a).apply({"params": params}, x, kv, mask, True, causal=causal)
         for a in ("kernel", "dot_product")}
  np.testing.assert_allclose(out["dot_product"], out["kernel"], atol=1e-5, rtol=1e-5)
  grads = []
  for loss in (kernel_loss, dot_loss):
    if name == "cross":
      grads.append(jax.grad(loss, (0, 1, 2))(params, x, kv, mask, causal))
    else:  # keys and values are the queries' input: one gradient through all three
      grads.append(jax.grad(lambda p, x, f=loss: f(p, x, x, mask, causal), (0, 1))(params, x))
  kernel_leaves = jax.tree_util.tree_leaves_with_path(grads[0])
  dot_leaves = jax.tree_util.tree_leaves_with_path(grads[1])
  assert [p for p, _ in kernel_leaves] == [p for p, _ in dot_leaves]
  for (path, g_kernel), (_, g_dot) in zip(kernel_leaves, dot_leaves):
    np.testing.assert_allclose(g_dot, g_kernel, atol=1e-5, rtol=1e-5, err_msg=str(path))


def test_only_the_kernel_path_runs_the_custom_vjp_kernel():
  x, kv, mask = _case_inputs(7, 7, True, True)
  _, module = _attention_loss("kernel")
  params = module.init(jax.random.PRNGKey(0), x, kv, mask, True)["params"]
  for attention, expected in (("kernel", True), ("dot_product", False)):
    apply = module.clone(attention=attention).apply
    jaxpr = str(jax.make_jaxpr(lambda p: apply({"params": p}, x, kv, mask, True))(params))
    assert ("custom_vjp" in jaxpr) == expected, attention


def test_causal_mask_hides_later_keys_on_both_paths():
  x, kv, _ = _case_inputs(6, 6, False, True)
  _, module = _attention_loss("kernel")
  params = module.init(jax.random.PRNGKey(0), x, kv, None, True, causal=True)["params"]
  changed = kv.at[:, 3:].add(1.0)
  for attention in ("kernel", "dot_product"):
    apply = module.clone(attention=attention).apply
    before = apply({"params": params}, x, kv, None, True, causal=True)
    after = apply({"params": params}, x, changed, None, True, causal=True)
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6, err_msg=attention)


def test_bfloat16_paths_agree_in_dtype_and_value():
  x, kv, mask = _case_inputs(7, 7, True, True)
  _, module = _attention_loss("kernel", jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(0), x, kv, mask, True)["params"]
  out = {a: module.clone(attention=a).apply({"params": params}, x, kv, mask, True)
         for a in ("kernel", "dot_product")}
  assert out["kernel"].dtype == out["dot_product"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out["dot_product"], np.float32),
                             np.asarray(out["kernel"], np.float32), atol=5e-2)


def test_attention_dropout_in_training_runs_the_kernel_path():
  x, kv, mask = _case_inputs(7, 7, True, True)
  _, module = _attention_loss("kernel", dropout=0.5)
  params = module.init(jax.random.PRNGKey(0), x, kv, mask, True)["params"]
  out = {a: module.clone(attention=a).apply({"params": params}, x, kv, mask, False,
                                             rngs={"dropout": jax.random.PRNGKey(1)})
         for a in ("kernel", "dot_product")}
  np.testing.assert_array_equal(out["dot_product"], out["kernel"])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto picks by backend")
def test_auto_is_the_kernel_on_cpu():
  assert ModelConfig().attention == "auto"
  assert resolve_attention("auto") == "kernel"
  assert resolve_attention("dot_product") == "dot_product"
  assert resolve_attention("kernel") == "kernel"


def test_bad_attention_value_is_refused():
  with pytest.raises(ValueError, match=r"attention must be one of .*'dot_product'.*'flash'"):
    TINY_CFG.replace(attention="flash")


def test_attention_option_round_trips_through_converted_config_json():
  cfg = TINY_CFG.replace(attention="dot_product")
  assert model_config_from_json(model_config_to_json(cfg)) == cfg
  old_json = {k: v for k, v in model_config_to_json(TINY_CFG).items() if k != "attention"}
  assert model_config_from_json(old_json).attention == "auto"


def _tiny_batch(cfg):
  """Padded random points and equations for a tiny model (3 samples)."""
  rng = np.random.default_rng(0)
  points = rng.integers(0, cfg.n_float_words, size=(3, 10, cfg.tokens_per_point))
  n_points = np.array([10, 6, 3], np.int32)
  points[np.arange(10)[None, :] >= n_points[:, None]] = cfg.float_pad_id
  equations = rng.integers(cfg.eq_eos_id + 1, cfg.n_words, size=(3, 12)).astype(np.int32)
  lengths = np.array([12, 7, 4], np.int32)
  equations[np.arange(12)[None, :] >= lengths[:, None]] = cfg.eq_pad_id
  return jnp.asarray(points, jnp.int32), jnp.asarray(n_points), jnp.asarray(equations), \
      jnp.asarray(lengths)


def test_tiny_snip_gives_the_same_latents_and_logits_with_dot_product():
  batch = _tiny_batch(TINY_CFG)
  params = init_params(SNIP(TINY_CFG), jax.random.PRNGKey(0))
  results = {}
  for attention in ("kernel", "dot_product"):
    model = SNIP(TINY_CFG.replace(attention=attention))
    z_y, z_f = model.apply({"params": params}, *batch)
    logits = model.apply({"params": params}, z_f, batch[2], batch[3], method=SNIP.decode)
    results[attention] = (z_y, z_f, logits)
  for name, dot, kernel in zip(("z_y", "z_f", "logits"), results["dot_product"],
                               results["kernel"]):
    np.testing.assert_allclose(dot, kernel, atol=1e-5, rtol=1e-5, err_msg=name)


def test_tiny_sr_model_gives_the_same_logits_with_dot_product():
  cfg = TINY_CFG.replace(max_src_len=5)
  batch = _tiny_batch(cfg)
  params = init_params(SNIPSR(cfg), jax.random.PRNGKey(0))
  logits = {a: SNIPSR(cfg.replace(attention=a)).apply({"params": params}, *batch)
            for a in ("kernel", "dot_product")}
  np.testing.assert_allclose(logits["dot_product"], logits["kernel"], atol=1e-5, rtol=1e-5)
