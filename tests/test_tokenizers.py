"""Tokenisers against the original SNIP's golden data (tests/fixtures/snip_original)."""

import dataclasses
import functools
import gzip
import json
import math
import pathlib
import re

import numpy as np
import pytest

from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.symbolic.tokenizers import (
    SPECIAL_WORDS, build_vocab, decode_float_ids, decode_floats, decode_prefix,
    encode_floats, encode_prefix, equation_ids, float_token_ids)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"


@functools.lru_cache(maxsize=None)
def _json(name: str):
  """A JSON fixture, loaded once."""
  return json.loads((FIXTURES / name).read_text())


@functools.lru_cache(maxsize=1)
def _samples() -> tuple:
  """The generator samples fixture (prefixes and their encodings only)."""
  keys = ("set", "prefix", "skeleton_prefix", "tree_encoded", "skeleton_tree_encoded")
  with gzip.open(FIXTURES / "generator_samples.jsonl.gz", "rt") as f:
    return tuple({k: d[k] for k in keys} for d in map(json.loads, f))


def _config_from_cli(args: list) -> EnvConfig:
  """EnvConfig from the original's '--name value' overrides, cast to our field types."""
  defaults = {f.name: f.default for f in dataclasses.fields(EnvConfig)}
  overrides = {}
  for name, text in zip(args[::2], args[1::2]):
    name = name.lstrip("-")
    overrides[name] = int(text) if isinstance(defaults[name], int) else text
  return default_env_config(**overrides)


def _float_config(entry: dict) -> EnvConfig:
  """EnvConfig of one float_tokens.json config entry."""
  return default_env_config(float_precision=entry["float_precision"],
                            mantissa_len=entry["mantissa_len"],
                            max_exponent=entry["max_exponent"])


def _same_float(a: float, b: float) -> bool:
  """Equal reprs (so -0.0 != 0.0), with NaN equal to NaN."""
  return repr(float(a)) == repr(float(b))


# ---------------------------------------------------------------------------------------
# vocabularies


@pytest.mark.parametrize("key", ["d1", "d2", "d10", "d1_extra_ood"])
def test_vocab_matches_original(key):
  expected = _json("vocab.json")[key]
  vocab = build_vocab(_config_from_cli(expected["cli_overrides"]))
  assert vocab.float_words == expected["float_words"]
  assert vocab.equation_words == expected["equation_words"]
  assert vocab.equation_id2word == expected["equation_words"]
  assert vocab.equation_word2id == expected["equation_word2id"]
  assert vocab.symbols == expected["generator_symbols"]
  for word, extra_id in expected["equation_word2id_extra_ood"].items():
    assert vocab.equation_word2id[word] == extra_id
  for word, ids in expected["equation_word2id_duplicates"].items():
    assert vocab.equation_words.index(word) == ids[0]
    assert vocab.equation_word2id[word] == ids[-1]
  assert vocab.float_pad_id == expected["float_word2id_PAD"] == 8
  assert (vocab.float_input_pad_id, vocab.float_output_pad_id) == (6, 7)
  assert vocab.pad_id == expected["equation_word2id_PAD"]
  assert vocab.eos_id == expected["equation_word2id_EOS"]
  assert vocab.n_words == expected["n_equation_words"] == expected["params_n_words"]
  assert vocab.n_float_words == expected["n_float_words"]
  assert vocab.float_word2id == {w: i for i, w in enumerate(expected["float_words"])}


def test_special_words_and_vocab_cache():
  assert len(SPECIAL_WORDS) == 15 and SPECIAL_WORDS[8] == "<PAD>"
  assert build_vocab(default_env_config()) is build_vocab(default_env_config(max_len=100))
  assert build_vocab(default_env_config()) is not build_vocab(
      default_env_config(max_input_dimension=2))


# ---------------------------------------------------------------------------------------
# floats against the fixture


@pytest.mark.parametrize("index", [0, 1])
def test_float_tokens_match_original(index):
  entry = _json("float_tokens.json")["configs"][index]
  cfg = _float_config(entry)
  vocab = build_vocab(cfg)
  assert cfg.tokens_per_float == entry["tokens_per_float"]
  assert vocab.n_float_words == entry["n_float_words"]
  items = entry["items"]
  values = np.array([it["value"] for it in items])
  assert encode_floats(values, cfg) == [it["tokens"] for it in items]
  in_vocab = np.array([it["in_vocab"] for it in items])
  expected_ids = [[vocab.float_word2id[t] for t in it["tokens"]] for it in items if it["in_vocab"]]
  ids = float_token_ids(values[in_vocab], cfg)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, expected_ids)
  for value in values[~in_vocab]:
    with pytest.raises(ValueError, match="outside the vocabulary"):
      float_token_ids(value, cfg)
  for it in items:
    decoded = decode_floats(it["tokens"], cfg)
    assert len(decoded) == 1 and _same_float(decoded[0], it["decoded"]), it
    assert repr(decoded[0]) == it["decoded_repr"]
  decoded_ids = decode_float_ids(ids, cfg)
  expected = [it["decoded"] for it in items if it["in_vocab"]]
  assert [repr(v) for v in decoded_ids.tolist()] == [repr(v) for v in expected]


@pytest.mark.parametrize("index", [0, 1])
def test_float_examples(index):
  entry = _json("float_tokens.json")["configs"][index]
  cfg = _float_config(entry)
  example = entry["example_vector"]
  flat = [t for tokens in encode_floats(example["value"], cfg) for t in tokens]
  assert flat == example["tokens"]
  assert decode_floats(example["tokens"], cfg) == example["value"]
  assert math.isnan(entry["example_decode_nonfloat_token"])
  bad = example["tokens"][:-1] + ["x_0"]
  assert isinstance(decode_floats(bad, cfg), float) and math.isnan(decode_floats(bad, cfg))


def test_float_shapes_and_input_kinds():
  cfg = default_env_config()
  values = np.random.default_rng(0).normal(size=(4, 3))
  ids = float_token_ids(values, cfg)
  assert ids.shape == (4, 3, 3)
  np.testing.assert_array_equal(ids[2, 1], float_token_ids(values[2, 1], cfg))
  assert float_token_ids(1.5, cfg).shape == (3,)
  assert float_token_ids(np.float32(0.1), cfg).tolist() == float_token_ids(
      float(np.float32(0.1)), cfg).tolist()
  assert encode_floats(1.5, cfg) == encode_floats([1.5], cfg) == [["+", "N1500", "E-3"]]
  assert encode_floats(values, cfg) == encode_floats(values.ravel().tolist(), cfg)
  assert float_token_ids(np.zeros((0, 2)), cfg).shape == (0, 2, 3)
  np.testing.assert_array_equal(decode_float_ids(ids, cfg), [
      [decode_floats(t, cfg)[0] for t in encode_floats(row, cfg)] for row in values])


def test_decode_floats_python_arithmetic():
  cfg = default_env_config()
  assert decode_floats(["+", "N3333", "E-4"], cfg) == [0.33330000000000004]
  assert decode_floats(["-", "N0000", "E0"], cfg) == [0.0]
  assert repr(decode_floats(["-", "N0000", "E-3"], cfg)[0]) == "0.0"
  assert decode_floats(["+", "N1234", "E22", "-", "N1234", "E40"], cfg) == [
      float(1234 * 10**22), -float(1234 * 10**40)]
  assert math.isnan(decode_floats(["+", "N9999", "E400"], cfg)[0])
  assert math.isnan(decode_floats(["+", "N12a4", "E0"], cfg)[0])
  assert decode_floats([], cfg) is None
  short = decode_floats(["+", "N1000", "E0", "+"], cfg)
  assert short[0] == 1000.0 and math.isnan(short[1])
  assert math.isnan(decode_floats(["+", "N1000", "<PAD>"], cfg))


def test_decode_float_ids_odd_rows_match_decode_floats():
  cfg = default_env_config(mantissa_len=2)
  vocab = build_vocab(cfg)
  rows = [["+", "N12", "N34", "E50"], ["N12", "N34", "N56", "E-2"], ["+", "-", "N12", "E0"],
          ["+", "N12", "E3", "E-2"], ["<PAD>", "N12", "N34", "E0"], ["-", "N00", "N00", "E-5"]]
  ids = np.array([[vocab.float_word2id[t] for t in row] for row in rows])
  expected = [decode_floats(row, cfg) for row in rows]
  expected = [e[0] if isinstance(e, list) else e for e in expected]
  assert [repr(v) for v in decode_float_ids(ids, cfg).tolist()] == [repr(v) for v in expected]
  with pytest.raises(ValueError, match="shape"):
    decode_float_ids(ids[:, :3], cfg)
  with pytest.raises(ValueError, match="ids must be in"):
    decode_float_ids(np.full((1, 4), vocab.n_float_words), cfg)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_raise(bad):
  cfg = default_env_config()
  values = np.ones((5, 2))
  values[3, 0] = bad
  for fn in (float_token_ids, encode_floats):
    with pytest.raises(ValueError, match=re.escape(f"cannot tokenise {bad!r} at index (3, 0)")):
      fn(values, cfg)


def test_too_large_value_raises_only_for_ids():
  cfg = default_env_config()
  values = np.array([1.0, 1e103, -1e104])
  assert encode_floats(values, cfg)[2] == ["-", "N1000", "E101"]
  assert float_token_ids(values[:2], cfg)[1].tolist() == [
      build_vocab(cfg).float_word2id[t] for t in ["+", "N1000", "E100"]]
  with pytest.raises(ValueError, match=r"-1e\+104 at index \(2,\).*E101.*outside"):
    float_token_ids(values, cfg)


# ---------------------------------------------------------------------------------------
# randomized comparison with Python's formatting


def _reference_tokens(value: float, precision: int, mantissa_len: int, max_exponent: int):
  """Slow reference: one value through Python's '%.{p}e' formatting."""
  text = "%.*e" % (precision, value)
  mantissa, exponent = text.split("e")
  digits = mantissa.replace("-", "").replace(".", "")
  power = int(exponent) - precision
  if power < -max_exponent:
    digits, power = "0" * len(digits), 0
  width = len(digits) // mantissa_len
  chunks = ["N" + digits[i * width:(i + 1) * width] for i in range(mantissa_len)]
  return ["+" if value >= 0 else "-"] + chunks + [f"E{power}"]


def _random_values(precision: int, rng: np.random.Generator) -> np.ndarray:
  """Log-uniform magnitudes, decimal and binary rounding ties, and awkward edge values."""
  n = 60_000
  magnitudes = 10.0 ** rng.uniform(-300, 120, n) * rng.uniform(1, 10, n)
  digits = rng.integers(10**precision, 10**(precision + 1), 15_000)
  powers = rng.integers(-300, 110, digits.size)
  decimal_ties = np.array([float(f"{d}5e{q}") for d, q in zip(digits, powers)])
  integer_ties = np.array([float((int(d) * 10 + 5) * 10**int(q)) for d, q in zip(
      digits[:3000], rng.integers(0, 8, 3000))])
  dyadic = rng.integers(1, 2**20, 6000) / 2.0 ** rng.integers(0, 24, 6000)
  ties = np.concatenate([decimal_ties, integer_ties, dyadic, [0.12345, 1.0005, 2.5e-3]])
  near = np.concatenate([np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
  tens = 10.0 ** np.arange(-320, 309)
  edges = np.concatenate([
      tens, np.nextafter(tens, 0), np.nextafter(tens, np.inf), 9.9995 * tens[300:420],
      [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
       1e-97, 9.9995e-98, 9.9994e-98, 1e-98, 1e-100]])
  values = np.concatenate([magnitudes, ties, near, edges])
  return values * rng.choice([-1.0, 1.0], values.size)


@pytest.mark.parametrize("precision, mantissa_len", [(3, 1), (3, 2), (5, 3), (15, 4)])
def test_random_floats_match_python_formatting(precision, mantissa_len):
  """(15, 4) is past the float64 fast path and checks the all-Python route."""
  cfg = default_env_config(float_precision=precision, mantissa_len=mantissa_len)
  values = _random_values(precision, np.random.default_rng(precision * 10 + mantissa_len))
  assert values.size >= 100_000
  expected = [_reference_tokens(v, precision, mantissa_len, cfg.max_exponent)
              for v in values.tolist()]
  assert encode_floats(values, cfg) == expected
  word2id = build_vocab(cfg).float_word2id
  in_vocab = np.array([tokens[-1] in word2id for tokens in expected])
  expected_ids = np.array([[word2id[t] for t in tokens]
                           for tokens, ok in zip(expected, in_vocab) if ok])
  np.testing.assert_array_equal(float_token_ids(values[in_vocab], cfg), expected_ids)
  decoded = decode_float_ids(expected_ids, cfg)
  reference = [decode_floats(tokens, cfg)[0] for tokens, ok in zip(expected, in_vocab) if ok]
  assert [repr(v) for v in decoded.tolist()] == [repr(v) for v in reference]


# ---------------------------------------------------------------------------------------
# equations


def _set_config(name: str) -> EnvConfig:
  """Environment config of a generator-sample set ('d1' or 'd10')."""
  return default_env_config(max_input_dimension={"d1": 1, "d10": 10}[name])


def test_generator_samples_encode_like_original():
  samples = _samples()
  assert len(samples) == 3000
  for sample in samples:
    cfg = _set_config(sample["set"])
    vocab = build_vocab(cfg)
    tokens = encode_prefix(sample["prefix"].split(","), cfg)
    assert tokens == sample["tree_encoded"], sample["prefix"]
    skeleton = encode_prefix(sample["skeleton_prefix"].split(","), cfg)
    assert skeleton == sample["skeleton_tree_encoded"]
    assert encode_prefix(decode_prefix(tokens, cfg), cfg) == tokens
    ids = equation_ids(tokens, vocab) + equation_ids(skeleton, vocab)
    assert all(0 <= i < vocab.n_words for i in ids)


def test_encode_prefix_numbers():
  cfg = default_env_config()
  prefix = ["add", "-3", "mul", "007", "47.900000000000006", "sub", "1e-120", "-2.0", "pi"]
  assert encode_prefix(prefix, cfg) == [
      "add", "-3", "mul", "7", "+", "N4790", "E-2", "sub", "+", "N0000", "E0",
      "-", "N2000", "E-3", "pi"]
  with pytest.raises(ValueError, match="'nan' at position 1"):
    encode_prefix(["add", "nan", "x_0"], cfg)


def test_decode_prefix():
  cfg = default_env_config()
  tokens = ["add", "-", "N2500", "E-4", "mul", "INT-", "1", "2", "INT+", "7", "x_0", "e"]
  assert decode_prefix(tokens, cfg) == ["add", "-0.25", "mul", "-12", "7", "x_0", "e"]
  with pytest.raises(ValueError, match="truncated float at position 1"):
    decode_prefix(["add", "+", "N1000"], cfg)
  with pytest.raises(ValueError, match="malformed float"):
    decode_prefix(["+", "N1000", "x_0"], cfg)


def test_equation_ids():
  vocab = build_vocab(_config_from_cli(_json("vocab.json")["d1_extra_ood"]["cli_overrides"]))
  assert equation_ids(["sinh", "max", "0.5", "<EOS>", "<PAD>"], vocab) == [77, 78, 79, 65, 73]
  with pytest.raises(ValueError, match=r"'x_1' at position 2"):
    equation_ids(["add", "x_0", "x_1"], vocab)
