"""Expression trees: prefix text, infix printing, sympy output and evaluation on points.

An `Expression` holds one tree per output dimension (the original's `NodeList`); prefix text
joins the outputs with `,|,` and infix with ` | `, as the original prints them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from snip_jax.symbolic.config import (BASE_OPERATORS, EXTRA_BINARY_OPERATORS,
                                      EXTRA_UNARY_OPERATORS, MATH_CONSTANTS)

ARITY = {
    **BASE_OPERATORS,
    **{name: 1 for name in EXTRA_UNARY_OPERATORS},
    **{name: 2 for name in EXTRA_BINARY_OPERATORS},
}


class Node:
  """One operator or leaf; `value` is the original's string (operator, `x_3`, `0.918`, `pi`)."""

  __slots__ = ("value", "children")

  def __init__(self, value: str, children: list["Node"] | None = None):
    self.value = value
    self.children = children if children is not None else []

  def prefix_list(self) -> list[str]:
    out: list[str] = []
    stack = [self]
    while stack:
      node = stack.pop()
      out.append(node.value)
      stack.extend(reversed(node.children))
    return out

  def prefix(self) -> str:
    return ",".join(self.prefix_list())

  def infix(self) -> str:
    """The original's infix: `(a op b)`, `f(a)`, `(a)**2` / `(a)**3` for pow2 / pow3."""
    if not self.children:
      return self.value
    if len(self.children) == 1:
      inner = self.children[0].infix()
      if self.value == "pow2":
        return f"({inner})**2"
      if self.value == "pow3":
        return f"({inner})**3"
      return f"{self.value}({inner})"
    return "(" + f" {self.value} ".join(c.infix() for c in self.children) + ")"

  def __len__(self) -> int:
    return len(self.prefix_list())

  def __repr__(self) -> str:
    return self.infix()


class Expression:
  """A (possibly multi-output) expression: one `Node` per output dimension."""

  __slots__ = ("nodes",)

  def __init__(self, nodes: Sequence[Node]):
    if not nodes:
      raise ValueError("an expression needs at least one output tree")
    self.nodes = list(nodes)

  def prefix_list(self) -> list[str]:
    out: list[str] = []
    for i, node in enumerate(self.nodes):
      if i:
        out.append("|")
      out.extend(node.prefix_list())
    return out

  def prefix(self) -> str:
    return ",".join(self.prefix_list())

  def infix(self) -> str:
    return " | ".join(node.infix() for node in self.nodes)

  def __len__(self) -> int:
    return sum(len(node) for node in self.nodes)

  def __repr__(self) -> str:
    return self.infix()

  def __str__(self) -> str:
    return self.infix()

  @property
  def output_dimension(self) -> int:
    return len(self.nodes)

  def variables(self) -> list[str]:
    """Distinct `x_i` leaves, sorted by index."""
    names = {v for v in self.prefix_list() if v.startswith("x_")}
    return sorted(names, key=lambda v: int(v[2:]))

  def evaluate(self, x: np.ndarray, *, use_abs: bool = False, strict: bool = False) -> np.ndarray:
    """Values at points `x` [n, d] -> [n, output_dimension].

    strict=False: invalid points give NaN (log/sqrt of invalid inputs unless use_abs, division
    by zero, overflow). strict=True raises FloatingPointError on any floating-point error
    (overflow, underflow, invalid, divide): the generator's acceptance test, equivalent to the
    original running under `np.seterr(all="raise")` where any such error rejects the sample.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
      raise ValueError(f"points must have shape [n, d]; got {x.shape}")
    errors = "raise" if strict else "ignore"
    with np.errstate(all=errors):
      columns = [_evaluate(node, x, use_abs, strict) for node in self.nodes]
    y = np.stack(columns, axis=-1)
    if not strict:
      y[~np.isfinite(y)] = np.nan
    return y

  def to_sympy(self):
    """A sympy expression (a tuple of them for multi-output expressions)."""
    exprs = tuple(_to_sympy(node) for node in self.nodes)
    return exprs[0] if len(exprs) == 1 else exprs

  def copy(self) -> "Expression":
    return Expression([_copy(node) for node in self.nodes])


def _copy(node: Node) -> Node:
  return Node(node.value, [_copy(c) for c in node.children])


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def parse_prefix(prefix: str | Iterable[str], arity: dict[str, int] | None = None) -> Expression:
  """Parse prefix text (`add,0.918,mul,0.403,x_0` or a token list) into an Expression.

  Leaves are variables `x_i`, `rand`, math constants, `CONSTANT` placeholders and numbers
  written as Python floats or ints. Raises ValueError naming the first bad position.
  """
  tokens = prefix.split(",") if isinstance(prefix, str) else list(prefix)
  arity = ARITY if arity is None else arity
  outputs: list[list[str]] = [[]]
  for token in tokens:
    if token == "|":
      outputs.append([])
    else:
      outputs[-1].append(token)
  nodes = []
  offset = 0
  for part in outputs:
    node, used = _parse_one(part, 0, arity, offset)
    if used != len(part):
      raise ValueError(
          f"unparsable prefix: unexpected token {part[used]!r} at position {offset + used}"
          f" after a complete expression")
    nodes.append(node)
    offset += len(part) + 1
  return Expression(nodes)


def _parse_one(tokens: list[str], pos: int, arity: dict[str, int], offset: int):
  """Iterative prefix parser; returns (node, next position)."""
  if pos >= len(tokens):
    raise ValueError(f"unparsable prefix: expression ends early at position {offset + pos}")
  root = None
  stack: list[list] = []  # [node, remaining children]
  while True:
    if pos >= len(tokens):
      raise ValueError(
          f"unparsable prefix: operator {stack[-1][0].value!r} is missing operands"
          f" (prefix ends at position {offset + pos})")
    token = tokens[pos]
    _check_leaf_or_operator(token, arity, offset + pos)
    node = Node(token)
    pos += 1
    if stack:
      stack[-1][0].children.append(node)
      stack[-1][1] -= 1
    else:
      root = node
    n_children = arity.get(token, 0)
    if n_children:
      stack.append([node, n_children])
    while stack and stack[-1][1] == 0:
      stack.pop()
    if not stack:
      return root, pos


def _check_leaf_or_operator(token: str, arity: dict[str, int], position: int) -> None:
  if token in arity or is_leaf_symbol(token):
    return
  raise ValueError(f"unparsable prefix: unknown token {token!r} at position {position}")


def is_leaf_symbol(token: str) -> bool:
  """Variables, rand, constants, CONSTANT placeholders and numbers are leaves."""
  if token.startswith("x_") and token[2:].isascii() and token[2:].isdigit():
    return True
  if token in MATH_CONSTANTS or token == "rand" or token.startswith("CONSTANT"):
    return True
  return is_number(token)


def is_number(token: str) -> bool:
  try:
    float(token)
  except ValueError:
    return False
  return True


def is_integer_text(token: str) -> bool:
  """The original's integer test: digits with optional leading minus signs."""
  return token.lstrip("-").isdigit()


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

_UNARY_NUMPY = {
    "abs": np.abs, "exp": np.exp, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "arcsin": np.arcsin, "arccos": np.arccos, "arctan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "arcsinh": np.arcsinh,
    "arccosh": np.arccosh, "arctanh": np.arctanh, "exp2": np.exp2, "cbrt": np.cbrt,
    "square": np.square,
}
_BINARY_NUMPY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
                 "min": np.minimum}


def _evaluate(node: Node, x: np.ndarray, use_abs: bool, strict: bool) -> np.ndarray:
  """Recursive evaluation; numpy's errstate decides whether errors raise."""
  value = node.value
  children = node.children
  if not children:
    return _leaf_values(value, x)
  if len(children) == 2:
    a = _evaluate(children[0], x, use_abs, strict)
    b = _evaluate(children[1], x, use_abs, strict)
    op = _BINARY_NUMPY.get(value)
    if op is not None:
      return op(a, b)
    if value == "div":
      return _divide(a, b, strict)
    if value == "pow":
      return np.power(a, b)
    raise ValueError(f"cannot evaluate binary operator {value!r}")
  a = _evaluate(children[0], x, use_abs, strict)
  op = _UNARY_NUMPY.get(value)
  if op is not None:
    return op(a)
  if value == "pow2":
    return a * a
  if value == "pow3":
    return a * a * a
  if value == "inv":
    return _divide(np.ones_like(a), a, strict)
  if value in ("sqrt", "log", "log2", "log10"):
    return _root_or_log(value, a, use_abs, strict)
  if value == "sign":
    return (a >= 0) * 2.0 - 1.0
  if value == "reciprocal":
    return _divide(np.ones_like(a), a, strict)
  raise ValueError(f"cannot evaluate unary operator {value!r}")


def _leaf_values(value: str, x: np.ndarray) -> np.ndarray:
  if value.startswith("x_"):
    dim = int(value[2:])
    if dim >= x.shape[1]:
      raise ValueError(f"expression uses {value} but the points have {x.shape[1]} columns")
    return x[:, dim]
  if value == "rand":
    return np.zeros(x.shape[0])
  if value in MATH_CONSTANTS:
    return np.full(x.shape[0], getattr(np, value))
  if value.startswith("CONSTANT"):
    raise ValueError("cannot evaluate a skeleton: it has CONSTANT placeholders")
  return np.full(x.shape[0], float(value))


def _divide(a: np.ndarray, b: np.ndarray, strict: bool) -> np.ndarray:
  """a / b with NaN where b == 0 (strict: division by zero raises)."""
  if strict:
    if not np.all(b):
      raise FloatingPointError("division by zero")
    return a / b
  out = a / np.where(b == 0.0, np.nan, b)
  return out


def _root_or_log(name: str, a: np.ndarray, use_abs: bool, strict: bool) -> np.ndarray:
  """sqrt/log with the original's domain rules: NaN for invalid inputs unless use_abs."""
  if use_abs:
    a = np.abs(a)
  invalid = (a < 0.0) if name == "sqrt" else (a <= 0.0)
  if np.any(invalid):
    if strict:
      raise FloatingPointError(f"{name} of an invalid input")
    a = np.where(invalid, np.nan, a)
  fn = {"sqrt": np.sqrt, "log": np.log, "log2": np.log2, "log10": np.log10}[name]
  return fn(a)


# ---------------------------------------------------------------------------------------------
# sympy
# ---------------------------------------------------------------------------------------------


def _to_sympy(node: Node):
  import sympy  # pylint: disable=g-import-not-at-top  (sympy is slow to import; rarely needed)

  value = node.value
  if not node.children:
    if value.startswith("x_") or value == "rand" or value.startswith("CONSTANT"):
      return sympy.Symbol(value)
    constants = {"e": sympy.E, "pi": sympy.pi, "euler_gamma": sympy.EulerGamma}
    if value in constants:
      return constants[value]
    return sympy.Integer(int(value)) if is_integer_text(value) else sympy.Float(value)
  args = [_to_sympy(c) for c in node.children]
  binary = {
      "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
      "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "max": sympy.Max,
      "min": sympy.Min,
  }
  if value in binary:
    return binary[value](*args)
  a = args[0]
  unary = {
      "abs": sympy.Abs, "inv": lambda t: 1 / t, "sqrt": sympy.sqrt, "log": sympy.log,
      "exp": sympy.exp, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
      "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
      "pow2": lambda t: t ** 2, "pow3": lambda t: t ** 3, "sinh": sympy.sinh,
      "cosh": sympy.cosh, "tanh": sympy.tanh, "arcsinh": sympy.asinh, "arccosh": sympy.acosh,
      "arctanh": sympy.atanh, "sign": sympy.sign, "exp2": lambda t: 2 ** t,
      "log2": lambda t: sympy.log(t, 2), "log10": lambda t: sympy.log(t, 10),
      "cbrt": sympy.cbrt, "square": lambda t: t ** 2, "reciprocal": lambda t: 1 / t,
  }
  return unary[value](a)
