"""Expression trees: parsing, printing, sympy and evaluation semantics."""

import gzip
import json
import pathlib

import numpy as np
import pytest
import sympy

from snip_jax.symbolic.infix import from_sympy, parse_infix
from snip_jax.symbolic.trees import parse_prefix

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"


def _fixture_samples():
  with gzip.open(FIXTURES / "generator_samples.jsonl.gz", "rt") as f:
    return [json.loads(line) for line in f]


def test_prefix_and_infix_match_original_for_every_fixture_sample():
  for sample in _fixture_samples():
    expr = parse_prefix(sample["prefix"])
    assert expr.prefix() == sample["prefix"]
    assert expr.infix() == sample["infix"]
    skeleton = parse_prefix(sample["skeleton_prefix"])
    assert skeleton.infix() == sample["skeleton_infix"]


def test_evaluation_reproduces_fixture_outputs():
  checked = 0
  for sample in _fixture_samples():
    if "x_to_fit" not in sample:
      continue
    x = np.asarray(sample["x_to_fit"], dtype=np.float64)
    y = np.asarray(sample["y_to_fit"], dtype=np.float64)
    got = parse_prefix(sample["prefix"]).evaluate(x, strict=True)
    np.testing.assert_allclose(got, y, rtol=1e-12, atol=1e-12)
    checked += 1
  assert checked == 40


def test_infix_formats():
  expr = parse_prefix("add,pow2,x_0,mul,-3,sin,pow3,x_1,|,inv,x_0")
  assert expr.infix() == "((x_0)**2 add (-3 mul sin((x_1)**3))) | inv(x_0)"
  assert expr.prefix() == "add,pow2,x_0,mul,-3,sin,pow3,x_1,|,inv,x_0"
  assert expr.output_dimension == 2
  assert len(expr) == 10


def test_invalid_points_are_nan_unless_use_abs():
  x = np.array([[-1.0], [0.0], [4.0]])
  np.testing.assert_equal(parse_prefix("sqrt,x_0").evaluate(x)[:, 0], [np.nan, 0.0, 2.0])
  np.testing.assert_equal(parse_prefix("log,x_0").evaluate(x)[:, 0], [np.nan, np.nan, np.log(4)])
  np.testing.assert_equal(parse_prefix("div,1,x_0").evaluate(x)[:, 0], [-1.0, np.nan, 0.25])
  np.testing.assert_equal(parse_prefix("inv,x_0").evaluate(x)[:, 0], [-1.0, np.nan, 0.25])
  np.testing.assert_equal(parse_prefix("exp,mul,1000,x_0").evaluate(x)[:, 0],
                          [0.0, 1.0, np.nan])
  np.testing.assert_equal(parse_prefix("sqrt,x_0").evaluate(x, use_abs=True)[:, 0], [1, 0, 2])
  np.testing.assert_equal(parse_prefix("log,x_0").evaluate(x, use_abs=True)[:, 0],
                          [0.0, np.nan, np.log(4)])


def test_strict_evaluation_raises_on_any_floating_point_error():
  x = np.array([[-1.0], [0.5]])
  for prefix in ["sqrt,x_0", "div,1,sub,x_0,x_0", "exp,mul,-1000,x_0", "arcsin,mul,3,x_0"]:
    with pytest.raises(FloatingPointError):
      parse_prefix(prefix).evaluate(x, strict=True)
  np.testing.assert_allclose(parse_prefix("mul,2,x_0").evaluate(x, strict=True), [[-2], [1]])


def test_constants_and_multi_output():
  x = np.zeros((2, 2))
  y = parse_prefix("add,pi,e,|,mul,euler_gamma,rand,|,x_1").evaluate(x)
  np.testing.assert_allclose(y[0], [np.pi + np.e, 0.0, 0.0])


def test_to_sympy():
  expr = parse_prefix("add,mul,0.5,pow2,x_0,sin,x_1")
  x0, x1 = sympy.symbols("x_0 x_1")
  assert sympy.simplify(expr.to_sympy() - (0.5 * x0 ** 2 + sympy.sin(x1))) == 0
  two = parse_prefix("x_0,|,inv,x_0").to_sympy()
  assert two == (x0, 1 / x0)


@pytest.mark.parametrize("prefix, message", [
    ("add,x_0", "missing operands"),
    ("x_0,x_1", "unexpected token 'x_1' at position 1"),
    ("add,x_0,foo", "unknown token 'foo' at position 2"),
    ("", "unknown token ''"),
])
def test_unparsable_prefix_names_the_problem(prefix, message):
  with pytest.raises(ValueError, match=message):
    parse_prefix(prefix)


def test_original_infix_parses_back_to_the_same_tree():
  for sample in _fixture_samples():
    assert parse_infix(sample["infix"]).prefix() == sample["prefix"]
    assert parse_infix(sample["skeleton_infix"]).prefix() == sample["skeleton_prefix"]
  multi = parse_prefix("add,pow2,x_0,mul,-3,sin,pow3,x_1,|,inv,x_0")
  assert parse_infix(multi.infix()).prefix() == multi.prefix()


def test_math_infix_and_sympy_convert_to_equivalent_trees():
  x = np.random.default_rng(0).uniform(0.5, 2.0, size=(50, 2))
  cases = {
      "0.4*x_0 + sin(x_1)": 0.4 * x[:, 0] + np.sin(x[:, 1]),
      "x_0**2 - 3*x_1": x[:, 0] ** 2 - 3 * x[:, 1],
      "1/x_0 + sqrt(x_1) + x_0**3": 1 / x[:, 0] + np.sqrt(x[:, 1]) + x[:, 0] ** 3,
      "exp(-x_0)*pi + log(x_1)/x_0**2": np.exp(-x[:, 0]) * np.pi + np.log(x[:, 1]) / x[:, 0] ** 2,
      "x_0**1.5 + 12*x_1": x[:, 0] ** 1.5 + 12 * x[:, 1],
  }
  for text, expected in cases.items():
    expr = parse_infix(text)
    np.testing.assert_allclose(expr.evaluate(x)[:, 0], expected, rtol=1e-12)
  tree = from_sympy(sympy.sympify("x_0 - 2*x_1"))
  assert tree.prefix() == "sub,x_0,mul,2,x_1"
  with pytest.raises(ValueError, match="unknown variable 'y'"):
    parse_infix("sin(y)")
  with pytest.raises(ValueError, match="cannot parse infix"):
    parse_infix("sin(x_0")
