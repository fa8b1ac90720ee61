"""Constant refinement: BFGS over an expression's float constants, as the original SR search does.

The original (`BFGSRefinement.go`, called by `const_opt.refine`) minimises
0.5·mean((y − f(X; c))²) over the skeleton's constants with scipy's BFGS in float64, starting
from the decoded values, on the first 1024 rows. Here the tree is compiled once per candidate
into a flat program evaluated with numpy over all rows at once; the gradient with respect to
every constant comes from one reverse-mode pass over the cached node values. Subtrees without
constants are computed once, at compile time.

Constants are the non-integer numeric leaves (integers, `pi`, `e` and variables stay fixed, as
in the original's `function_to_skeleton`) and `CONSTANT` placeholders, in prefix order. A unary
operator directly above a float constant is folded into it (`sin(2.5)` is one constant), as
`function_to_skeleton` does; the folded constant starts at the unary's value, not at the bare
leaf's value as in the original, so the start is the decoded expression itself.

Fixes against the original (documented in the result, never silent): the best point of all
evaluations is returned (the original's `TimedFun` always takes the 2nd evaluation over the
1st); a time or iteration cap returns the best point with status `time_limit` / `max_iter`
(the original raises "Time is over." and the candidate is lost); a start whose objective is not
finite is returned unrefined with status `not_finite`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Optional, Sequence

import joblib
import numpy as np
from scipy import optimize

from snip_jax.symbolic.trees import Expression, Node, is_integer_text, is_number, parse_prefix

STATUSES = ("converged", "max_iter", "time_limit", "stalled", "not_finite", "invalid")

_LN2 = np.log(2.0)
_LN10 = np.log(10.0)


def _nan_where(mask, a):
  return np.where(mask, np.nan, a)


def _div(a, b):
  return a / _nan_where(b == 0.0, b)


def _log_like(fn):
  return lambda a: fn(_nan_where(a <= 0.0, a))


# name -> (forward(a), backward(a, value, adjoint) -> adjoint of a); NaN semantics as in
# `Expression.evaluate` (division by zero and log/sqrt of invalid inputs give NaN).
_UNARY = {
    "abs": (np.abs, lambda a, v, g: g * np.sign(a)),
    "inv": (lambda a: _div(1.0, a), lambda a, v, g: -g * v * v),
    "reciprocal": (lambda a: _div(1.0, a), lambda a, v, g: -g * v * v),
    "sqrt": (lambda a: np.sqrt(_nan_where(a < 0.0, a)), lambda a, v, g: g * 0.5 / v),
    "log": (_log_like(np.log), lambda a, v, g: g / a),
    "log2": (_log_like(np.log2), lambda a, v, g: g / (a * _LN2)),
    "log10": (_log_like(np.log10), lambda a, v, g: g / (a * _LN10)),
    "exp": (np.exp, lambda a, v, g: g * v),
    "exp2": (np.exp2, lambda a, v, g: g * v * _LN2),
    "sin": (np.sin, lambda a, v, g: g * np.cos(a)),
    "cos": (np.cos, lambda a, v, g: -g * np.sin(a)),
    "tan": (np.tan, lambda a, v, g: g * (1.0 + v * v)),
    "arcsin": (np.arcsin, lambda a, v, g: g / np.sqrt(1.0 - a * a)),
    "arccos": (np.arccos, lambda a, v, g: -g / np.sqrt(1.0 - a * a)),
    "arctan": (np.arctan, lambda a, v, g: g / (1.0 + a * a)),
    "sinh": (np.sinh, lambda a, v, g: g * np.cosh(a)),
    "cosh": (np.cosh, lambda a, v, g: g * np.sinh(a)),
    "tanh": (np.tanh, lambda a, v, g: g * (1.0 - v * v)),
    "arcsinh": (np.arcsinh, lambda a, v, g: g / np.sqrt(a * a + 1.0)),
    "arccosh": (np.arccosh, lambda a, v, g: g / np.sqrt(a * a - 1.0)),
    "arctanh": (np.arctanh, lambda a, v, g: g / (1.0 - a * a)),
    "pow2": (lambda a: a * a, lambda a, v, g: 2.0 * g * a),
    "square": (lambda a: a * a, lambda a, v, g: 2.0 * g * a),
    "pow3": (lambda a: a * a * a, lambda a, v, g: 3.0 * g * a * a),
    "cbrt": (np.cbrt, lambda a, v, g: g / (3.0 * v * v)),
    "sign": (lambda a: (a >= 0) * 2.0 - 1.0, lambda a, v, g: 0.0 * g),
}


def _pow_grad_exponent(a, b, v, g):
  """d(a**b)/db = a**b·log|a|, taken as 0 where the power is 0."""
  return g * np.where(v == 0.0, 0.0, v * np.log(np.abs(a)))


# name -> (forward(a, b), adjoint of a, adjoint of b), each adjoint a function of
# (a, b, value, adjoint of the node); only the ones of children with constants are computed.
_BINARY = {
    "add": (np.add, lambda a, b, v, g: g, lambda a, b, v, g: g),
    "sub": (np.subtract, lambda a, b, v, g: g, lambda a, b, v, g: -g),
    "mul": (np.multiply, lambda a, b, v, g: g * b, lambda a, b, v, g: g * a),
    "div": (_div, lambda a, b, v, g: g / b, lambda a, b, v, g: -g * v / b),
    "pow": (np.power, lambda a, b, v, g: g * b * np.power(a, b - 1.0), _pow_grad_exponent),
    "max": (np.maximum, lambda a, b, v, g: g * (a >= b), lambda a, b, v, g: g * (a < b)),
    "min": (np.minimum, lambda a, b, v, g: g * (a <= b), lambda a, b, v, g: g * (a > b)),
}

SUPPORTED_OPERATORS = tuple(sorted(set(_UNARY) | set(_BINARY)))


@dataclasses.dataclass
class RefineResult:
  """One refined candidate; mse and r2 are over all rows given, the objective over the fit rows.

  status: `converged` (scipy's gradient test), `max_iter` (iteration or evaluation cap),
  `time_limit`, `stalled` (BFGS stopped early, e.g. its line search failed), `not_finite` (the
  start's objective is NaN/inf: returned unrefined, objective inf) or `invalid` (`refine_many`
  only: the candidate could not be compiled; `message` says why). Non-finite predictions give
  mse inf and r2 −inf, so results rank by r2 without NaN.
  """

  expression: Expression
  constants: np.ndarray
  objective: float
  mse: float
  r2: float
  n_evals: int
  status: str
  seconds: float
  message: str = ""


class _Stop(Exception):
  """Raised inside the objective to end a BFGS run at a cap."""

  def __init__(self, status: str):
    super().__init__(status)
    self.status = status


def _is_float_literal(token: str) -> bool:
  return is_number(token) and not is_integer_text(token)


def _is_constant_leaf(node: Node) -> bool:
  return not node.children and (_is_float_literal(node.value) or node.value.startswith("CONSTANT"))


def _fold(node: Node) -> Node:
  """A copy of the tree where unaries directly above float literals are evaluated into them."""
  children = [_fold(c) for c in node.children]
  if len(children) == 1 and node.value in _UNARY and _is_float_literal(children[0].value):
    with np.errstate(all="ignore"):
      value = _UNARY[node.value][0](np.float64(children[0].value))
    return Node(repr(float(value)))
  return Node(node.value, children)


def _constant_leaves(nodes: Sequence[Node]) -> list[Node]:
  """Constant leaves in prefix order."""
  out = []
  stack = list(reversed(nodes))
  while stack:
    node = stack.pop()
    if _is_constant_leaf(node):
      out.append(node)
    stack.extend(reversed(node.children))
  return out


def _leaf_value(value: str, x: np.ndarray):
  if value.startswith("x_"):
    dim = int(value[2:])
    if dim >= x.shape[1]:
      raise ValueError(f"expression uses {value} but the points have {x.shape[1]} columns")
    return x[:, dim]
  if value in ("e", "pi", "euler_gamma"):
    return np.float64(getattr(np, value))
  if value == "rand":
    return np.float64(0.0)
  return np.float64(value)


class _Program:
  """A tree compiled for fixed rows: static slots precomputed, the rest a flat instruction list."""

  def __init__(self, nodes: Sequence[Node], x: np.ndarray, y: np.ndarray):
    self.params = {id(leaf): j for j, leaf in enumerate(_constant_leaves(nodes))}
    self.values: list = []
    self.dynamic: list[bool] = []
    self.code: list[tuple] = []
    with np.errstate(all="ignore"):
      self.outputs = [self._emit(node, x) for node in nodes]
    self.y = [y[:, k] for k in range(y.shape[1])]
    self.scale = 1.0 / y.size

  def _slot(self, value, dynamic: bool) -> int:
    self.values.append(value)
    self.dynamic.append(dynamic)
    return len(self.values) - 1

  def _emit(self, node: Node, x: np.ndarray) -> int:
    """Compile one subtree (post-order); returns its slot."""
    if not node.children:
      j = self.params.get(id(node))
      if j is None:
        return self._slot(_leaf_value(node.value, x), False)
      slot = self._slot(None, True)
      self.code.append((None, None, None, slot, j, -1))
      return slot
    table = _BINARY if len(node.children) == 2 else _UNARY
    if node.value not in table:
      raise ValueError(f"cannot refine through operator {node.value!r}: supported are "
                       f"{', '.join(SUPPORTED_OPERATORS)}")
    forward, *grads = table[node.value]
    args = [self._emit(c, x) for c in node.children]
    if not any(self.dynamic[a] for a in args):
      return self._slot(forward(*[self.values[a] for a in args]), False)
    slot = self._slot(None, True)
    a, b = args[0], (args[1] if len(args) == 2 else -1)
    grad_a = grads[0] if self.dynamic[a] else None
    grad_b = grads[1] if b >= 0 and self.dynamic[b] else None
    self.code.append((forward, grad_a, grad_b, slot, a, b))
    return slot

  def forward(self, c: np.ndarray) -> list:
    """Values of every slot at constants `c`."""
    vals = list(self.values)
    for forward, _, _, out, a, b in self.code:
      if forward is None:
        vals[out] = c[a]
      elif b < 0:
        vals[out] = forward(vals[a])
      else:
        vals[out] = forward(vals[a], vals[b])
    return vals

  def value_and_grad(self, c: np.ndarray) -> tuple[float, np.ndarray]:
    """0.5·mean squared residual and its gradient by one reverse pass."""
    with np.errstate(all="ignore"):
      vals = self.forward(c)
      adj: list = [None] * len(vals)
      total = 0.0
      for y, o in zip(self.y, self.outputs):
        residual = vals[o] - y
        total += float(residual.dot(residual))
        if self.dynamic[o]:
          adj[o] = self.scale * residual
      return 0.5 * self.scale * total, self._backward(vals, adj, len(c))

  def _backward(self, vals: list, adj: list, n_params: int) -> np.ndarray:
    """Adjoints from the outputs down to the constants (each node has one parent)."""
    grad = np.zeros(n_params)
    for forward, grad_a, grad_b, out, a, b in reversed(self.code):
      g = adj[out]
      if forward is None:
        grad[a] += g.sum()
      elif b < 0:
        adj[a] = grad_a(vals[a], vals[out], g)
      else:
        if grad_a is not None:
          adj[a] = grad_a(vals[a], vals[b], vals[out], g)
        if grad_b is not None:
          adj[b] = grad_b(vals[a], vals[b], vals[out], g)
    return grad


class _Tracker:
  """Objective for scipy: counts evaluations, enforces the caps, remembers the best point."""

  def __init__(self, program: _Program, deadline: float, max_evals: int):
    self.program = program
    self.deadline = deadline
    self.max_evals = max_evals
    self.n_evals = 0
    self.best_f = np.inf
    self.best_c: Optional[np.ndarray] = None

  def __call__(self, c: np.ndarray) -> tuple[float, np.ndarray]:
    if self.n_evals >= self.max_evals:
      raise _Stop("max_iter")
    if time.perf_counter() > self.deadline:
      raise _Stop("time_limit")
    self.n_evals += 1
    f, g = self.program.value_and_grad(c)
    if not np.isfinite(f):
      return np.inf, np.zeros_like(c)
    if f < self.best_f:
      self.best_f, self.best_c = f, np.array(c, dtype=np.float64)
    return f, g


def _bfgs_run(tracker: _Tracker, c0: np.ndarray, max_iter: Optional[int], gtol: float) -> str:
  """One scipy BFGS run from c0; returns its status (the best point stays in the tracker)."""
  options = {"gtol": gtol}
  if max_iter is not None:
    options["maxiter"] = max_iter
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      result = optimize.minimize(tracker, c0, jac=True, method="BFGS", options=options)
  except _Stop as stop:
    return stop.status
  return {0: "converged", 1: "max_iter"}.get(result.status, "stalled")


def _restart_start(c0: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
  """c0 perturbed multiplicatively, c·(1 + scale·z); zero constants get scale·z."""
  z = rng.standard_normal(c0.shape)
  return c0 + scale * z * np.where(c0 == 0.0, 1.0, np.abs(c0))


def _as_expression(expr) -> Expression:
  if isinstance(expr, Expression):
    return expr
  if isinstance(expr, Node):
    return Expression([expr])
  return parse_prefix(expr)


def _as_data(x, y) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if y.ndim == 1:
    y = y[:, None]
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
    raise ValueError(f"need x [n, d] and y [n] or [n, k] with n ≥ 1; got {x.shape}, {y.shape}")
  return x, y


def _start_values(leaves: list[Node], init) -> np.ndarray:
  """The decoded constants, or `init` (required when the tree has CONSTANT placeholders)."""
  if init is not None:
    c0 = np.array(init, dtype=np.float64).reshape(-1)
    if c0.size != len(leaves):
      raise ValueError(f"init has {c0.size} values but the expression has {len(leaves)} constants")
    return c0
  if any(leaf.value.startswith("CONSTANT") for leaf in leaves):
    raise ValueError("the expression has CONSTANT placeholders: pass their start values as init")
  return np.array([float(leaf.value) for leaf in leaves], dtype=np.float64)


def _with_constants(nodes: Sequence[Node], constants: np.ndarray) -> Expression:
  """A copy of the trees with the constant leaves set to `constants` (prefix order)."""
  expr = Expression(nodes).copy()
  for leaf, value in zip(_constant_leaves(expr.nodes), constants):
    leaf.value = repr(float(value))
  return expr


def _scores(expr: Expression, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """(mse, r2) of `expr` over all rows (see fit_scores)."""
  return fit_scores(y, expr.evaluate(x))


def fit_scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
  """(mse, r2) of predictions [n, k] of y [n, k]; r2 as sklearn (averaged over outputs);
  (inf, −inf) if any prediction is not finite; residuals too large to square give the same."""
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  if not np.all(np.isfinite(pred)):
    return np.inf, -np.inf
  with np.errstate(over="ignore", invalid="ignore"):
    ss_res = np.sum((y - pred) ** 2, axis=0)
    ss_tot = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    safe_tot = np.where(ss_tot == 0.0, 1.0, ss_tot)
    r2 = np.where(ss_tot == 0.0, np.where(ss_res == 0.0, 1.0, 0.0), 1.0 - ss_res / safe_tot)
    r2 = np.where(np.isnan(r2), -np.inf, r2)
    return float(np.mean((y - pred) ** 2)), float(np.mean(r2))


def _search(tracker: _Tracker, c0: np.ndarray, max_iter: Optional[int], gtol: float,
            restarts: int, restart_scale: float, rng: np.random.Generator) -> str:
  """BFGS from c0, then from `restarts` perturbed starts; the status of the run that won."""
  f0, _ = tracker.program.value_and_grad(c0)
  tracker.n_evals += 1
  if not np.isfinite(f0):
    return "not_finite"
  tracker.best_f, tracker.best_c = f0, c0.copy()
  if c0.size == 0:
    return "converged"
  status = "converged"
  for attempt in range(restarts + 1):
    start = c0 if attempt == 0 else _restart_start(c0, rng, restart_scale)
    before = tracker.best_f
    run_status = _bfgs_run(tracker, start, max_iter, gtol)
    if attempt == 0 or tracker.best_f < before:
      status = run_status
    if run_status == "time_limit":
      return run_status
  return status


def objective_and_gradient(expr, x, y, constants=None, *, max_rows: int = 1024,
                           fold_unary_constants: bool = True) -> tuple[float, np.ndarray]:
  """The refinement objective 0.5·mean((y − f)²) and its gradient w.r.t. the constants."""
  _, c, program = _prepare(expr, x, y, constants, max_rows, fold_unary_constants)
  return program.value_and_grad(c)


def _prepare(expr, x: np.ndarray, y: np.ndarray, init, max_rows: int, fold: bool):
  """(trees with constants folded, start constants, program on the first max_rows rows)."""
  expr = _as_expression(expr)
  x, y = _as_data(x, y)
  if y.shape[1] != expr.output_dimension:
    raise ValueError(f"y has {y.shape[1]} columns but the expression {expr.output_dimension}"
                     " outputs")
  nodes = [_fold(n) for n in expr.nodes] if fold else expr.copy().nodes
  c0 = _start_values(_constant_leaves(nodes), init)
  return nodes, c0, _Program(nodes, x[:max_rows], y[:max_rows])


def refine_constants(expr, x, y, *, init=None, max_rows: int = 1024,
                     max_iter: Optional[int] = None, max_evals: Optional[int] = None,
                     time_limit: Optional[float] = None, restarts: int = 0,
                     restart_scale: float = 0.5, seed=0, gtol: float = 1e-5,
                     fold_unary_constants: bool = True) -> RefineResult:
  """BFGS over the float constants of `expr` (Expression, Node or prefix) to fit y ≈ f(x).

  The objective 0.5·mean((y − f)²) uses the first `max_rows` rows (the original's 1024);
  `mse` and `r2` of the result use all rows. `max_iter` caps BFGS iterations per run,
  `max_evals` objective evaluations and `time_limit` seconds for all runs together; at a
  cap the best point seen is returned. `init` overrides the start values (needed for
  `CONSTANT` placeholders). `restarts` extra runs start from the start values perturbed by
  `restart_scale` (`seed`: an int or a numpy Generator); the best point wins. `gtol` is
  scipy's gradient tolerance (its default, as the original). Raises ValueError for an
  unsupported operator or malformed input.
  """
  start_time = time.perf_counter()
  x, y = _as_data(x, y)
  nodes, c0, program = _prepare(expr, x, y, init, max_rows, fold_unary_constants)
  deadline = np.inf if time_limit is None else start_time + time_limit
  tracker = _Tracker(program, deadline, np.inf if max_evals is None else max_evals)
  status = _search(tracker, c0, max_iter, gtol, restarts, restart_scale,
                   np.random.default_rng(seed))
  best = c0 if tracker.best_c is None else tracker.best_c
  refined = _with_constants(nodes, best)
  mse, r2 = _scores(refined, x, y)
  return RefineResult(expression=refined, constants=best, objective=float(tracker.best_f),
                      mse=mse, r2=r2, n_evals=tracker.n_evals, status=status,
                      seconds=time.perf_counter() - start_time)


def refine_many(exprs: Sequence, x, y, *, inits: Optional[Sequence] = None,
                total_time_limit: Optional[float] = None, n_jobs: int = 1,
                **options) -> list[RefineResult]:
  """`refine_constants` for every candidate, one result each, in order: none is dropped.

  A candidate that cannot be refined (unparsable, unsupported operator, wrong columns) gets
  status `invalid` with the reason in `message`. `total_time_limit` bounds the whole call:
  once it is spent, later candidates are scored at their start with status `time_limit`.
  `n_jobs` > 1 refines in that many worker processes (joblib's loky workers: started once,
  reused, one BLAS thread each); each candidate's result is the same as in one process.
  """
  x, y = _as_data(x, y)
  deadline = None if total_time_limit is None else time.time() + total_time_limit
  inits = [None] * len(exprs) if inits is None else list(inits)
  if n_jobs <= 1 or len(exprs) < 2:
    return _refine_chunk(list(exprs), inits, x, y, deadline, options)
  n_chunks = min(len(exprs), 4 * n_jobs)  # interleaved chunks: similar sizes, few messages
  chunks = [range(start, len(exprs), n_chunks) for start in range(n_chunks)]
  done = joblib.Parallel(n_jobs=n_jobs)(
      joblib.delayed(_refine_chunk)([exprs[i] for i in chunk], [inits[i] for i in chunk], x, y,
                                    deadline, options) for chunk in chunks)
  results: list = [None] * len(exprs)
  for chunk, chunk_results in zip(chunks, done):
    for i, result in zip(chunk, chunk_results):
      results[i] = result
  return results


def _refine_chunk(exprs: list, inits: list, x: np.ndarray, y: np.ndarray,
                  deadline: Optional[float], options: dict) -> list[RefineResult]:
  """`refine_many`'s work for some candidates, in one process, until the wall-clock deadline."""
  per_candidate = options.get("time_limit")
  options = {k: v for k, v in options.items() if k != "time_limit"}
  results = []
  for expr, init in zip(exprs, inits):
    limit = per_candidate
    if deadline is not None:
      left = max(0.0, deadline - time.time())
      limit = left if limit is None else min(limit, left)
    try:
      results.append(refine_constants(expr, x, y, init=init, time_limit=limit, **options))
    except ValueError as err:
      results.append(_invalid(expr, str(err)))
  return results


def _invalid(expr, message: str) -> RefineResult:
  expression = expr if isinstance(expr, Expression) else None
  return RefineResult(expression=expression, constants=np.zeros(0), objective=np.inf,
                      mse=np.inf, r2=-np.inf, n_evals=0, status="invalid", seconds=0.0,
                      message=message)
