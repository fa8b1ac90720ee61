"""Samples -> fixed-shape numpy batches, ready for `jax.jit` (no retracing across batches).

Layouts follow the original's `embedder.batch` and `env.batch_equations`, batch-major:
- `points` [B, max_len, (max_in + max_out) * (2 + mantissa_len)]: per point the x tokens,
  `<INPUT_PAD>` up to max_input_dimension, the y tokens, `<OUTPUT_PAD>` up to
  max_output_dimension; rows past a sample's points are float `<PAD>` (8).
- `equations` [B, 200]: `<EOS>`, the equation ids, `<EOS>`, then float `<PAD>` (id 8, not the
  equation `<PAD>`), exactly as the original pads; `equation_lengths` = tokens + 2.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from snip_jax.symbolic.config import MAX_EQUATION_LEN, EnvConfig
from snip_jax.symbolic.tokenizers import build_vocab, float_token_ids


def collate(samples: Sequence, env_cfg: EnvConfig, *, use_skeleton: bool = False,
            max_equation_len: int = MAX_EQUATION_LEN) -> dict[str, np.ndarray]:
  """Stack generated (or reloaded) samples into the arrays the model consumes.

  Each sample needs `x` [n, d_in], `y` [n, d_out], `tree_encoded` / `skeleton_tree_encoded`
  token lists and optionally `target_property`. Returns points, n_points, equations,
  equation_lengths, x_values, y_values, point_mask, d_in, d_out (+ target_property).
  """
  if not samples:
    raise ValueError("cannot collate an empty list of samples")
  batch = collate_points(samples, env_cfg)
  tokens = [s.skeleton_tree_encoded if use_skeleton else s.tree_encoded for s in samples]
  batch.update(collate_equations(tokens, env_cfg, max_equation_len))
  targets = [getattr(s, "target_property", None) for s in samples]
  if all(t is not None for t in targets):
    batch["target_property"] = np.asarray(targets, dtype=np.float32)
  return batch


def collate_points(samples, cfg: EnvConfig) -> dict[str, np.ndarray]:
  """The point arrays of `collate` for samples with `x` [n, d_in] and `y` [n, d_out]."""
  vocab = build_vocab(cfg)
  t = cfg.tokens_per_float
  max_in, max_out, max_len = cfg.max_input_dimension, cfg.max_output_dimension, cfg.max_len
  b = len(samples)
  xs = [np.asarray(s.x, dtype=np.float64) for s in samples]
  ys = [np.asarray(s.y, dtype=np.float64).reshape(len(s.y), -1) for s in samples]
  _check_shapes(xs, ys, cfg)
  n_points = np.array([len(x) for x in xs], dtype=np.int32)
  d_in = np.array([x.shape[1] for x in xs], dtype=np.int32)
  d_out = np.array([y.shape[1] for y in ys], dtype=np.int32)

  points = np.full((b, max_len, (max_in + max_out) * t), vocab.float_pad_id, dtype=np.int32)
  # float64: outputs reach 1e103, far past float32's range; cast on device as needed.
  x_values = np.zeros((b, max_len, max_in), dtype=np.float64)
  y_values = np.zeros((b, max_len, max_out), dtype=np.float64)
  flat_ids = float_token_ids(np.concatenate([np.concatenate([x.ravel(), y.ravel()])
                                             for x, y in zip(xs, ys)]), cfg)
  offset = 0
  for i, (x, y) in enumerate(zip(xs, ys)):
    n, di, do = len(x), x.shape[1], y.shape[1]
    x_ids = flat_ids[offset:offset + n * di].reshape(n, di * t)
    offset += n * di
    y_ids = flat_ids[offset:offset + n * do].reshape(n, do * t)
    offset += n * do
    row = points[i, :n]
    row[:, :di * t] = x_ids
    row[:, di * t:max_in * t] = vocab.float_input_pad_id
    row[:, max_in * t:(max_in + do) * t] = y_ids
    row[:, (max_in + do) * t:] = vocab.float_output_pad_id
    x_values[i, :n, :di] = x
    y_values[i, :n, :do] = y
  point_mask = np.arange(max_len)[None, :] < n_points[:, None]
  return {"points": points, "n_points": n_points, "x_values": x_values, "y_values": y_values,
          "point_mask": point_mask, "d_in": d_in, "d_out": d_out}


def _check_shapes(xs, ys, cfg: EnvConfig) -> None:
  for i, (x, y) in enumerate(zip(xs, ys)):
    problem = _shape_problem(x, y, cfg)
    if problem:
      raise ValueError(f"sample {i} {problem}")


def _shape_problem(x: np.ndarray, y: np.ndarray, cfg: EnvConfig) -> str:
  """Why `collate` cannot take points x [n, d_in], y [n, d_out] ("" when it can)."""
  if x.ndim != 2 or len(x) != len(y):
    return (f"has x of shape {x.shape} and y of shape {y.shape}; x must be [n, d] and y"
            " [n, d_out] with the same n")
  if len(x) > cfg.max_len:
    return f"has {len(x)} points; max_len is {cfg.max_len}"
  if x.shape[1] > cfg.max_input_dimension or y.shape[1] > cfg.max_output_dimension:
    return (f"has {x.shape[1]} input / {y.shape[1]} output columns; the config allows"
            f" {cfg.max_input_dimension} / {cfg.max_output_dimension}")
  return ""


def check_sample(sample, cfg: EnvConfig, points: bool = True) -> None:
  """Raise ValueError saying why `collate` would refuse `sample` (tokens; x/y with `points`)."""
  if points:
    x = np.asarray(sample.x, dtype=np.float64)
    y = np.asarray(sample.y, dtype=np.float64).reshape(len(sample.y), -1)
    problem = _shape_problem(x, y, cfg)
    if problem:
      raise ValueError(f"the sample {problem}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
      raise ValueError("x_to_fit or y_to_fit holds NaN or inf; only finite values can be"
                       " tokenised")
  _equation_ids(sample.tree_encoded, build_vocab(cfg).equation_word2id, MAX_EQUATION_LEN)


def collate_equations(token_lists: Sequence[Sequence[str]], cfg: EnvConfig,
                      max_equation_len: int = MAX_EQUATION_LEN) -> dict[str, np.ndarray]:
  """The equation arrays of `collate` for lists of equation tokens."""
  vocab = build_vocab(cfg)
  word2id = vocab.equation_word2id
  b = len(token_lists)
  equations = np.full((b, max_equation_len), vocab.float_pad_id, dtype=np.int32)
  lengths = np.zeros(b, dtype=np.int32)
  equations[:, 0] = vocab.eos_id
  for i, tokens in enumerate(token_lists):
    try:
      ids = _equation_ids(tokens, word2id, max_equation_len)
    except ValueError as err:
      raise ValueError(f"sample {i}: {err}") from None
    equations[i, 1:len(ids) + 1] = ids
    equations[i, len(ids) + 1] = vocab.eos_id
    lengths[i] = len(ids) + 2
  return {"equations": equations, "equation_lengths": lengths}


def _equation_ids(tokens: Sequence[str], word2id: dict, max_equation_len: int) -> list[int]:
  """The vocabulary ids of an equation's tokens; ValueError if one is unknown or too many."""
  if len(tokens) + 2 > max_equation_len:
    raise ValueError(f"equation has {len(tokens)} tokens; at most {max_equation_len - 2} fit"
                     " between the two <EOS>")
  try:
    return [word2id[w] for w in tokens]
  except KeyError as err:
    raise ValueError(f"equation token {err.args[0]!r} is not in the vocabulary (a variable"
                     " beyond env.max_input_dimension, or an operator this env lacks?)") from None


def trim_equations(batch: dict, multiple: int) -> dict:
  """`batch` with `equations` cut to its longest equation rounded up to `multiple` columns.

  The columns cut are padding only; SNIP.encode_equations pools as if they were there, so the
  latents are unchanged and encoder_f does less work (typical equations use 20-80 of the
  200 columns). Each distinct width is one more compilation of a jitted step: `multiple`
  bounds them to ceil(200 / multiple).
  """
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  equations = batch["equations"]
  longest = int(np.max(batch["equation_lengths"]))
  width = min(equations.shape[1], -(-longest // multiple) * multiple)
  return {**batch, "equations": equations[:, :width]}
