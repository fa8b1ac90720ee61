"""Infix text and sympy expressions -> `Expression`, without ever executing the text.

Two readers: the original's infix (`(0.918 add (0.403 mul x_0))`), parsed token by token, and
ordinary math (`0.4*x_0 + sin(x_1)`), parsed with Python's `ast` (which only builds a syntax
tree) and turned into sympy through an allowlist of numbers, variables `x_i`, constants,
`+ - * / ** ^` and the environment's functions. Nothing reaches `eval`, `sympify` or
`parse_expr`; sizes, nesting and numeric powers are bounded so that no string can hang.
`read_sympy` reads the same math over named variables (PMLB formulas, other programs' models).
"""

from __future__ import annotations

import ast
import re
from typing import Any, Callable, Mapping, Optional

from snip_jax.symbolic.trees import ARITY, Expression, Node, is_leaf_symbol

MAX_INFIX_CHARS = 8_000  # longer text is refused before parsing (a 200-token equation: < 4,000)
MAX_NESTING = 100  # parentheses / syntax-tree depth
MAX_LITERAL_DIGITS = 100  # digits of one integer literal
MAX_RESULT_DIGITS = 1_000  # decimal digits of a power of two numbers, evaluated exactly

_VARIABLE = re.compile(r"x_[0-9]+")
_ORIGINAL_TOKEN = re.compile(r"\*\*[23]|[()]|[^\s()]+")


class InfixError(ValueError):
  """Infix text that is not an expression this environment can represent."""


def parse_infix(text: str, max_int: int = 10) -> Expression:
  """Parse infix text into an Expression.

  The original's infix (`(0.918 add (0.403 mul x_0))`, `sin(...)`, `(...)**2`, outputs joined
  by ` | `) parses exactly, node for node. Anything else is read as ordinary math
  (`0.4*x_0 + sin(x_1)`, `x_0^2`, `Abs(x_0)`) into the tree sympy would give it, then converted
  with `from_sympy`. Raises InfixError naming the offending part.
  """
  if not isinstance(text, str):
    raise TypeError(f"infix text must be a string, got {type(text).__name__}")
  try:
    _check_size(text)
    parts = text.split(" | ")
    try:
      return Expression([_parse_original_infix(part) for part in parts])
    except ValueError:
      pass
    exprs = [_MathReader(part).read() for part in parts]
    return Expression([from_sympy(e, max_int).nodes[0] for e in exprs])
  except InfixError as err:
    raise InfixError(f"cannot parse infix expression {_shorten(text)}: {err}") from None


def read_sympy(text: str, variables: Mapping[str, Any]):
  """Ordinary math over named variables -> a sympy expression, through the same allowlist.

  For formulas with their own names (PMLB's `q*(Ef + B*v*sin(theta))`) and other programs'
  model strings: a name is looked up in `variables` (name -> sympy Symbol; they shadow the
  constants pi, e, E); calls are parse_infix's functions plus PMLB's `ln` and `cot`. Raises
  InfixError naming the offending part.
  """
  if not isinstance(text, str):
    raise TypeError(f"math text must be a string, got {type(text).__name__}")
  try:
    _check_size(text)
    return _MathReader(text, variables, _named_functions()).read()
  except InfixError as err:
    raise InfixError(f"cannot read {_shorten(text)}: {err}") from None


def _check_size(text: str) -> None:
  """Refuse empty, over-long and over-nested text before any parser sees it."""
  if not text.strip():
    raise InfixError("the text is empty")
  if len(text) > MAX_INFIX_CHARS:
    raise InfixError(f"{len(text)} characters refused: the limit is {MAX_INFIX_CHARS}")
  depth = deepest = 0
  for char in text:
    depth += (char in "([{") - (char in ")]}")
    deepest = max(deepest, depth)
  if deepest > MAX_NESTING:
    raise InfixError(f"nested {deepest} parentheses deep refused: the limit is {MAX_NESTING}")


def _shorten(text: str, limit: int = 80) -> str:
  """repr of `text`, cut to `limit` characters for messages."""
  return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------------------------
# The original's infix
# ---------------------------------------------------------------------------------------------


def _parse_original_infix(text: str) -> Node:
  tokens = _ORIGINAL_TOKEN.findall(text)
  node, pos = _infix_term(tokens, 0)
  if pos != len(tokens):
    raise ValueError(f"unexpected {tokens[pos]!r} in infix {text!r}")
  return node


def _infix_term(tokens: list[str], pos: int) -> tuple[Node, int]:
  """term := '(' term (op term)* ')' ['**2'|'**3'] | unary '(' term ')' | leaf."""
  if pos >= len(tokens):
    raise ValueError("infix ends early")
  token = tokens[pos]
  if token == "(":
    return _parenthesised(tokens, pos + 1)
  if ARITY.get(token) == 1:
    if pos + 1 >= len(tokens) or tokens[pos + 1] != "(":
      raise ValueError(f"expected '(' after {token!r}")
    inner, pos = _infix_term(tokens, pos + 2)
    if pos >= len(tokens) or tokens[pos] != ")":
      raise ValueError(f"missing ')' after the argument of {token!r}")
    return Node(token, [inner]), pos + 1
  if is_leaf_symbol(token):
    return Node(token), pos + 1
  raise ValueError(f"unexpected token {token!r}")


def _parenthesised(tokens: list[str], pos: int) -> tuple[Node, int]:
  """`(a op b op c)` as a left-leaning chain of `op`, with an optional `**2`/`**3`."""
  node, pos = _infix_term(tokens, pos)
  op = None
  while pos < len(tokens) and tokens[pos] != ")":
    if ARITY.get(tokens[pos]) != 2 or (op is not None and tokens[pos] != op):
      raise ValueError(f"expected a binary operator, got {tokens[pos]!r}")
    op = tokens[pos]
    operand, pos = _infix_term(tokens, pos + 1)
    node = Node(op, [node, operand])
  if pos >= len(tokens):
    raise ValueError("missing ')'")
  pos += 1
  if pos < len(tokens) and tokens[pos] in ("**2", "**3"):
    node = Node("pow2" if tokens[pos] == "**2" else "pow3", [node])
    pos += 1
  return node, pos


# ---------------------------------------------------------------------------------------------
# Ordinary math, through an allowlist
# ---------------------------------------------------------------------------------------------


def _functions() -> dict:
  """Function names accepted in math infix -> one-argument sympy builders."""
  import sympy  # pylint: disable=g-import-not-at-top  (sympy is slow to import; rarely needed)

  return {
      "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "exp": sympy.exp,
      "log": sympy.log, "sqrt": sympy.sqrt, "abs": sympy.Abs, "Abs": sympy.Abs,
      "asin": sympy.asin, "arcsin": sympy.asin, "acos": sympy.acos, "arccos": sympy.acos,
      "atan": sympy.atan, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
      "tanh": sympy.tanh, "asinh": sympy.asinh, "arcsinh": sympy.asinh,
      "acosh": sympy.acosh, "arccosh": sympy.acosh, "atanh": sympy.atanh,
      "arctanh": sympy.atanh, "inv": lambda a: 1 / a, "pow2": lambda a: a ** 2,
      "pow3": lambda a: a ** 3,
  }


def _named_functions() -> dict:
  """The functions read_sympy accepts besides _functions(): PMLB's `ln` and `cot`."""
  import sympy  # pylint: disable=g-import-not-at-top

  return {**_functions(), "ln": sympy.log, "cot": sympy.cot}


def _constants() -> dict:
  import sympy  # pylint: disable=g-import-not-at-top

  return {"pi": sympy.pi, "e": sympy.E, "E": sympy.E, "euler_gamma": sympy.EulerGamma,
          "EulerGamma": sympy.EulerGamma}


class _MathReader:
  """Builds a sympy expression from the syntax tree of one output's math text.

  Variables are `x_0, x_1, ...` (as sympy Symbols), or, when `variables` is given, exactly its
  names; `functions` replaces the default _functions().
  """

  def __init__(self, text: str, variables: Optional[Mapping[str, Any]] = None,
               functions: Optional[Mapping[str, Callable]] = None):
    import sympy  # pylint: disable=g-import-not-at-top

    # One line (offsets into it name literals); `^` is a power, as sympy's convert_xor reads it.
    self.text = " ".join(text.split()).replace("^", "**")
    self.encoded = self.text.encode()
    self.sympy = sympy
    self.variables = variables
    self.functions = _functions() if functions is None else dict(functions)
    self.constants = _constants()

  def read(self):
    try:
      tree = ast.parse(self.text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
      raise InfixError(f"not a valid expression ({type(err).__name__}:"
                       f" {getattr(err, 'msg', err)})") from None
    return self._node(tree.body, 0)

  def _node(self, node: ast.AST, depth: int):
    """The sympy value of an allowed syntax node; anything else is refused by name."""
    if depth > MAX_NESTING:
      raise InfixError(f"expression nested deeper than {MAX_NESTING} levels")
    if isinstance(node, ast.Constant):
      return self._literal(node)
    if isinstance(node, ast.Name):
      return self._name(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      operand = self._node(node.operand, depth + 1)
      return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
      return self._binary(node, depth)
    if isinstance(node, ast.Call):
      return self._call(node, depth)
    raise InfixError(f"{_describe(node)} is not allowed in an equation")

  def _literal(self, node: ast.Constant):
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise InfixError(f"the literal {_shorten(repr(value), 40)} is not a real number")
    if isinstance(value, int):
      if value.bit_length() > MAX_LITERAL_DIGITS * 3.33:
        raise InfixError(f"integer literal with more than {MAX_LITERAL_DIGITS} digits refused")
      return self.sympy.Integer(value)
    if value != value or value in (float("inf"), float("-inf")):
      raise InfixError("the literal is not a finite float64 number")
    source = self.encoded[node.col_offset:node.end_col_offset].decode()
    return self.sympy.Float(source)

  def _name(self, name: str):
    if self.variables is None and _VARIABLE.fullmatch(name):
      return self.sympy.Symbol(name)
    if self.variables is not None and name in self.variables:
      return self.variables[name]
    if name in self.constants:
      return self.constants[name]
    if name in self.functions:
      raise InfixError(f"function {name!r} needs an argument in parentheses")
    known = ("name variables x_0, x_1, ..." if self.variables is None else
             f"the variables are {', '.join(self.variables)[:200]}")
    raise InfixError(f"unknown variable {name!r}: {known}; constants are"
                     f" {', '.join(sorted(self.constants))}")

  def _binary(self, node: ast.BinOp, depth: int):
    """A left-leaning chain `a + b - c * d ...` folded iteratively (long sums are not deep)."""
    chain = []
    while isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Pow):
      chain.append(node)
      node = node.left
    if isinstance(node, ast.BinOp):
      value = self._power(node, depth)
    else:
      value = self._node(node, depth + 1)
    terms = []  # a run of + and - links, summed at once: sympy's Add is quadratic pairwise
    for link in reversed(chain):
      right = self._node(link.right, depth + 1)
      if isinstance(link.op, (ast.Add, ast.Sub)):
        terms.extend([] if terms else [value])
        terms.append(right if isinstance(link.op, ast.Add) else -right)
        continue
      if terms:
        value, terms = self.sympy.Add(*terms), []
      value = _arithmetic(link.op, value, right)
    return self.sympy.Add(*terms) if terms else value

  def _power(self, node: ast.BinOp, depth: int):
    """`base ** exponent` (or `^`), refusing numeric powers too large to evaluate exactly."""
    base = self._node(node.left, depth + 1)
    exponent = self._node(node.right, depth + 1)
    _check_numeric_power(base, exponent)
    return base ** exponent

  def _call(self, node: ast.Call, depth: int):
    if not isinstance(node.func, ast.Name):
      raise InfixError(f"calling {_describe(node.func)} is not allowed in an equation")
    name = node.func.id
    if name not in self.functions:
      raise InfixError(f"unknown function {name!r}; known: {', '.join(sorted(self.functions))}")
    if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
      raise InfixError(f"{name}() takes exactly one positional argument")
    return self.functions[name](self._node(node.args[0], depth + 1))


def _arithmetic(op: ast.operator, left, right):
  """`left op right` for + - * /; other operators are refused by name."""
  if isinstance(op, ast.Add):
    return left + right
  if isinstance(op, ast.Sub):
    return left - right
  if isinstance(op, ast.Mult):
    return left * right
  if isinstance(op, ast.Div):
    return left / right
  raise InfixError(f"the operator {type(op).__name__} is not allowed in an equation"
                   " (use + - * / ** or ^)")


def _describe(node: ast.AST) -> str:
  """A short name for a refused syntax node: `attribute access '.system'`, `a lambda`, ..."""
  if isinstance(node, ast.Attribute):
    return f"attribute access '.{node.attr}'"
  if isinstance(node, ast.Subscript):
    return "subscripting ([...])"
  if isinstance(node, ast.Lambda):
    return "a lambda"
  if isinstance(node, ast.Call):
    return "a call of a call"
  return f"a {type(node).__name__} expression"


def _check_numeric_power(base, exponent) -> None:
  """Refuse number ** number whose exact value would have more than MAX_RESULT_DIGITS digits."""
  if not (base.is_Number and exponent.is_Number):
    return
  exponent_digits = _decimal_digits(exponent)
  if exponent_digits > 6 or abs(float(exponent)) * _decimal_digits(base) > MAX_RESULT_DIGITS:
    raise InfixError(f"the power {_shorten(str(base), 20)}**{_shorten(str(exponent), 20)} is"
                     f" too large (more than {MAX_RESULT_DIGITS} digits)")


def _decimal_digits(number) -> float:
  """About how many decimal digits a sympy number's magnitude (or its reciprocal) has."""
  if number.is_Rational:
    return max(int(number.p).bit_length(), int(number.q).bit_length()) * 0.30103 + 1
  if number.is_Float:
    _, mantissa, exponent, _ = number._mpf_  # pylint: disable=protected-access
    return abs(exponent + int(mantissa).bit_length()) * 0.30103 + 1
  return 1.0


# ---------------------------------------------------------------------------------------------
# sympy -> Expression
# ---------------------------------------------------------------------------------------------


def from_sympy(expr, max_int: int = 10) -> Expression:
  """Convert a sympy expression over symbols x_0, x_1, ... to an Expression.

  Sums and products become chains of binary add/mul (a term -t becomes `sub`), powers 2, 3,
  -1 and 1/2 become pow2, pow3, inv and sqrt, integers in [-max_int, max_int] stay integer
  leaves and other numbers become float constants.
  """
  return Expression([_from_sympy(expr, max_int)])


def _from_sympy(expr, max_int: int) -> Node:
  import sympy  # pylint: disable=g-import-not-at-top

  if isinstance(expr, sympy.Symbol):
    if not _VARIABLE.fullmatch(expr.name):
      raise InfixError(f"unknown variable {expr.name!r}: name variables x_0, x_1, ...")
    return Node(expr.name)
  if expr.is_Number:
    return Node(_number_text(expr, max_int))
  constants = {sympy.pi: "pi", sympy.E: "e", sympy.EulerGamma: "euler_gamma"}
  if expr in constants:
    return Node(constants[expr])
  if isinstance(expr, sympy.Add):
    return _chain_sum(expr.as_ordered_terms(), max_int)
  if isinstance(expr, sympy.Mul):
    return _chain("mul", [_from_sympy(a, max_int) for a in expr.as_ordered_factors()])
  if isinstance(expr, sympy.Pow):
    return _power(expr, max_int)
  names = {sympy.sin: "sin", sympy.cos: "cos", sympy.tan: "tan", sympy.exp: "exp",
           sympy.log: "log", sympy.Abs: "abs", sympy.asin: "arcsin", sympy.acos: "arccos",
           sympy.atan: "arctan", sympy.sinh: "sinh", sympy.cosh: "cosh", sympy.tanh: "tanh",
           sympy.asinh: "arcsinh", sympy.acosh: "arccosh", sympy.atanh: "arctanh"}
  if expr.func in names and len(expr.args) == 1:
    return Node(names[expr.func], [_from_sympy(expr.args[0], max_int)])
  raise InfixError(f"cannot convert {_shorten(str(expr), 60)} ({expr.func.__name__}) to a SNIP"
                   " expression")


def _number_text(number, max_int: int) -> str:
  """An integer leaf for small integers, else the float64 value; non-finite numbers refused."""
  if number.is_Integer and 0 < abs(int(number)) <= max_int:
    return str(int(number))
  try:
    value = float(number)
  except (OverflowError, TypeError):
    value = float("nan")
  if value != value or abs(value) == float("inf"):
    raise InfixError(f"the number {_shorten(str(number), 30)} is not a finite float64 value")
  return repr(value)


def _chain(op: str, nodes: list[Node]) -> Node:
  node = nodes[0]
  for other in nodes[1:]:
    node = Node(op, [node, other])
  return node


def _chain_sum(terms, max_int: int) -> Node:
  node = _from_sympy(terms[0], max_int)
  for term in terms[1:]:
    if term.could_extract_minus_sign():
      node = Node("sub", [node, _from_sympy(-term, max_int)])
    else:
      node = Node("add", [node, _from_sympy(term, max_int)])
  return node


def _power(expr, max_int: int) -> Node:
  import sympy  # pylint: disable=g-import-not-at-top

  base, exponent = expr.args
  node = _from_sympy(base, max_int)
  special = {sympy.Integer(2): ["pow2"], sympy.Integer(3): ["pow3"], sympy.Integer(-1): ["inv"],
             sympy.Rational(1, 2): ["sqrt"], sympy.Integer(-2): ["pow2", "inv"],
             sympy.Integer(-3): ["pow3", "inv"], sympy.Rational(-1, 2): ["sqrt", "inv"]}
  if exponent in special:
    for op in special[exponent]:
      node = Node(op, [node])
    return node
  if base == sympy.E:
    return Node("exp", [_from_sympy(exponent, max_int)])
  return Node("pow", [node, _from_sympy(exponent, max_int)])
