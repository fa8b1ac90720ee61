"""Vocabularies and tokenisers of the symbolic environment, matching the original SNIP.

Floats are written as `sign, mantissa chunks, exponent` (e.g. 0.918 -> `+ N9180 E-4` for
float_precision 3, mantissa_len 1), exactly as Python's correctly rounded `"%.{p}e"`
formatting would give them. Equations are prefix lists of strings whose numeric constants
are expanded into such float tokens (SNIP reference notes, items 1-7).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence, Union

import numpy as np

from snip_jax.symbolic.config import BASE_OPERATORS, MATH_CONSTANTS, EnvConfig
from snip_jax.symbolic.trees import ARITY, Expression, Node, is_leaf_symbol

__all__ = [
    "SPECIAL_WORDS",
    "Vocab",
    "build_vocab",
    "float_token_ids",
    "encode_floats",
    "decode_floats",
    "decode_float_ids",
    "encode_prefix",
    "decode_prefix",
    "equation_ids",
]

SPECIAL_WORDS = (
    "<EOS>", "<X>", "</X>", "<Y>", "</Y>", "</POINTS>", "<INPUT_PAD>", "<OUTPUT_PAD>",
    "<PAD>", "(", ")", "SPECIAL", "OOD_unary_op", "OOD_binary_op", "OOD_constant",
)
# Symbols the original generator appends after operators, constants and variables.
_TRAILING_SYMBOLS = ("|", "INT+", "INT-", "FLOAT+", "FLOAT-", "pow", "0")
# Scaled mantissas closer than this (relative) to a rounding boundary take the exact path.
_BOUNDARY_TOL = 1e-12
# Above this precision the float64 mantissa is not exact enough for the fast path.
_MAX_FAST_PRECISION = 14
# 10.0**e is exact up to this exponent, so mantissa * 10.0**e rounds like Python ints.
_MAX_EXACT_POW10 = 22
# Powers of ten are tabulated for exponents -_POW10_OFFSET.._POW10_OFFSET.
_POW10_OFFSET = 400


@dataclasses.dataclass(frozen=True, eq=False)
class Vocab:
  """Float (embedder) and equation (encoder_f / decoder) vocabularies of one config.

  Instances are cached and shared by build_vocab: treat the lists and dicts as read-only.
  `symbols` is the original generator's symbol list, in its order.
  """

  float_words: list
  equation_words: list
  float_word2id: dict
  equation_word2id: dict
  equation_id2word: list
  symbols: list
  float_pad_id: int
  float_input_pad_id: int
  float_output_pad_id: int
  eos_id: int
  pad_id: int
  n_float_words: int
  n_words: int


@dataclasses.dataclass(frozen=True, eq=False)
class _FloatFormat:
  """Precomputed float-token tables shared by the vectorised encoder and decoder."""

  precision: int
  mantissa_len: int
  max_exponent: int
  base: int
  sign_ids: np.ndarray      # [id of '+', id of '-']
  mantissa_ids: np.ndarray  # chunk value -> id of 'N<chunk>'
  exponent_ids: np.ndarray  # exponent + max_exponent -> id of 'E<exponent>'
  kind: np.ndarray          # id -> 0 '+', 1 '-', 2 mantissa, 3 exponent, -1 other
  value: np.ndarray         # id -> chunk value or exponent (0 elsewhere)
  words: tuple
  mantissa_words: tuple     # chunk value -> 'N<chunk>'


def build_vocab(env_cfg: EnvConfig) -> Vocab:
  """The vocabularies of `env_cfg`; cached, since building ~10k words is not free."""
  return _build_vocab(
      env_cfg.float_precision, env_cfg.mantissa_len, env_cfg.max_exponent,
      env_cfg.max_input_dimension, env_cfg.max_int, env_cfg.extra_unaries,
      env_cfg.extra_binaries, env_cfg.extra_constant_list)


def _float_symbols(precision: int, mantissa_len: int, max_exponent: int) -> list:
  """Sign, mantissa-chunk and exponent words of the float tokeniser, unsorted."""
  base = (precision + 1) // mantissa_len
  mantissas = [f"N{i:0{base}d}" for i in range(10**base)]
  exponents = [f"E{i}" for i in range(-max_exponent, max_exponent + 1)]
  return ["+", "-"] + mantissas + exponents


def _float_words(precision: int, mantissa_len: int, max_exponent: int) -> list:
  """Float vocabulary: special words, then the float symbols in Python string order."""
  return list(SPECIAL_WORDS) + sorted(set(_float_symbols(precision, mantissa_len, max_exponent)))


def _generator_symbols(max_int: int, max_input_dimension: int) -> list:
  """Equation symbols of the original generator, in its order."""
  ints = [str(i) for i in range(-max_int, max_int + 1) if i != 0]
  variables = ["rand"] + [f"x_{i}" for i in range(max_input_dimension)]
  return (list(BASE_OPERATORS) + ints + list(MATH_CONSTANTS) + ["CONSTANT"] + variables
          + list(_TRAILING_SYMBOLS))


@functools.lru_cache(maxsize=32)
def _build_vocab(precision, mantissa_len, max_exponent, max_input_dimension, max_int,
                 extra_unaries, extra_binaries, extra_constants) -> Vocab:
  """Vocab for the config fields it depends on (hashable arguments for the cache)."""
  float_words = _float_words(precision, mantissa_len, max_exponent)
  symbols = _generator_symbols(max_int, max_input_dimension)
  equation_words = list(SPECIAL_WORDS) + sorted(set(symbols)) + float_words
  float_word2id = {w: i for i, w in enumerate(float_words)}
  equation_word2id = {w: i for i, w in enumerate(equation_words)}
  ood = [("OOD_unary_op", extra_unaries), ("OOD_binary_op", extra_binaries),
         ("OOD_constant", extra_constants)]
  for target, names in ood:
    for name in names:
      equation_word2id[name] = equation_word2id[target]
  return Vocab(
      float_words=float_words,
      equation_words=equation_words,
      float_word2id=float_word2id,
      equation_word2id=equation_word2id,
      equation_id2word=list(equation_words),
      symbols=symbols,
      float_pad_id=float_word2id["<PAD>"],
      float_input_pad_id=float_word2id["<INPUT_PAD>"],
      float_output_pad_id=float_word2id["<OUTPUT_PAD>"],
      eos_id=equation_word2id["<EOS>"],
      pad_id=equation_word2id["<PAD>"],
      n_float_words=len(float_words),
      n_words=len(equation_words),
  )


def _float_format(env_cfg: EnvConfig) -> _FloatFormat:
  """Float-token tables of `env_cfg` (cached per precision settings)."""
  return _build_float_format(env_cfg.float_precision, env_cfg.mantissa_len,
                             env_cfg.max_exponent)


@functools.lru_cache(maxsize=16)
def _build_float_format(precision: int, mantissa_len: int, max_exponent: int) -> _FloatFormat:
  """Id lookup tables for float tokens; exponent words are string-sorted, hence tables."""
  words = _float_words(precision, mantissa_len, max_exponent)
  word2id = {w: i for i, w in enumerate(words)}
  base = (precision + 1) // mantissa_len
  mantissa_words = tuple(f"N{i:0{base}d}" for i in range(10**base))
  kind = np.full(len(words), -1, np.int64)
  value = np.zeros(len(words), np.int64)
  for i, w in enumerate(words[len(SPECIAL_WORDS):], start=len(SPECIAL_WORDS)):
    if w in ("+", "-"):
      kind[i] = 0 if w == "+" else 1
    else:
      kind[i] = 2 if w[0] == "N" else 3
      value[i] = int(w[1:])
  return _FloatFormat(
      precision=precision, mantissa_len=mantissa_len, max_exponent=max_exponent, base=base,
      sign_ids=np.array([word2id["+"], word2id["-"]], np.int32),
      mantissa_ids=np.array([word2id[w] for w in mantissa_words], np.int32),
      exponent_ids=np.array(
          [word2id[f"E{i}"] for i in range(-max_exponent, max_exponent + 1)], np.int32),
      kind=kind, value=value, words=tuple(words), mantissa_words=mantissa_words)


# ---------------------------------------------------------------------------------------
# float encoding


def _python_pow10(k: int) -> float:
  """10**k as Python evaluates it: C pow for k < 0, the correctly rounded int otherwise."""
  if k < 0:
    return 10**k
  return float(10**k) if k <= 308 else math.inf


@functools.lru_cache(maxsize=1)
def _pow10_table() -> np.ndarray:
  """_python_pow10(k) for k in -_POW10_OFFSET.._POW10_OFFSET, indexed by k + _POW10_OFFSET."""
  return np.array([_python_pow10(k) for k in range(-_POW10_OFFSET, _POW10_OFFSET + 1)])


def _check_finite(values: np.ndarray) -> None:
  """Raise a ValueError naming the first NaN or infinity and where it is."""
  bad = ~np.isfinite(values)
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"cannot tokenise {float(values[index])!r} at index {index}: the float tokeniser only "
        "accepts finite values (filter NaN/inf before tokenising)")


# Below this many values (e.g. an equation's constants) exact per-value formatting is faster
# than the vectorised path's fixed numpy overhead; both give identical results.
_SMALL_INPUT = 32


def _exact_decomposition(value: float, precision: int) -> tuple[int, int]:
  """(digits, decimal exponent) of `value` from Python's correctly rounded formatting."""
  mantissa, exponent = (f"%.{precision}e" % value).split("e")
  return int(mantissa.lstrip("-").replace(".", "")), int(exponent)


def _fast_decomposition(flat: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
  """(digits, decimal exponent) in float64, with Python's formatting near rounding boundaries."""
  a = np.abs(flat)
  nonzero = a > 0
  lo, hi = 10.0**precision, 10.0**(precision + 1)
  table = _pow10_table()
  with np.errstate(all="ignore"):
    guess = np.floor(np.log10(np.where(nonzero, a, 1.0))).astype(np.int64)
    scaled = a * table[_POW10_OFFSET + precision - guess]
    low, high = scaled < lo, scaled >= hi
    off = (low | high) & nonzero
    if off.any():
      guess = np.where(off, guess + high - low, guess)
      scaled = a * table[_POW10_OFFSET + precision - guess]
    floor = np.floor(scaled)
    frac = scaled - floor
    near_tie = np.abs(frac - 0.5) <= _BOUNDARY_TOL * scaled
    unsure = nonzero & (near_tie | ~((scaled >= lo) & (scaled < hi)))
    digits = (floor + (frac >= 0.5)).astype(np.int64)
  carry = digits == 10**(precision + 1)
  digits[carry] = 10**precision
  exponent = guess + carry
  for i in np.flatnonzero(unsure):
    digits[i], exponent[i] = _exact_decomposition(float(flat[i]), precision)
  return digits, exponent


def _decompose(values: np.ndarray, precision: int,
               max_exponent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flat (negative, mantissa digits, exponent token value) of finite float64 values."""
  flat = values.ravel()
  if precision <= _MAX_FAST_PRECISION and flat.size > _SMALL_INPUT:
    digits, exponent = _fast_decomposition(flat, precision)
  else:
    pairs = [_exact_decomposition(v, precision) for v in flat.tolist()]
    digits = np.array([d for d, _ in pairs], np.int64).reshape(flat.shape)
    exponent = np.array([e for _, e in pairs], np.int64).reshape(flat.shape)
  exponent = exponent - precision
  underflow = exponent < -max_exponent
  digits[underflow] = 0
  exponent[underflow] = 0
  return flat < 0, digits, exponent


def _mantissa_chunks(digits: np.ndarray, mantissa_len: int, base: int) -> np.ndarray:
  """Split (p+1)-digit mantissas into `mantissa_len` chunks of `base` digits, [n, ml]."""
  shifts = 10 ** (base * np.arange(mantissa_len - 1, -1, -1, dtype=np.int64))
  return (digits[:, None] // shifts) % 10**base


def _as_float64(values) -> np.ndarray:
  """Values as a float64 array, checked finite."""
  array = np.asarray(values, dtype=np.float64)
  _check_finite(array)
  return array


def float_token_ids(values, env_cfg: EnvConfig) -> np.ndarray:
  """Float-vocabulary ids, shape values.shape + (2 + mantissa_len,), int32 (batching hot path)."""
  array = _as_float64(values)
  fmt = _float_format(env_cfg)
  negative, digits, exponent = _decompose(array, fmt.precision, fmt.max_exponent)
  too_big = exponent > fmt.max_exponent
  if too_big.any():
    first = int(np.flatnonzero(too_big)[0])
    index = tuple(int(i) for i in np.unravel_index(first, array.shape))
    raise ValueError(
        f"cannot tokenise {float(array.ravel()[first])!r} at index {index}: its exponent token "
        f"E{exponent[first]} is outside the vocabulary (max_exponent={fmt.max_exponent}, "
        f"|value| must stay below ~1e{fmt.max_exponent + fmt.precision + 1})")
  out = np.empty((digits.size, 2 + fmt.mantissa_len), np.int32)
  out[:, 0] = fmt.sign_ids[negative.astype(np.int64)]
  out[:, 1:-1] = fmt.mantissa_ids[_mantissa_chunks(digits, fmt.mantissa_len, fmt.base)]
  out[:, -1] = fmt.exponent_ids[exponent + fmt.max_exponent]
  return out.reshape(array.shape + (2 + fmt.mantissa_len,))


def encode_floats(values, env_cfg: EnvConfig) -> list:
  """Token strings per value (flattened), exponents outside the vocabulary included."""
  array = _as_float64(values)
  fmt = _float_format(env_cfg)
  negative, digits, exponent = _decompose(array, fmt.precision, fmt.max_exponent)
  chunks = _mantissa_chunks(digits, fmt.mantissa_len, fmt.base).tolist()
  mantissa_words = fmt.mantissa_words
  return [
      ["-" if neg else "+"] + [mantissa_words[c] for c in row] + [f"E{e}"]
      for neg, row, e in zip(negative.tolist(), chunks, exponent.tolist())
  ]


# ---------------------------------------------------------------------------------------
# float decoding


def _decode_one(chunk: Sequence[str]) -> float:
  """One float from its tokens with the original's Python arithmetic; NaN if malformed."""
  try:
    sign = 1 if chunk[0] == "+" else -1
    mantissa = int("".join(token[1:] for token in chunk[1:-1]))
    exponent = int(chunk[-1][1:])
    return float(sign * mantissa * (10**exponent))
  except (ValueError, TypeError, IndexError, OverflowError):
    return math.nan


def _is_float_token(token: str) -> bool:
  """Whether a token starts like a float token (+, -, E..., N...)."""
  return isinstance(token, str) and token[:1] in ("+", "-", "E", "N")


def decode_floats(tokens: Sequence[str], env_cfg: EnvConfig) -> Union[list, float, None]:
  """Values of consecutive float token groups; bare NaN if any token is not a float token."""
  if len(tokens) == 0:
    return None
  width = env_cfg.tokens_per_float
  chunks = [list(tokens[i:i + width]) for i in range(0, len(tokens), width)]
  values = []
  for chunk in chunks:
    if not all(_is_float_token(t) for t in chunk):
      return math.nan
    values.append(_decode_one(chunk))
  return values


def decode_float_ids(ids, env_cfg: EnvConfig) -> np.ndarray:
  """Float64 values of id groups [..., 2 + mantissa_len]; same arithmetic as decode_floats."""
  fmt = _float_format(env_cfg)
  array = np.asarray(ids)
  width = 2 + fmt.mantissa_len
  if array.ndim == 0 or array.shape[-1] != width:
    raise ValueError(f"expected ids of shape [..., {width}], got {array.shape}")
  flat = array.reshape(-1, width).astype(np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= len(fmt.words)):
    raise ValueError(
        f"float token ids must be in [0, {len(fmt.words)}), got values in "
        f"[{flat.min()}, {flat.max()}]")
  kind, val = fmt.kind[flat], fmt.value[flat]
  well_formed = (kind[:, 0] >= 0) & (kind[:, 0] <= 1) & (kind[:, 1:-1] == 2).all(1) & (
      kind[:, -1] == 3)
  shifts = 10 ** (fmt.base * np.arange(fmt.mantissa_len - 1, -1, -1, dtype=np.int64))
  signed = np.where(kind[:, 0] == 1, -1, 1) * (val[:, 1:-1] * shifts).sum(1)
  exponent = val[:, -1]
  inexact = (exponent >= 0) & ((exponent > _MAX_EXACT_POW10) | (np.abs(signed) > 2**53))
  slow = ~well_formed | inexact | (exponent < -_POW10_OFFSET)
  power = _pow10_table()[np.where(slow, 0, exponent) + _POW10_OFFSET]
  out = signed.astype(np.float64) * power
  for i in np.flatnonzero(slow):
    decoded = decode_floats([fmt.words[j] for j in flat[i]], env_cfg)
    out[i] = decoded[0] if isinstance(decoded, list) else math.nan
  return out.reshape(array.shape[:-1])


# ---------------------------------------------------------------------------------------
# equations (prefix lists of strings)


def _is_int_literal(text: str) -> bool:
  """Whether a prefix element is written as an integer (the original's test)."""
  return text.lstrip("-").isdigit()


def _parse_float(text: str) -> Optional[float]:
  """float(text), or None if the element is not numeric."""
  try:
    return float(text)
  except ValueError:
    return None


def encode_prefix(prefix: Sequence[str], env_cfg: EnvConfig) -> list:
  """Equation tokens of a prefix list: ints kept, other numbers as float tokens."""
  floats, where = [], []
  for position, elem in enumerate(prefix):
    value = _parse_float(elem)
    if value is not None and not _is_int_literal(elem):
      if not math.isfinite(value):
        raise ValueError(
            f"cannot tokenise constant {elem!r} at position {position} of the prefix: "
            "only finite constants have float tokens")
      floats.append(value)
      where.append(position)
  encoded = dict(zip(where, encode_floats(floats, env_cfg))) if floats else {}
  tokens = []
  for position, elem in enumerate(prefix):
    if position in encoded:
      tokens.extend(encoded[position])
    elif _parse_float(elem) is not None:
      tokens.append(str(int(elem)))
    else:
      tokens.append(elem)
  return tokens


def _parse_int_tokens(tokens: Sequence[str], start: int, base: int) -> tuple[int, int]:
  """Value of 'INT+'/'INT-' followed by base-`base` digit tokens, and the tokens used."""
  value, used = 0, 1
  for token in tokens[start + 1:]:
    if not token.rstrip("-").isdigit():
      break
    value = value * base + int(token)
    used += 1
  return (-value if tokens[start] == "INT-" else value), used


def decode_prefix(tokens: Sequence[str], env_cfg: EnvConfig) -> list:
  """Prefix list of equation tokens: float token groups become repr(float) constants."""
  width = env_cfg.tokens_per_float
  prefix, i = [], 0
  while i < len(tokens):
    token = tokens[i]
    if token in ("+", "-"):
      chunk = list(tokens[i:i + width])
      if len(chunk) < width:
        raise ValueError(
            f"truncated float at position {i}: expected {width} tokens, got {chunk}")
      decoded = decode_floats(chunk, env_cfg)
      if not isinstance(decoded, list) or math.isnan(decoded[0]):
        raise ValueError(f"malformed float tokens {chunk} at position {i}")
      prefix.append(repr(decoded[0]))
      i += width
    elif token in ("INT+", "INT-"):
      value, used = _parse_int_tokens(tokens, i, env_cfg.max_int)
      prefix.append(str(value))
      i += used
    else:
      prefix.append(token)
      i += 1
  return prefix


def equation_ids(tokens: Sequence[str], vocab: Vocab) -> list:
  """Equation-vocabulary ids of tokens (duplicated words map to their last id)."""
  word2id = vocab.equation_word2id
  try:
    return [word2id[t] for t in tokens]
  except KeyError:
    position = next(i for i, t in enumerate(tokens) if t not in word2id)
    raise ValueError(
        f"token {tokens[position]!r} at position {position} is not in the equation "
        f"vocabulary ({vocab.n_words} words); check max_input_dimension, max_int and "
        "max_exponent of the environment config") from None


# ---------------------------------------------------------------------------------------
# decoded sequences -> expressions


def generated_expression(tokens: Sequence[str], env_cfg: EnvConfig):
  """The Expression a decoder's output tokens spell, or None, read as the original does.

  `|` separates output dimensions; each part is read as one prefix tree from its start and
  whatever follows the tree (`<EOS>`, `<PAD>`, extra tokens) is ignored. A `+`/`-` token starts
  a float of exactly `tokens_per_float` tokens (sign from its first token, mantissa and exponent
  from the other tokens' text after their first character). Incomplete trees, malformed
  floats, special words and `OOD_*` tokens give None.
  """
  tokens = list(tokens)
  if any(t.startswith("OOD") for t in tokens):
    return None
  parts, start = [], 0
  for i, token in enumerate(tokens + ["|"]):
    if token == "|":
      parts.append(tokens[start:i])
      start = i + 1
  nodes = [_read_tree(part, env_cfg.tokens_per_float) for part in parts]
  return None if any(node is None for node in nodes) else Expression(nodes)


def _read_tree(tokens: Sequence[str], float_width: int):
  """One prefix tree from the start of `tokens` (floats consume float_width tokens), or None."""
  root, stack, pos = None, [], 0
  while root is None or stack:
    if pos >= len(tokens):
      return None
    token = tokens[pos]
    if token in ("+", "-"):
      value = _decode_one(tokens[pos:pos + float_width])
      if len(tokens) - pos < float_width or math.isnan(value):
        return None
      node, pos = Node(repr(value)), pos + float_width
    elif token in ARITY or is_leaf_symbol(token):
      node, pos = Node(token), pos + 1
    else:
      return None
    if stack:
      stack[-1][0].children.append(node)
      stack[-1][1] -= 1
    else:
      root = node
    if ARITY.get(node.value, 0):
      stack.append([node, ARITY[node.value]])
    while stack and stack[-1][1] == 0:
      stack.pop()
  return root
