"""SNIP in Flax linen: point embedder, transformer encoders and decoder, property heads.

The modules mirror the original PyTorch ones (post-LN transformer, attention pooling, latent
bottleneck) down to parameter names, so a checkpoint converts one tensor to one array.
Inputs are batch-major ([B, slen, ...]); the original is sequence-major.

Intermediates are sown into the `intermediates` collection (apply with
`mutable=["intermediates"]`): per encoder `layer_outputs` (embedding LN output, then every
layer), `glob_attn` (pooling weights) and `pooled`; the decoder's `hidden`; the mapper's
`linear1_out` (before the ReLU).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from snip_jax.model.config import HEAD_HIDDEN_DIM, N_MAX_POSITIONS, ModelConfig
from snip_jax.symbolic.config import MAX_EQUATION_LEN

Array = jax.Array


def _torch_bias_init(fan_in: int):
  """PyTorch's default Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# PyTorch's default Linear weight init (kaiming_uniform, a=sqrt(5)) is U(+-1/sqrt(fan_in)).
_torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _embedding_init(padding_idx: Optional[int] = None):
  """The original's embedding init: N(0, dim**-0.5), with the padding row zeroed."""

  def init(key, shape, dtype=jnp.float32):
    table = jax.random.normal(key, shape, dtype) * shape[-1] ** -0.5
    return table if padding_idx is None else table.at[padding_idx].set(0)
  return init


def _dense(features: int, fan_in: int, dtype: Any, name: Optional[str] = None) -> nn.Dense:
  """A Dense layer initialised like torch.nn.Linear(fan_in, features)."""
  return nn.Dense(features, dtype=dtype, kernel_init=_torch_kernel_init,
                  bias_init=_torch_bias_init(fan_in), name=name)


def _layer_norm(dtype: Any, name: Optional[str] = None) -> nn.LayerNorm:
  """The original's LayerNorm: eps 1e-12, biased variance computed as E[(x - mean)^2]."""
  return nn.LayerNorm(epsilon=1e-12, dtype=dtype, use_fast_variance=False, name=name)


class LinearPointEmbedder(nn.Module):
  """Float tokens of each point -> one enc_emb_dim vector; padded points are not masked here."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    """tokens [B, slen, tokens_per_point] int -> [B, slen, enc_emb_dim]."""
    cfg = self.cfg
    if tokens.shape[-1] != cfg.tokens_per_point:
      raise ValueError(
          f"point tokens have {tokens.shape[-1]} entries per point; this config expects"
          f" {cfg.tokens_per_point} = (max_input_dimension + max_output_dimension) *"
          " (2 + mantissa_len)")
    x = nn.Embed(cfg.n_float_words, cfg.emb_emb_dim, dtype=cfg.dtype,
                 embedding_init=_embedding_init(cfg.float_pad_id), name="embeddings")(tokens)
    x = x.reshape(x.shape[:-2] + (-1,))  # token-major flatten, as the original's view
    fan_in = x.shape[-1]
    for i in range(cfg.n_emb_layers):
      x = nn.relu(_dense(cfg.embedder_hidden_dim, fan_in, cfg.dtype, f"hidden_layers_{i}")(x))
      fan_in = cfg.embedder_hidden_dim
    return _dense(cfg.enc_emb_dim, fan_in, cfg.dtype, "fc")(x)


def _attention_probabilities(q: Array, k: Array, bias: Array) -> Array:
  """softmax(q k^T + bias) over the keys, computed in float32, returned in q's dtype."""
  scores = (q @ k.swapaxes(-1, -2)).astype(jnp.float32) + bias
  return jax.nn.softmax(scores, axis=-1).astype(q.dtype)


@jax.custom_vjp
def softmax_attention(q: Array, k: Array, v: Array, bias: Array) -> Array:
  """softmax(q k^T + bias) v for [B, heads, len, head_dim] inputs; bias is 0 or -inf (masks).

  The plain formula with a hand-written backward pass: XLA's derived one is about 1.5x slower
  on CPU (bench/train_step.py).
  """
  return _attention_probabilities(q, k, bias) @ v


def _softmax_attention_fwd(q, k, v, bias):
  probabilities = _attention_probabilities(q, k, bias)
  return probabilities @ v, (q, k, v, probabilities, bias)


def _softmax_attention_bwd(residuals, d_out):
  q, k, v, probabilities, bias = residuals
  d_v = probabilities.swapaxes(-1, -2) @ d_out
  d_probabilities = (d_out @ v.swapaxes(-1, -2)).astype(jnp.float32)
  p = probabilities.astype(jnp.float32)
  d_scores = (p * (d_probabilities - jnp.sum(d_probabilities * p, axis=-1, keepdims=True))
              ).astype(q.dtype)
  return d_scores @ k, d_scores.swapaxes(-1, -2) @ q, d_v, jnp.zeros_like(bias)


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def resolve_attention(option: str) -> str:
  """The path ModelConfig.attention selects: "auto" is "kernel" on CPU, else "dot_product"."""
  if option == "auto":
    return "kernel" if jax.default_backend() == "cpu" else "dot_product"
  return option


def _attention_bias(mask: Optional[Array], causal: bool, q_len: int, k_len: int) -> Array:
  """The kernel path's additive mask: 0 where `mask` (and causality) allow, -inf elsewhere."""
  if causal:
    lower = jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None, None]
    mask = lower if mask is None else jnp.logical_and(mask, lower)
  return jnp.zeros((), jnp.float32) if mask is None else jnp.where(mask, 0.0, -jnp.inf)


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention; the softmax runs in float32, masked scores get no weight.

  `attention` picks the path (see ModelConfig.attention); jax.nn.dot_product_attention has no
  attention dropout, so training with dropout > 0 runs the kernel path whatever the option.
  `keys_values` and `attend` split a call for decoding with a cache (keys/values computed once).
  """

  n_heads: int
  dim: int
  dropout: float
  dtype: Any
  attention: str = "auto"

  def setup(self):
    self.q_lin = _dense(self.dim, self.dim, self.dtype)
    self.k_lin = _dense(self.dim, self.dim, self.dtype)
    self.v_lin = _dense(self.dim, self.dim, self.dtype)
    self.out_lin = _dense(self.dim, self.dim, self.dtype)
    self.attention_dropout = nn.Dropout(self.dropout)

  def _heads(self, projected: Array) -> Array:
    """[..., dim] -> [..., heads, head_dim]."""
    return projected.reshape(projected.shape[:-1] + (self.n_heads, self.dim // self.n_heads))

  def keys_values(self, kv: Array) -> tuple[Array, Array]:
    """kv [B, k, dim] -> keys and values [B, k, heads, head_dim]."""
    return self._heads(self.k_lin(kv)), self._heads(self.v_lin(kv))

  def __call__(self, x: Array, kv: Array, mask: Optional[Array], deterministic: bool,
               causal: bool = False) -> Array:
    """x [B, q, dim], kv [B, k, dim], mask broadcastable to [B, heads, q, k] (True = attend).

    causal: also mask the keys after each query (decoder self-attention).
    """
    k, v = self.keys_values(kv)
    return self.attend(x, k, v, mask, deterministic, causal)

  def attend(self, x: Array, k: Array, v: Array, mask: Optional[Array],
             deterministic: bool = True, causal: bool = False) -> Array:
    """Queries from x [B, q, dim] over keys/values [B, k, heads, head_dim] -> [B, q, dim]."""
    q = self._heads(self.q_lin(x)) / (self.dim // self.n_heads) ** 0.5
    use_dropout = not deterministic and self.dropout > 0.0
    if resolve_attention(self.attention) == "dot_product" and not use_dropout:
      context = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, is_causal=causal,
                                             implementation=None)
    else:
      bias = _attention_bias(mask, causal, q.shape[1], k.shape[1])
      q, k, v = (t.swapaxes(1, 2) for t in (q, k, v))  # [B, heads, len, head_dim]
      if use_dropout:
        weights = self.attention_dropout(_attention_probabilities(q, k, bias),
                                         deterministic=False)
        context = weights @ v
      else:
        context = softmax_attention(q, k, v, bias)
      context = context.swapaxes(1, 2)
    return self.out_lin(context.reshape(context.shape[:-2] + (self.dim,)))


class TransformerFFN(nn.Module):
  """lin1 -> ReLU -> [midlin -> ReLU]* -> lin2 -> dropout."""

  dim: int
  hidden_dim: int
  n_hidden_layers: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    x = nn.relu(_dense(self.hidden_dim, self.dim, self.dtype, "lin1")(x))
    for i in range(self.n_hidden_layers - 1):
      x = nn.relu(_dense(self.hidden_dim, self.hidden_dim, self.dtype, f"midlin_{i}")(x))
    x = _dense(self.dim, self.hidden_dim, self.dtype, "lin2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class Bottleneck(nn.Module):
  """The original's BaseBottleneck: one Linear from the pooled vector to the latent."""

  features: int
  fan_in: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _dense(self.features, self.fan_in, self.dtype, "fc1")(x)


class OutputProjection(nn.Module):
  """Decoder vocabulary projection; with share_inout_emb its weight is the embedding table."""

  n_words: int
  dim: int
  tied: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: Array, embedding_table: Array) -> Array:
    """x [..., dim] -> logits [..., n_words]."""
    if self.tied:
      kernel = embedding_table.T
    else:
      kernel = self.param("kernel", _torch_kernel_init, (self.dim, self.n_words))
    bias = self.param("bias", _torch_bias_init(self.dim), (self.n_words,))
    return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class _Transformer(nn.Module):
  """Layers shared by the encoders and the decoder, named as in the original TransformerModel."""

  cfg: ModelConfig

  is_decoder = False

  @property
  def dim(self) -> int:
    """Model width of this side (enc_emb_dim or dec_emb_dim)."""
    return self.cfg.dec_emb_dim if self.is_decoder else self.cfg.enc_emb_dim

  def _layer_sizes(self) -> tuple[int, int, int]:
    """(n_layers, n_heads, n_hidden_layers) of this side of the model."""
    cfg = self.cfg
    if self.is_decoder:
      return cfg.n_dec_layers, cfg.n_dec_heads, cfg.n_dec_hidden_layers
    return cfg.n_enc_layers, cfg.n_enc_heads, cfg.n_enc_hidden_layers

  def setup(self):
    cfg, dim = self.cfg, self.dim
    n_layers, n_heads, n_hidden_layers = self._layer_sizes()
    self.position_embeddings = nn.Embed(N_MAX_POSITIONS, dim, dtype=cfg.dtype,
                                        embedding_init=_embedding_init())
    self.layer_norm_emb = _layer_norm(cfg.dtype)
    self.attentions = [MultiHeadAttention(n_heads, dim, cfg.attention_dropout, cfg.dtype,
                                          cfg.attention) for _ in range(n_layers)]
    self.layer_norm1 = [_layer_norm(cfg.dtype) for _ in range(n_layers)]
    self.ffns = [TransformerFFN(dim, 4 * dim, n_hidden_layers, cfg.dropout, cfg.dtype)
                 for _ in range(n_layers)]
    self.layer_norm2 = [_layer_norm(cfg.dtype) for _ in range(n_layers)]
    if self.is_decoder:
      self.layer_norm15 = [_layer_norm(cfg.dtype) for _ in range(n_layers)]
      self.encoder_attn = [MultiHeadAttention(n_heads, dim, cfg.attention_dropout, cfg.dtype,
                                              cfg.attention) for _ in range(n_layers)]
    # Every original TransformerModel owns these three, used or not.
    self.glob_attn_module = _dense(1, dim, cfg.dtype)
    self.bottleneck_module = Bottleneck(cfg.latent_dim, dim, cfg.dtype)
    self.z_projection = _dense(dim, cfg.latent_dim, cfg.dtype)
    self.drop = nn.Dropout(cfg.dropout)

  def _embed(self, tensor: Array, mask: Array, deterministic: bool) -> Array:
    """Add positions, LayerNorm, dropout, zero the padded positions."""
    slen = tensor.shape[1]
    if slen > N_MAX_POSITIONS:
      raise ValueError(f"sequence length {slen} exceeds the {N_MAX_POSITIONS} position"
                       " embeddings")
    tensor = tensor + self.position_embeddings(jnp.arange(slen))[None]
    tensor = self.drop(self.layer_norm_emb(tensor), deterministic=deterministic)
    return tensor * mask[..., None].astype(tensor.dtype)

  def _layer(self, i: int, tensor: Array, attn_mask: Optional[Array], mask: Array,
             deterministic: bool, cross_kv: Optional[Array] = None) -> Array:
    """One post-LN block: self-attention (causal in the decoder), [cross-attention], FFN."""
    attn = self.attentions[i](tensor, tensor, attn_mask, deterministic, causal=self.is_decoder)
    tensor = self.layer_norm1[i](tensor + self.drop(attn, deterministic=deterministic))
    if cross_kv is not None:
      attn = self.encoder_attn[i](tensor, cross_kv, None, deterministic)
      tensor = self.layer_norm15[i](tensor + self.drop(attn, deterministic=deterministic))
    tensor = self.layer_norm2[i](tensor + self.ffns[i](tensor, deterministic))
    return tensor * mask[..., None].astype(tensor.dtype)


def _length_mask(lengths: Array, slen: int) -> Array:
  """[B, slen] bool, True at positions < length."""
  return jnp.arange(slen)[None, :] < lengths[:, None]


class TransformerEncoder(_Transformer):
  """Bidirectional encoder pooled into a latent vector (encoder_y: points, encoder_f: equations).

  With `with_embeddings=False` (encoder_y) the input is already embedded (the point embedder's
  output); otherwise it is token ids embedded by `embeddings`, whose padding_idx row is the
  equation `<PAD>` (second copy).
  """

  with_embeddings: bool = True
  # With pool_over_padding: the width the pooling softmax covers. A narrower input counts the
  # missing positions as the padding they would be (hidden state 0, score = the pooling bias),
  # so trimmed padding gives the latent of the full width. None: the input's width.
  pool_len: Optional[int] = None

  def setup(self):
    super().setup()
    if self.with_embeddings:
      self.embeddings = nn.Embed(self.cfg.n_words, self.dim, dtype=self.cfg.dtype,
                                 embedding_init=_embedding_init(self.cfg.eq_pad_id))

  def __call__(self, x: Array, lengths: Array, deterministic: bool = True) -> Array:
    """x [B, slen] ids or [B, slen, dim] embeddings, lengths [B] -> latent [B, latent_dim]."""
    slen = x.shape[1]
    mask = _length_mask(lengths, slen)
    tensor = self.embeddings(x) if self.with_embeddings else x.astype(self.cfg.dtype)
    tensor = self._embed(tensor, mask, deterministic)
    self.sow("intermediates", "layer_outputs", tensor)
    key_mask = mask[:, None, None, :]  # padded keys are masked, padded queries are computed
    for i in range(len(self.attentions)):
      tensor = self._layer(i, tensor, key_mask, mask, deterministic)
      self.sow("intermediates", "layer_outputs", tensor)
    # The original's softmax covers all slen positions, padding included.
    scores = self.glob_attn_module(tensor)[..., 0].astype(jnp.float32)
    if not self.cfg.pool_over_padding:
      scores = jnp.where(mask, scores, -jnp.inf)
    n_virtual = (self.pool_len or slen) - slen if self.cfg.pool_over_padding else 0
    if n_virtual > 0:
      weights = self._softmax_with_virtual_padding(scores, n_virtual)
    else:
      weights = jax.nn.softmax(scores, axis=-1)
    pooled = jnp.einsum("bs,bsd->bd", weights.astype(tensor.dtype), tensor)
    self.sow("intermediates", "glob_attn", weights)
    self.sow("intermediates", "pooled", pooled)
    latent = self.bottleneck_module(pooled)
    if self.is_initializing():
      self.z_projection(latent)
    return latent

  def _softmax_with_virtual_padding(self, scores: Array, n_virtual: int) -> Array:
    """Pooling weights of the real positions when n_virtual padded ones (score = bias) follow."""
    zero_state = jnp.zeros((1, self.dim), self.cfg.dtype)
    padded_score = self.glob_attn_module(zero_state)[0, 0].astype(jnp.float32)
    normaliser = jnp.logaddexp(jax.nn.logsumexp(scores, axis=-1),
                               padded_score + jnp.log(jnp.float32(n_virtual)))
    return jnp.exp(scores - normaliser[:, None])


class TransformerDecoder(_Transformer):
  """Causal decoder of equation tokens conditioned on a latent through cross-attention.

  The cross-attention keys/values are z_projection(latent) repeated at every position, as in
  the original, so its softmax is uniform and its output is the same for every query.
  """

  is_decoder = True

  def setup(self):
    super().setup()
    cfg = self.cfg
    self.embeddings = nn.Embed(cfg.n_words, self.dim, dtype=cfg.dtype,
                               embedding_init=_embedding_init(cfg.eq_pad_id))
    self.proj = OutputProjection(cfg.n_words, self.dim, cfg.share_inout_emb, cfg.dtype)

  def __call__(self, x: Array, lengths: Array, latent: Array,
               deterministic: bool = True) -> Array:
    """x [B, slen] ids, lengths [B], latent [B, latent_dim] -> hidden states [B, slen, dim]."""
    kv = self.z_projection(latent.astype(self.cfg.dtype))[:, None, :]
    kv = jnp.broadcast_to(kv, x.shape + (self.dim,))
    tensor = self._decode(x, lengths, kv, deterministic)
    if self.is_initializing():
      self.glob_attn_module(tensor)
      self.bottleneck_module(tensor[:, 0])
    return tensor

  def _decode(self, x: Array, lengths: Array, kv: Array, deterministic: bool) -> Array:
    """Causal layers over ids x [B, slen] cross-attending (unmasked) to kv [B, k, dim]."""
    slen = x.shape[1]
    mask = _length_mask(lengths, slen)
    tensor = self._embed(self.embeddings(x), mask, deterministic)
    for i in range(len(self.attentions)):
      tensor = self._layer(i, tensor, None, mask, deterministic, cross_kv=kv)
    self.sow("intermediates", "hidden", tensor)
    return tensor

  def logits(self, hidden: Array) -> Array:
    """Hidden states [..., dim] -> vocabulary logits [..., n_words]."""
    return self.proj(hidden, self.embeddings.embedding)

  def init_cache(self, kv: Array, max_len: int) -> dict:
    """A decoding cache: per layer the cross-attention keys/values of kv [B, k, dim] and empty
    self-attention ones for `max_len` positions."""
    batch, heads = kv.shape[0], self.attentions[0].n_heads
    empty = jnp.zeros((batch, max_len, heads, self.dim // heads), self.cfg.dtype)
    kv = kv.astype(self.cfg.dtype)
    return {"cross": tuple(attn.keys_values(kv) for attn in self.encoder_attn),
            "self": tuple((empty, empty) for _ in self.attentions)}

  def decode_step(self, tokens: Array, position: Array, alive: Array,
                  cache: dict) -> tuple[Array, dict]:
    """One cached decoding step: tokens [B] at `position` -> (logits [B, n_words], cache).

    Only the new position is computed; its self-attention keys/values join the cache, and the
    cross-attention ones are reused. Rows where `alive` is False get a zeroed hidden state, as
    the original's length mask does for finished sequences.
    """
    position = jnp.asarray(position, jnp.int32)
    keep = alive.astype(self.cfg.dtype)[:, None, None]
    tensor = self.embeddings(tokens)[:, None] + self.position_embeddings(position)[None, None]
    tensor = self.layer_norm_emb(tensor) * keep
    visible = (jnp.arange(cache["self"][0][0].shape[1]) <= position)[None, None, None, :]
    updated = []
    for i, attention in enumerate(self.attentions):
      k_new, v_new = attention.keys_values(tensor)
      k, v = (jax.lax.dynamic_update_slice_in_dim(old, new, position, axis=1)
              for old, new in zip(cache["self"][i], (k_new, v_new)))
      updated.append((k, v))
      tensor = self.layer_norm1[i](tensor + attention.attend(tensor, k, v, visible))
      tensor = self.layer_norm15[i](tensor + self.encoder_attn[i].attend(tensor,
                                                                         *cache["cross"][i], None))
      tensor = self.layer_norm2[i](tensor + self.ffns[i](tensor, True)) * keep
    return self.logits(tensor[:, 0]), {"cross": cache["cross"], "self": tuple(updated)}


class SRDecoder(TransformerDecoder):
  """E2E's decoder in the SR model: cross-attends to the mapper's vectors, without a mask.

  It owns no pooling, bottleneck or z_projection (E2E's TransformerModel has none).
  """

  def __call__(self, x: Array, lengths: Array, src: Array, deterministic: bool = True) -> Array:
    """x [B, slen] ids, lengths [B], src [B, max_src_len, dim] -> hidden [B, slen, dim]."""
    return self._decode(x, lengths, src.astype(self.cfg.dtype), deterministic)


class Mapper(nn.Module):
  """SNIP_E2E_MAP: latent -> ReLU(linear1) viewed as [max_src_len, dim] -> linear2 per row."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, latent: Array) -> Array:
    """latent [B, latent_dim] -> [B, max_src_len, dec_emb_dim]."""
    cfg = self.cfg
    dim = cfg.dec_emb_dim
    x = _dense(cfg.max_src_len * dim, cfg.latent_dim, cfg.dtype, "linear1")(
        latent.astype(cfg.dtype))
    self.sow("intermediates", "linear1_out", x)
    x = nn.relu(x).reshape(x.shape[:-1] + (cfg.max_src_len, dim))
    return _dense(dim, dim, cfg.dtype, "linear2")(x)


class MLPRegressor(nn.Module):
  """Property head: Linear(latent, 128) -> ReLU -> Linear(128, 1)."""

  cfg: ModelConfig

  def setup(self):
    self.fc1 = _dense(HEAD_HIDDEN_DIM, self.cfg.latent_dim, self.cfg.dtype)
    self.fc2 = _dense(1, HEAD_HIDDEN_DIM, self.cfg.dtype)

  def __call__(self, latent: Array) -> Array:
    """latent [B, latent_dim] -> [B, 1]."""
    return self.fc2(nn.relu(self.fc1(latent.astype(self.cfg.dtype))))


class MLPClassifier(MLPRegressor):
  """The regressor followed by a sigmoid: a probability in [0, 1]."""

  def __call__(self, latent: Array) -> Array:
    """latent [B, latent_dim] -> probabilities [B, 1]."""
    return nn.sigmoid(super().__call__(latent))


class _PointModel(nn.Module):
  """Base of the models whose `embedder` and `encoder_y` turn points into latents."""

  cfg: ModelConfig

  def embed_points(self, points: Array) -> Array:
    """Point tokens [B, slen, T] -> embedder output [B, slen, enc_emb_dim] (float32)."""
    return self.embedder(points).astype(jnp.float32)

  def encode_points(self, points: Array, n_points: Array, deterministic: bool = True) -> Array:
    """Point tokens [B, slen, T], counts [B] -> z_y [B, latent_dim].

    With pool_over_padding (the original's behaviour) the pooling softmax covers all slen
    positions, so z_y depends on slen: the original's slen is the most points in the batch,
    `collate` pads to max_len.
    """
    embedded = self.embedder(points)
    return self.encoder_y(embedded, n_points, deterministic).astype(jnp.float32)


class SNIP(_PointModel):
  """The six original modules: embedder, encoder_y, encoder_f, decoder, regressor, classifier.

  Calling the model returns the CLIP latents (z_y of the points, z_f of the equations);
  `init` also creates the decoder and head parameters, so the tree mirrors a checkpoint.
  Public outputs are float32 whatever the compute dtype.
  """

  def setup(self):
    cfg = self.cfg
    self.embedder = LinearPointEmbedder(cfg)
    self.encoder_y = TransformerEncoder(cfg, with_embeddings=False)
    self.encoder_f = TransformerEncoder(cfg, with_embeddings=True, pool_len=MAX_EQUATION_LEN)
    self.decoder = TransformerDecoder(cfg)
    self.regressor = MLPRegressor(cfg)
    self.classifier = MLPClassifier(cfg)

  def __call__(self, points: Array, n_points: Array, equations: Array, equation_lengths: Array,
               deterministic: bool = True) -> tuple[Array, Array]:
    """Batch arrays (as `collate` makes them) -> (z_y, z_f), each [B, latent_dim]."""
    z_y = self.encode_points(points, n_points, deterministic)
    z_f = self.encode_equations(equations, equation_lengths, deterministic)
    if self.is_initializing():
      self.decode(z_f, equations, equation_lengths, deterministic)
      self.regress(z_f)
      self.classify(z_f)
    return z_y, z_f

  def encode_equations(self, equations: Array, equation_lengths: Array,
                       deterministic: bool = True) -> Array:
    """Equation ids [B, slen], lengths [B] -> z_f [B, latent_dim].

    The original pads equations to 200 and pools over the padding; a narrower array (trimmed
    padding, e.g. data.batching.trim_equations) gives the same latent, with less compute.
    """
    return self.encoder_f(equations, equation_lengths, deterministic).astype(jnp.float32)

  def decode(self, latent: Array, equations: Array, equation_lengths: Array,
             deterministic: bool = True) -> Array:
    """Teacher-forced decoder logits [B, slen, n_words]; position p predicts token p + 1."""
    hidden = self.decoder(equations, equation_lengths, latent, deterministic)
    return self.decoder.logits(hidden).astype(jnp.float32)

  def regress(self, latent: Array) -> Array:
    """Regressor head on a latent: [B, 1]."""
    return self.regressor(latent).astype(jnp.float32)

  def classify(self, latent: Array) -> Array:
    """Classifier head on a latent: probabilities [B, 1]."""
    return self.classifier(latent).astype(jnp.float32)

  def predict_property(self, equations: Array, equation_lengths: Array,
                       deterministic: bool = True) -> tuple[Array, Array]:
    """The original's numeric-property predictor: (regressor(z_f) [B], z_f [B, latent_dim])."""
    z_f = self.encode_equations(equations, equation_lengths, deterministic)
    return self.regress(z_f)[:, 0], z_f


class SNIPSR(_PointModel):
  """The SR model: embedder and encoder_y (SNIP's), mapper, and E2E's decoder.

  Calling it gives the teacher-forced decoder logits [B, slen, n_words] of the equations
  (`x2` of the original: `<EOS>`, tokens, `<EOS>`, filler) given the points; position p
  predicts token p + 1. Public outputs are float32 whatever the compute dtype.
  """

  def setup(self):
    cfg = self.cfg
    self.embedder = LinearPointEmbedder(cfg)
    self.encoder_y = TransformerEncoder(cfg, with_embeddings=False)
    self.decoder = SRDecoder(cfg)
    self.mapper = Mapper(cfg)

  def __call__(self, points: Array, n_points: Array, equations: Array, equation_lengths: Array,
               deterministic: bool = True) -> Array:
    """Batch arrays (as `collate` makes them) -> teacher-forced logits [B, slen, n_words]."""
    z_y = self.encode_points(points, n_points, deterministic)
    return self.decode(self.map_latent(z_y), equations, equation_lengths, deterministic)

  def map_latent(self, latent: Array) -> Array:
    """Latents [B, latent_dim] -> the decoder's source vectors [B, max_src_len, dim]."""
    return self.mapper(latent).astype(jnp.float32)

  def decode(self, src: Array, equations: Array, equation_lengths: Array,
             deterministic: bool = True) -> Array:
    """Mapper output [B, max_src_len, dim], ids [B, slen], lengths [B] -> logits (float32)."""
    hidden = self.decoder(equations, equation_lengths, src, deterministic)
    return self.decoder.logits(hidden).astype(jnp.float32)


def dummy_inputs(cfg: ModelConfig, batch_size: int = 1) -> tuple[Array, ...]:
  """Smallest valid inputs for `SNIP.init`: one point and a two-token equation per sample."""
  points = jnp.full((batch_size, 1, cfg.tokens_per_point), cfg.float_pad_id, jnp.int32)
  equations = jnp.full((batch_size, 2), cfg.eq_eos_id, jnp.int32)
  return (points, jnp.ones((batch_size,), jnp.int32), equations,
          jnp.full((batch_size,), 2, jnp.int32))


def init_params(model: SNIP | SNIPSR, rng: Array) -> dict:
  """Freshly initialised parameters of every module (the `params` collection)."""
  return model.init(rng, *dummy_inputs(model.cfg))["params"]


def _maybe_normalize(z: Array, normalize: bool) -> Array:
  """z unchanged, or L2-normalised along its last axis."""
  return z / jnp.linalg.norm(z, axis=-1, keepdims=True) if normalize else z


def clip_logits(z_f: Array, z_y: Array, temperature: float = 1.0,
                normalize: bool = False) -> tuple[Array, Array]:
  """(logits_per_f, logits_per_y) = (z_f z_y^T, z_y z_f^T) / temperature.

  The original does not normalise the latents; `normalize=True` L2-normalises them first
  (standard CLIP).
  """
  z_f = _maybe_normalize(z_f.astype(jnp.float32), normalize)
  z_y = _maybe_normalize(z_y.astype(jnp.float32), normalize)
  logits_per_f = z_f @ z_y.T / temperature
  return logits_per_f, logits_per_f.T


def _cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-row cross-entropy of integer labels."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def clip_loss(z_f: Array, z_y: Array, temperature: float = 1.0, normalize: bool = False) -> Array:
  """Symmetric InfoNCE: mean of the equation->points and points->equation cross-entropies."""
  logits_per_f, logits_per_y = clip_logits(z_f, z_y, temperature, normalize)
  labels = jnp.arange(logits_per_f.shape[0])
  return (_cross_entropy(logits_per_f, labels).mean()
          + _cross_entropy(logits_per_y, labels).mean()) / 2


def decoder_target_mask(equation_lengths: Array, slen: int) -> Array:
  """[B, slen] bool: positions whose next token is a target (p < length - 1)."""
  return jnp.arange(slen)[None, :] < equation_lengths[:, None] - 1


def decoder_token_accuracy(logits: Array, equations: Array, equation_lengths: Array) -> Array:
  """Share of target tokens (as in decoder_loss) that are the arg-max of their logits."""
  mask = decoder_target_mask(equation_lengths, logits.shape[1])[:, :-1]
  hits = jnp.argmax(logits[:, :-1], axis=-1) == equations[:, 1:]
  return jnp.sum(hits & mask) / jnp.sum(mask)


def decoder_loss(logits: Array, equations: Array, equation_lengths: Array) -> Array:
  """Mean next-token cross-entropy over the targets, as the original's `predict`."""
  slen = logits.shape[1]
  mask = decoder_target_mask(equation_lengths, slen)[:, :-1]
  targets = equations[:, 1:]
  ce = _cross_entropy(logits[:, :-1], targets)
  return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.sum(mask)
