"""`load_pretrained`: embed datasets and equations with a released (or converted) SNIP model,
and decode equations from data with a symbolic-regression (SR) one.

  model = snip_jax.load_pretrained("snip-10dmax.pth")          # or a converted directory
  z_y = model.embed_points(x, y)                               # one dataset -> [latent_dim]
  z_f = model.embed_equations(["add,0.918,mul,0.403,x_0", "sin(x_0)**2"])
  model.similarity(z_f, z_y[None])                             # the CLIP logits

  sr = snip_jax.load_pretrained("snip-e2e-sr.pth")
  sr.generate(x, y, method="sample", n_samples=10)             # candidates, best first

Every dataset is padded to `max_len` points exactly as the original's training batches were,
so its latent never depends on what else is in the batch (the original's encoder pools over
the batch's longest sample, including padding).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import types
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from snip_jax.data.batching import collate_equations, collate_points, trim_equations
from snip_jax.model import SNIP, SNIPSR, ModelConfig, describe_kind, model_kind
from snip_jax.sr import decoding
from snip_jax.symbolic.config import EnvConfig
from snip_jax.symbolic.datapoints import normalize_outputs
from snip_jax.symbolic.tokenizers import build_vocab, encode_prefix, generated_expression
from snip_jax.symbolic.infix import from_sympy, parse_infix
from snip_jax.symbolic.trees import Expression, parse_prefix

ArrayLike = Union[np.ndarray, Sequence[float]]
DECODING_METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A decoded equation: its tokens (no BOS/<EOS>), score, and Expression (None if invalid).

  score: the sum of the tokens' log-probabilities (<EOS> included) for greedy and sampled
  decodings; the original's beam score (that sum / length**length_penalty) for beam search.
  """

  tokens: list
  score: float
  expression: Optional[Expression]


class Pretrained:
  """A SNIP (or SR) model with its params and environment: batched, jitted embedding calls,
  and `generate` for SR models."""

  def __init__(self, model_cfg: ModelConfig, env_cfg: EnvConfig, params: Any,
               batch_size: int = 64):
    self.model_cfg = model_cfg
    self.env_cfg = env_cfg
    self.params = jax.tree.map(jnp.asarray, params)
    self.batch_size = batch_size
    self.kind = model_kind(params)
    self.model = SNIPSR(model_cfg) if self.kind == "sr" else SNIP(model_cfg)

  @functools.cached_property
  def _encode_points(self):
    return jax.jit(lambda p, points, n: self.model.apply(
        {"params": p}, points, n, method=lambda m, *a: m.encode_points(*a)))

  @functools.cached_property
  def _encode_equations(self):
    return jax.jit(lambda p, eqs, n: self.model.apply({"params": p}, eqs, n,
                                                      method=SNIP.encode_equations))

  # ---- points ----

  def embed_points(self, x, y=None, *, subsample: Optional[np.random.Generator] = None
                   ) -> np.ndarray:
    """Latents of datasets: `embed_points(x, y)` -> [latent_dim]; `embed_points([(x1, y1), ...])`
    -> [B, latent_dim].

    One dataset is x [N, d] or [N] with y [N] or [N, 1], as arrays or nested lists. Datasets
    with more than `max_len` points are refused unless `subsample` (a numpy Generator) is given,
    which draws `max_len` of them without replacement. With a `normalize_y` model
    (SNIP-1d-normalized), y is min-max normalised as in its training data.
    """
    single = y is not None
    pairs = [(x, y)] if single else _dataset_pairs(x)
    indices = [-1] if single else range(len(pairs))  # -1: messages name no dataset number
    datasets = [self._prepare_points(i, xi, yi, subsample) for i, (xi, yi) in zip(indices, pairs)]
    latents = self._batched(datasets, lambda chunk: collate_points(chunk, self.env_cfg),
                            ("points", "n_points"), self._encode_points)
    return latents[0] if single else latents

  def _prepare_points(self, index: int, x, y, subsample) -> types.SimpleNamespace:
    x, y = _dataset_arrays(index, x, y)
    cfg = self.env_cfg
    where = f"dataset {index}: " if index >= 0 else ""
    if x.shape[1] > cfg.max_input_dimension:
      raise ValueError(f"{where}x has {x.shape[1]} input columns; this model takes at most"
                       f" max_input_dimension={cfg.max_input_dimension}")
    if y.shape[1] > cfg.max_output_dimension:
      raise ValueError(f"{where}y has {y.shape[1]} output columns; this model takes at most"
                       f" max_output_dimension={cfg.max_output_dimension}")
    if len(x) > cfg.max_len:
      if subsample is None:
        raise ValueError(f"{where}the dataset has {len(x)} points; the model takes at most"
                         f" max_len={cfg.max_len} (pass subsample=np.random.default_rng(seed) to"
                         " draw that many at random)")
      keep = np.sort(subsample.choice(len(x), cfg.max_len, replace=False))
      x, y = x[keep], y[keep]
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
      raise ValueError(f"{where}the dataset has NaN/inf values")
    if cfg.normalize_y:
      y = normalize_outputs(y)
    return types.SimpleNamespace(x=x, y=y)

  # ---- equations ----

  def embed_equations(self, exprs, *, equation_bucket: int = 0) -> np.ndarray:
    """Latents of equations -> [B, latent_dim] (or [latent_dim] for a single one).

    Each item is a prefix string in the original's comma-separated form (the `tree` field of
    data.prefix, raw float constants allowed), infix text (the original's or ordinary math),
    a sympy expression, or an `Expression`. `equation_bucket` > 0 cuts each batch's padding to
    its longest equation rounded up to that many columns, as training does: the same latents
    (to float rounding) for less compute, one compilation per width.
    """
    self._require("snip", "embed_equations")
    single = not isinstance(exprs, (list, tuple))
    items = [exprs] if single else list(exprs)
    if not items:
      raise ValueError("no equations given: pass a string, a sympy expression, an Expression or"
                       " a non-empty list of them")
    tokens = [self._equation_tokens(i, item) for i, item in enumerate(items)]
    collate = lambda chunk: collate_equations(chunk, self.env_cfg)
    trimmed = lambda chunk: trim_equations(collate(chunk), equation_bucket)
    latents = self._batched(tokens, trimmed if equation_bucket else collate,
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

  # ---- decoding (SR models) ----

  def generate(self, x, y=None, *, method: str = "greedy", beam_size: int = 3,
               n_samples: int = 10, temperature: float = 0.1, seed: int = 0,
               max_len: int = 200, subsample: Optional[np.random.Generator] = None) -> list:
    """Candidate equations for datasets, best first: `generate(x, y)` -> [Candidate, ...];
    `generate([(x1, y1), ...])` -> one such list per dataset.

    method: "greedy" (one candidate), "beam" (the original's beam search: `beam_size`
    hypotheses) or "sample" (`n_samples` per dataset at `temperature`, seeded by `seed`; the
    original's SR decoding, temperature 0.1). Datasets are read as by `embed_points`; every
    dataset and sample is decoded in one batched call.
    """
    self._require("sr", "generate")
    _check_decoding(method, beam_size, n_samples, temperature, max_len)
    latents = self.embed_points(x, y, subsample=subsample)
    single = y is not None
    latents = latents[None] if single else latents
    if method == "beam":
      src = self.model.apply({"params": self.params}, jnp.asarray(latents),
                             method=SNIPSR.map_latent)
      found = decoding.beam_search(self.model, self.params, src, beam_size=beam_size,
                                   max_len=max_len).hypotheses
      rows = [[(ids[1:], score) for score, ids in kept] for kept in found]
    else:
      rows = self._sampled(latents, method, n_samples, temperature, seed, max_len)
    words = build_vocab(self.env_cfg).equation_id2word
    out = [[self._candidate([words[i] for i in ids], score) for ids, score in dataset]
           for dataset in rows]
    return out[0] if single else out

  def decode_latents(self, latents, *, n_samples: int = 2, temperature: float = 0.1,
                     seed: int = 0, max_len: int = 200) -> list:
    """Per latent [B, latent_dim], the Expressions (None if invalid) of `n_samples` sampled
    decodings, in one batched call (latent-space search decodes its population this way)."""
    self._require("sr", "decode_latents")
    rows = self._sampled(np.asarray(latents), "sample", n_samples, temperature, seed, max_len)
    words = build_vocab(self.env_cfg).equation_id2word
    return [[generated_expression([words[i] for i in ids], self.env_cfg) for ids, _ in group]
            for group in rows]

  def _sampled(self, latents, method, n_samples, temperature, seed, max_len) -> list:
    """Per dataset [(ids without BOS/<EOS>, score)] of greedy or sampled rows, best first."""
    per_latent = 1 if method == "greedy" else n_samples
    options = {} if method == "greedy" else {"temperature": temperature,
                                             "rng": jax.random.key(seed)}
    ids, lengths, scores = (np.asarray(a) for a in decoding.generate_from_latent(
        self.model, self.params, latents, samples_per_latent=per_latent, max_len=max_len,
        **options))
    rows = [(ids[r, 1:lengths[r] - 1].tolist(), float(scores[r])) for r in range(len(ids))]
    grouped = [rows[b * per_latent:(b + 1) * per_latent] for b in range(len(latents))]
    return [sorted(group, key=lambda row: -row[1]) for group in grouped]

  def _candidate(self, tokens: list, score: float) -> Candidate:
    """A Candidate with its Expression read as the original reads decoder output."""
    return Candidate(tokens, score, generated_expression(tokens, self.env_cfg))

  def _require(self, kind: str, what: str) -> None:
    """A one-line ValueError when this model is not of `kind`."""
    if self.kind != kind:
      raise ValueError(f"{what} needs a {describe_kind(kind)}; this is a"
                       f" {describe_kind(self.kind)}")

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


_ONE_OR_MANY = ("one dataset is embed_points(x, y) with x [N, d] or [N] and y [N] or [N, 1];"
                " several are embed_points([(x1, y1), (x2, y2), ...])")


def _dataset_pairs(datasets) -> list[tuple]:
  """The (x, y) pairs of `embed_points([(x1, y1), ...])`; anything else is a clear error."""
  if not isinstance(datasets, (list, tuple)):
    raise ValueError(f"y is missing: {_ONE_OR_MANY}")
  if not datasets:
    raise ValueError(f"no datasets given: {_ONE_OR_MANY}")
  for i, pair in enumerate(datasets):
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
      raise ValueError(f"item {i} of the datasets list is not an (x, y) pair (or y is missing):"
                       f" {_ONE_OR_MANY}")
  return list(datasets)


def _dataset_arrays(index: int, x, y) -> tuple[np.ndarray, np.ndarray]:
  """x [N, d] and y [N, k] as float64, with messages that name the array and the shape seen."""
  where = f"dataset {index}: " if index >= 0 else ""
  arrays = []
  for name, value in (("x", x), ("y", y)):
    try:
      array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
      raise ValueError(f"{where}{name} is not a numeric array ({err}); {_ONE_OR_MANY}") from None
    if array.ndim not in (1, 2):
      raise ValueError(f"{where}{name} has shape {array.shape}; {_ONE_OR_MANY}")
    arrays.append(array[:, None] if array.ndim == 1 else array)
  x, y = arrays
  if len(x) != len(y):
    transposed = x.shape[-1] == len(y) or y.shape[-1] == len(x)
    hint = " (transposed? one row per point)" if transposed else ""
    raise ValueError(f"{where}x has {len(x)} rows (shape {x.shape}) but y has {len(y)} (shape"
                     f" {y.shape}){hint}; {_ONE_OR_MANY}")
  if len(x) == 0:
    raise ValueError(f"{where}the dataset is empty (no points)")
  return x, y


def _check_decoding(method: str, beam_size: int, n_samples: int, temperature: float,
                    max_len: int) -> None:
  """One clear ValueError for a decoding option out of range."""
  if method not in DECODING_METHODS:
    raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
  for name, value, low in (("beam_size", beam_size, 1), ("n_samples", n_samples, 1),
                           ("max_len", max_len, 2)):
    if not (isinstance(value, int) and value >= low):
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if not (isinstance(temperature, (int, float)) and temperature > 0):
    raise ValueError(f"temperature must be > 0, got {temperature!r}")


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
  """A released `.pth` (read without torch), a converted directory or a training workdir.

  SNIP pretraining checkpoints embed points and equations; symbolic-regression (SR) ones
  (snip-e2e-sr.pth) embed points and `generate` equations. A training workdir gives its latest
  checkpoint. Damaged input (zip CRC, array checksum or NaN/inf) raises a one-line ValueError
  naming the file or step and the fix.
  """
  from snip_jax.convert import converter  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if path.is_dir():
    model_cfg, env_cfg, params = converter.load_converted(path)
  elif path.exists():
    model_cfg, env_cfg, params, _ = converter.read_pth(path)
  else:
    raise FileNotFoundError(f"{path} does not exist (expected a .pth file or a converted directory)")
  return Pretrained(model_cfg.replace(dtype=dtype), env_cfg, params, batch_size)
