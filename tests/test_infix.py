"""Infix parsing never executes its input, refuses hostile text fast, and keeps ordinary trees."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from snip_jax.symbolic.infix import InfixError, parse_infix

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CANARY = "CANARY"  # replaced by a path inside tmp_path; no case may create that file


def _hostile_cases() -> list[str]:
  """Code injection, resource exhaustion and malformed text: each must be refused, none run."""
  touch = f"__import__('os').system('touch {CANARY}')"
  return [
      touch,
      f"({touch} or 1)*x_0",
      f"x_0 + {touch}",
      f"open('{CANARY}', 'w').write('x')",
      f"exec(\"open('{CANARY}', 'w')\")",
      f"eval(\"open('{CANARY}', 'w')\")",
      f"(lambda: {touch})()",
      "lambda x: x",
      f"sin({touch})",
      f"__builtins__.open('{CANARY}', 'w')",
      "x_0.__class__.__mro__",
      "().__class__.__bases__[0].__subclasses__()",
      "getattr(x_0, '__class__')",
      f"[{touch} for _ in (1,)]",
      f"{{{touch}}}",
      f"f\"{{{touch}}}\"",
      "x_0[0]",
      "'abc'",
      "b'abc'",
      "9**9**9**9",
      "x_0 + 9**9**9**9",
      "2**(10**10)",
      "(10**99)**(10**99)",
      "x_0^9^9^9",
      "x_0*" + "9" * 5000,
      "1e999*x_0",
      "1e308*1e308*x_0",
      "sin(x_0",
      "sin(x_0))",
      "((x_0)",
      "(" * 1000 + "x_0" + ")" * 1000,
      "-" * 7000 + "x_0",
      "x_0 + " * 3000 + "x_0",
      "foo(x_0)",
      "sin(x_0, x_1)",
      "sin(x=x_0)",
      "sin",
      "",
      "   ",
      "y + x_0",
      "I*x_0",
      "1j*x_0",
      "x_0 if x_1 else x_2",
      "x_0 < 1",
      "x_0 and x_1",
      "x_0 @ x_1",
      "x_0 // 2",
      "~x_0",
      "(x := 1)",
      "x_0/0",
      "x_\u0663",
  ]


_RUNNER = """
import json, sys, time
from snip_jax.symbolic.infix import parse_infix
parse_infix("sin(x_0)*x_1 + 2.5")  # imports sympy before the clock starts
results = []
for text in json.load(sys.stdin):
  start = time.perf_counter()
  try:
    outcome = "parsed " + parse_infix(text).prefix()
  except ValueError as err:
    outcome = "refused " + str(err)
  except Exception as err:  # any other exception type is a failure of the parser
    outcome = "crashed " + type(err).__name__ + ": " + str(err)
  results.append([outcome, time.perf_counter() - start])
print(json.dumps(results))
"""


def test_hostile_infix_is_refused_quickly_and_never_runs(tmp_path):
  canary = tmp_path / "canary"
  cases = [case.replace(CANARY, str(canary)) for case in _hostile_cases()]
  assert len(cases) >= 30
  run = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(cases), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=True)
  results = json.loads(run.stdout)
  assert not canary.exists()
  assert list(tmp_path.iterdir()) == []
  for text, (outcome, seconds) in zip(cases, results):
    assert seconds < 1.0, (text[:60], seconds)
    assert re.fullmatch(r"refused cannot parse infix expression .+: \S.{8,}", outcome), outcome


def test_refusals_name_the_problem():
  expected = {
      "__import__('os').system('ls')": "calling attribute access '.system'",
      "x_0.real": "attribute access '.real'",
      "(lambda: 1)()": "calling a lambda",
      "x_0[1]": r"subscripting \(\[...\]\)",
      "9**9**9**9": "too large",
      "x_0*" + "1" * 200: "more than 100 digits",
      "open('f')": "unknown function 'open'",
      "sin(x_0": "was never closed",
      "sin(y)": "unknown variable 'y'",
      "x_0 % 2": "the operator Mod is not allowed",
      "x_0 or 1": "a BoolOp expression is not allowed",
      "x_0 + " * 2000 + "x_0": "characters refused: the limit is 8000",
      "(" * 101 + "x_0" + ")" * 101: "nested 101 parentheses deep",
  }
  for text, message in expected.items():
    with pytest.raises(InfixError, match=message):
      parse_infix(text)
  with pytest.raises(TypeError, match="must be a string"):
    parse_infix(b"x_0")


def test_ordinary_infix_keeps_the_trees_sympify_gave():
  fixture = json.loads((FIXTURES / "infix_regression.json").read_text())
  assert len(fixture["cases"]) == 275
  for text, prefix in fixture["cases"]:
    assert parse_infix(text).prefix() == prefix, text


def test_long_legitimate_sums_parse_and_bounded_numeric_powers_evaluate():
  text = " + ".join(f"{i}.5*sin(x_{i % 3})" for i in range(300))
  assert len(text) < 8000
  expr = parse_infix(text)
  assert sorted(expr.variables()) == ["x_0", "x_1", "x_2"]
  assert parse_infix("2**10*x_0").prefix() == "mul,1024.0,x_0"
  assert parse_infix("x_0**(10**100)").prefix() == "pow,x_0,1e+100"
