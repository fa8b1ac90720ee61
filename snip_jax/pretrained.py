"""`load_pretrained`: embed datasets and equations with a released (or converted) SNIP model.

  model = snip_jax.load_pretrained("snip-10dmax.pth")          # or a converted directory
  z_y = model.embed_points(x, y)                               # one dataset -> [latent_dim]
  z_f = model.embed_equations(["add,0.918,mul,0.403,x_0", "sin(x_0)**2"])
  model.similarity(z_f, z_y[None])                             # the CLIP logits

Every dataset is padded to `max_len` points exactly as the original's training batches were,
so its latent never depends on what else is in the batch (the original's encoder pools over
the batch's longest sample, including padding).
"""

from __future__ import annotations

import functools
import os
import pathlib
import types
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from snip_jax.data.batching import collate_equations, collate_points
from snip_jax.model import SNIP, ModelConfig
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.datapoints import normalize_outputs
from snip_jax.symbolic.tokenizers import build_vocab, encode_prefix
from snip_jax.symbolic.trees import Expression, from_sympy, parse_infix, parse_prefix

ArrayLike = Union[np.ndarray, Sequence[float]]


class Pretrained:
  """A SNIP model with its params and environment, with batched, jitted embedding calls."""

  def __init__(self, model_cfg: ModelConfig, env_cfg: EnvConfig, params: Any,
               batch_size: int = 64):
    self.model_cfg = model_cfg
    self.env_cfg = env_cfg
    self.params = jax.tree.map(jnp.asarray, params)
    self.batch_size = batch_size
    self.model = SNIP(model_cfg)

  @functools.cached_property
  def _encode_points(self):
    return jax.jit(lambda p, points, n: self.model.apply({"params": p}, points, n,
                                                         method=SNIP.encode_points))

  @functools.cached_property
  def _encode_equations(self):
    return jax.jit(lambda p, eqs, n: self.model.apply({"params": p}, eqs, n,
                                                      method=SNIP.encode_equations))

  # ---- points ----

  def embed_points(self, x, y=None, *, subsample: Optional[np.random.Generator] = None
                   ) -> np.ndarray:
    """Latents of datasets: `(x [N, d], y [N] or [N, 1])` -> [latent_dim], or lists -> [B, latent_dim].

    Datasets with more than `max_len` points are refused unless `subsample` (a numpy
    Generator) is given, which draws `max_len` of them without replacement. With a
    `normalize_y` model (SNIP-1d-normalized), y is min-max normalised as in its training data.
    """
    single = not isinstance(x, (list, tuple))
    xs, ys = ([x], [y]) if single else (list(x), list(y))
    if len(xs) != len(ys):
      raise ValueError(f"got {len(xs)} x arrays and {len(ys)} y arrays")
    datasets = [self._prepare_points(i, xi, yi, subsample) for i, (xi, yi) in enumerate(zip(xs, ys))]
    latents = self._batched(datasets, lambda chunk: collate_points(chunk, self.env_cfg),
                            ("points", "n_points"), self._encode_points)
    return latents[0] if single else latents

  def _prepare_points(self, index: int, x, y, subsample) -> types.SimpleNamespace:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    cfg = self.env_cfg
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
      raise ValueError(f"dataset {index}: x must be [N, d] and y [N] or [N, 1] with the same N;"
                       f" got {x.shape} and {y.shape}")
    if x.shape[1] > cfg.max_input_dimension or y.shape[1] > cfg.max_output_dimension:
      raise ValueError(f"dataset {index} has {x.shape[1]} input columns; this model takes at most"
                       f" max_input_dimension={cfg.max_input_dimension}")
    if len(x) > cfg.max_len:
      if subsample is None:
        raise ValueError(f"dataset {index} has {len(x)} points; the model takes at most"
                         f" max_len={cfg.max_len} (pass subsample=np.random.default_rng(seed) to"
                         " draw that many at random)")
      keep = np.sort(subsample.choice(len(x), cfg.max_len, replace=False))
      x, y = x[keep], y[keep]
    if len(x) == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
      raise ValueError(f"dataset {index} is empty or has NaN/inf values")
    if cfg.normalize_y:
      y = normalize_outputs(y)
    return types.SimpleNamespace(x=x, y=y)

  # ---- equations ----

  def embed_equations(self, exprs) -> np.ndarray:
    """Latents of equations -> [B, latent_dim] (or [latent_dim] for a single one).

    Each item is a prefix string in the original's comma-separated form (the `tree` field of
    data.prefix, raw float constants allowed), infix text (the original's or ordinary math),
    a sympy expression, or an `Expression`.
    """
    single = not isinstance(exprs, (list, tuple))
    items = [exprs] if single else list(exprs)
    tokens = [self._equation_tokens(i, item) for i, item in enumerate(items)]
    latents = self._batched(tokens, lambda chunk: collate_equations(chunk, self.env_cfg),
                            ("equations", "equation_lengths"), self._encode_equations)
    return latents[0] if single else latents

  def _equation_tokens(self, index: int, item) -> list[str]:
    try:
      expr = to_expression(item, self.env_cfg.max_int)
      tokens = encode_prefix(expr.prefix_list(), self.env_cfg)
    except ValueError as err:
      raise ValueError(f"equation {index}: {err}") from None
    unknown = [t for t in tokens if t not in build_vocab(self.env_cfg).equation_word2id]
    if unknown:
      raise ValueError(f"equation {index}: token {unknown[0]!r} is not in this model's vocabulary"
                       f" (max_input_dimension={self.env_cfg.max_input_dimension})")
    return tokens

  # ---- shared ----

  def _batched(self, items: list, collate_fn, keys: tuple[str, str], encode) -> np.ndarray:
    """Encode in fixed-size chunks (one compiled shape); the last chunk is padded and trimmed."""
    out = []
    for start in range(0, len(items), self.batch_size):
      chunk = items[start:start + self.batch_size]
      padded = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
      arrays = collate_fn(padded)
      latents = encode(self.params, arrays[keys[0]], arrays[keys[1]])
      out.append(np.asarray(latents[:len(chunk)], dtype=np.float32))
    return np.concatenate(out)

  def similarity(self, z_a: ArrayLike, z_b: ArrayLike, normalize: bool = False) -> np.ndarray:
    """[A, B] scores between latents: the CLIP logits z_a z_b^T / clip_temperature (as trained),
    or cosine similarities with `normalize=True`."""
    a = np.atleast_2d(np.asarray(z_a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(z_b, dtype=np.float32))
    if normalize:
      a = a / np.linalg.norm(a, axis=-1, keepdims=True)
      b = b / np.linalg.norm(b, axis=-1, keepdims=True)
      return a @ b.T
    return a @ b.T / self.model_cfg.clip_temperature


def to_expression(item, max_int: int = 10) -> Expression:
  """An Expression from prefix text, infix text, a sympy expression or an Expression."""
  if isinstance(item, Expression):
    return item
  if isinstance(item, str):
    if "," in item and " " not in item.strip():
      return parse_prefix(item)
    return parse_infix(item, max_int)
  if hasattr(item, "free_symbols"):
    return from_sympy(item, max_int)
  raise TypeError(f"cannot read an equation from {type(item).__name__}; pass prefix or infix text,"
                  " a sympy expression or an Expression")


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, batch_size: int = 64
                    ) -> Pretrained:
  """A released `.pth` (read without torch) or a converted directory, ready to embed."""
  from snip_jax.convert import converter  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if path.is_dir():
    model_cfg, env_cfg, params = converter.load_converted(path)
  elif path.exists():
    model_cfg, env_cfg, params, _ = converter.read_pth(path)
  else:
    raise FileNotFoundError(f"{path} does not exist (expected a .pth file or a converted directory)")
  return Pretrained(model_cfg.replace(dtype=dtype), env_cfg, params, batch_size)
