"""Model options, with the original SNIP argparse names and defaults.

`ModelConfig.from_params` reads an original checkpoint's `params` dict (its argparse
namespace), so released weights can be rebuilt without guessing sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.symbolic.tokenizers import build_vocab

N_MAX_POSITIONS = 4096  # rows of every learnable position table
HEAD_HIDDEN_DIM = 128  # hidden width of the regressor / classifier heads

# Original parser defaults that differ from this class's defaults.
_PARSER_DEFAULTS = {"latent_dim": 32}

# Model options read from a checkpoint's params (the rest come from the environment options).
_MODEL_OPTIONS = ("enc_emb_dim", "dec_emb_dim", "n_enc_layers", "n_dec_layers", "n_enc_heads",
                  "n_dec_heads", "n_enc_hidden_layers", "n_dec_hidden_layers", "emb_emb_dim",
                  "n_emb_layers", "emb_expansion_factor", "latent_dim", "dropout",
                  "attention_dropout", "share_inout_emb", "clip_temperature", "max_src_len")

# Fields derived from the environment's vocabulary (ModelConfig computes those left None).
_VOCAB_FIELDS = ("n_float_words", "n_words", "float_pad_id", "eq_pad_id", "eq_eos_id")

# Environment options that change the vocabulary (and hence the embedding sizes).
_VOCAB_ENV_OPTIONS = ("max_input_dimension", "max_output_dimension", "float_precision",
                      "mantissa_len", "max_exponent", "max_int", "extra_unary_operators",
                      "extra_binary_operators", "extra_constants")

# Values of ModelConfig.attention (ours; not an original option, so not in _MODEL_OPTIONS).
ATTENTION_OPTIONS = ("auto", "kernel", "dot_product")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and options of the SNIP modules; names and defaults are the original's unless (ours)."""

  enc_emb_dim: int = 512
  dec_emb_dim: int = 512
  n_enc_layers: int = 8
  n_dec_layers: int = 8
  n_enc_heads: int = 16
  n_dec_heads: int = 16
  n_enc_hidden_layers: int = 1
  n_dec_hidden_layers: int = 1
  emb_emb_dim: int = 64
  n_emb_layers: int = 1
  emb_expansion_factor: int = 1
  # The parser default is 32; every published run and released checkpoint uses 512.
  latent_dim: int = 512
  dropout: float = 0.0
  attention_dropout: float = 0.0
  share_inout_emb: bool = True
  clip_temperature: float = 1.0
  # SR model: number of vectors the mapper makes from a latent for the decoder to attend to
  max_src_len: int = 200
  # environment options the model sizes depend on
  max_input_dimension: int = 1
  max_output_dimension: int = 1
  float_precision: int = 3
  mantissa_len: int = 1
  max_len: int = 200
  # vocabulary sizes and ids: `from_env` takes them from its environment; left None, they are
  # `build_vocab`'s for the options above and the other environment defaults
  n_float_words: int | None = None
  n_words: int | None = None
  float_pad_id: int | None = None
  eq_pad_id: int | None = None  # the second `<PAD>`: padding_idx of encoder_f / decoder embeddings
  eq_eos_id: int | None = None  # the second `<EOS>` copy: start and end of every equation
  # (ours) L2-normalise latents before the CLIP logits; the original does not.
  normalize_latents: bool = False
  # (ours) True: the original's pooling softmax over every position, padding included, so a
  # latent depends on how far its batch is padded. False: padded positions get no weight, and
  # a latent equals the original's for the sample run alone (slen = its own length).
  pool_over_padding: bool = True
  # (ours) compute dtype; parameters stay float32 and softmaxes run in float32.
  dtype: Any = jnp.float32
  # (ours) attention path, same weights and outputs: "kernel" (softmax_attention, hand-written
  # backward pass; fastest on CPU), "dot_product" (jax.nn.dot_product_attention: XLA, or cuDNN
  # flash attention where JAX picks it), "auto" ("kernel" on CPU, else "dot_product").
  attention: str = "auto"

  def __post_init__(self):
    _fill_vocabulary(self)
    _validate(self)

  @property
  def tokens_per_point(self) -> int:
    """Float tokens per data point: every input and output coordinate takes 2+mantissa_len."""
    return (self.max_input_dimension + self.max_output_dimension) * (2 + self.mantissa_len)

  @property
  def embedder_hidden_dim(self) -> int:
    """Width of the embedder's hidden layers."""
    return self.tokens_per_point * self.emb_emb_dim * self.emb_expansion_factor

  def replace(self, **overrides) -> "ModelConfig":
    """A copy with `overrides` applied (validated again)."""
    return dataclasses.replace(self, **overrides)

  @classmethod
  def from_env(cls, env_cfg: EnvConfig, **overrides) -> "ModelConfig":
    """A config whose vocabulary sizes and ids match the environment `env_cfg`."""
    fields = dict(
        max_input_dimension=env_cfg.max_input_dimension,
        max_output_dimension=env_cfg.max_output_dimension,
        float_precision=env_cfg.float_precision, mantissa_len=env_cfg.mantissa_len,
        max_len=env_cfg.max_len, **_vocabulary_fields(env_cfg))
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def from_params(cls, params: Mapping[str, Any], **overrides) -> "ModelConfig":
    """The config of an original checkpoint, from its `params` (argparse namespace as a dict).

    Options missing from `params` take the original parser's defaults (latent_dim 32).
    """
    if not isinstance(params, Mapping):
      params = vars(params)
    _check_supported(params)
    env_options = {k: params[k] for k in _VOCAB_ENV_OPTIONS + ("max_len",) if k in params}
    env_cfg = default_env_config(**env_options)
    params = {**_PARSER_DEFAULTS, **params}
    model_options = {k: _as_field_type(cls, k, params[k]) for k in _MODEL_OPTIONS if k in params}
    cfg = cls.from_env(env_cfg, **{**model_options, **overrides})
    if "n_words" in params and int(params["n_words"]) != cfg.n_words:
      raise ValueError(
          f"the checkpoint's params say n_words={params['n_words']} but its environment options"
          f" give a vocabulary of {cfg.n_words} equation words; the checkpoint was written by a"
          " different vocabulary definition and cannot be loaded as is")
    return cfg


def _vocabulary_fields(env_cfg: EnvConfig) -> dict[str, int]:
  """The vocabulary sizes and ids of the environment `env_cfg`, by ModelConfig field."""
  vocab = build_vocab(env_cfg)
  return dict(n_float_words=vocab.n_float_words, n_words=vocab.n_words,
              float_pad_id=vocab.float_pad_id, eq_pad_id=vocab.pad_id, eq_eos_id=vocab.eos_id)


def _fill_vocabulary(cfg: ModelConfig) -> None:
  """Set the vocabulary fields left None to those of the environment the config describes."""
  missing = [name for name in _VOCAB_FIELDS if getattr(cfg, name) is None]
  if not missing:
    return
  env_cfg = default_env_config(
      max_input_dimension=cfg.max_input_dimension, max_output_dimension=cfg.max_output_dimension,
      float_precision=cfg.float_precision, mantissa_len=cfg.mantissa_len)
  values = _vocabulary_fields(env_cfg)
  for name in missing:
    object.__setattr__(cfg, name, values[name])  # frozen: set once, while constructing


def _as_field_type(cls, name: str, value: Any) -> Any:
  """Coerce an argparse value to the type of field `name` (ints stored as floats, etc.)."""
  default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
  if isinstance(default, bool):
    if isinstance(value, str):
      raise ValueError(f"option {name}={value!r} in the checkpoint params is a string, expected"
                       " a bool")
    return bool(value)
  return type(default)(value)


def _check_supported(params: Mapping[str, Any]) -> None:
  """Reject original options this port does not implement, instead of loading them wrongly."""
  for key in ("enc_positional_embeddings", "dec_positional_embeddings"):
    if params.get(key, "learnable") != "learnable":
      raise ValueError(f"{key}={params[key]!r} is not supported: only 'learnable' position"
                       " embeddings (the original default) are implemented")
  if params.get("norm_attention", False):
    raise ValueError("norm_attention=True is not supported: only the original default"
                     " (scaled dot-product attention) is implemented")
  if params.get("embedder_type", "LinearPoint") != "LinearPoint":
    raise ValueError(f"embedder_type={params['embedder_type']!r} is not supported: only"
                     " 'LinearPoint' is implemented")


def _validate(cfg: ModelConfig) -> None:
  for dim, heads, what in ((cfg.enc_emb_dim, cfg.n_enc_heads, "enc"),
                           (cfg.dec_emb_dim, cfg.n_dec_heads, "dec")):
    if heads < 1 or dim % heads:
      raise ValueError(f"{what}_emb_dim ({dim}) must be a multiple of n_{what}_heads ({heads})")
  if cfg.enc_emb_dim != cfg.dec_emb_dim:
    raise ValueError(
        f"enc_emb_dim ({cfg.enc_emb_dim}) must equal dec_emb_dim ({cfg.dec_emb_dim}): the"
        " decoder's cross-attention reads z_projection outputs of dec_emb_dim through layers"
        " sized for enc_emb_dim, which the original cannot run either")
  for name in ("n_enc_layers", "n_dec_layers", "n_enc_hidden_layers", "n_dec_hidden_layers",
               "n_emb_layers", "emb_expansion_factor", "latent_dim", "emb_emb_dim",
               "max_src_len"):
    if getattr(cfg, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
  for name in ("dropout", "attention_dropout"):
    if not 0.0 <= getattr(cfg, name) < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
  if cfg.max_len > N_MAX_POSITIONS:
    raise ValueError(f"max_len ({cfg.max_len}) exceeds the {N_MAX_POSITIONS} position"
                     " embeddings")
  if cfg.clip_temperature <= 0:
    raise ValueError(f"clip_temperature must be > 0, got {cfg.clip_temperature}")
  if jnp.dtype(cfg.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {cfg.dtype}")
  if cfg.attention not in ATTENTION_OPTIONS:
    raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTION_OPTIONS))},"
                     f" got {cfg.attention!r}")
