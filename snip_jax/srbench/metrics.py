"""SRBench's metrics: test R², accuracy at R² thresholds, model size and the symbolic solution.

Model size is the node count of the model after SRBench's cleaning (floats rounded, then
`sympy.simplify(ratio=1)`). The symbolic solution is SRBench's check (assess_symbolic_model.py):
with the truth's pi written as 3.1415926535 and its floats rounded, the model solves the problem
when truth − model is zero or a constant, or model / truth is a constant, and the cleaned model
is not 0 or nan; it is checked only when test R² > 0.5, as SRBench does. sympy can take
unbounded time on some expressions, so `assess` runs the cleaning and the check in a forked
child process that is killed after `timeout` seconds (its answers come back as JSON over a
pipe); the benchmark runs `assessment` in its worker process, which the runner kills instead.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from snip_jax.symbolic.refine import fit_scores

R2_THRESHOLDS = (0.99, 0.999)
CHECK_MIN_R2 = 0.5  # SRBench checks symbolic solutions only above this test R²
SRBENCH_PI = "3.1415926535"  # how SRBench writes pi in the true models


def r2_score(y: np.ndarray, prediction: np.ndarray) -> float:
  """R² of a prediction (sklearn's definition); −inf if any prediction is not finite."""
  return fit_scores(np.asarray(y)[:, None], np.asarray(prediction)[:, None])[1]


def accuracy(r2_values: Iterable[Optional[float]], threshold: float) -> float:
  """The share of R² values above `threshold` (a missing R², a failed fit, counts as below)."""
  values = [-np.inf if v is None else v for v in r2_values]
  return float(np.mean([v > threshold for v in values])) if values else float("nan")


def round_floats(expr):
  """SRBench's rounding: floats under 1e-4 in magnitude become 0, others keep 3 decimals.

  Two deviations from SRBench's code, both so that rounding does what it is for: a rounded
  whole number becomes an integer (sympy never equates sin(1.0·θ) with sin(θ)), and the
  others stay double-precision Floats (SRBench's `Float(round(a, 3), 3)` has 3 digits of
  precision, whose binary error can undo a match when the check rounds again).
  """
  import sympy  # pylint: disable=g-import-not-at-top

  floats = {a for a in sympy.preorder_traversal(expr) if isinstance(a, sympy.Float)}
  return expr.xreplace({a: _rounded(float(a)) for a in floats})


def _rounded(value: float):
  """A float rounded as SRBench does, as a sympy Integer when that is a whole number."""
  import sympy  # pylint: disable=g-import-not-at-top

  rounded = 0.0 if abs(value) < 1e-4 else round(value, 3)
  if not math.isfinite(rounded):
    return sympy.Float(rounded)
  return sympy.Integer(int(rounded)) if rounded == int(rounded) else sympy.Float(rounded)


def node_count(expr) -> int:
  """SRBench's complexity: the nodes of the expression tree (sympy's preorder traversal)."""
  import sympy  # pylint: disable=g-import-not-at-top

  return sum(1 for _ in sympy.preorder_traversal(expr))


def assess(model, truth=None, r2_test: float = 1.0, timeout: float = 60.0) -> dict[str, Any]:
  """SRBench's cleaning (size) and symbolic check of `model`, given up after `timeout` s.

  Returns `status` (ok, timeout or `error: ...`), and what finished in time: `simplified`
  (the cleaned model's text), `model_size`, `symbolic_solution` (None without a truth) and
  `symbolic_detail` (which condition held, or why nothing was checked).
  """
  return run_in_child(assessment, (model, truth, r2_test), timeout)


def run_in_child(stages, args: tuple, timeout: float) -> dict[str, Any]:
  """Run the generator `stages(*args)` in a forked child; merge the dicts it yields in time.

  The child inherits `args` (nothing is pickled); each yielded dict comes back as JSON. The
  last one carries `status`; if it is not there after `timeout` s, the child is killed and the
  result has status `timeout` (or `error: ...` if the child died).
  """
  context = multiprocessing.get_context("fork")
  receive, send = context.Pipe(duplex=False)
  child = context.Process(target=_answer, args=(send, stages, args), daemon=True)
  child.start()
  send.close()
  result, deadline = {}, time.monotonic() + timeout
  try:
    while "status" not in result:
      if not receive.poll(max(0.0, deadline - time.monotonic())):
        result["status"] = "timeout"
      else:
        result.update(json.loads(receive.recv_bytes().decode()))
  except EOFError:
    result["status"] = f"error: the sympy process died (exit code {child.exitcode})"
  finally:
    if child.is_alive():
      child.kill()
    child.join()
    receive.close()
  return result


def _answer(send, stages, args: tuple) -> None:
  """The child's side of run_in_child: each stage's dict as JSON, an exception as status."""
  try:
    for part in stages(*args):
      send.send_bytes(json.dumps(part).encode())
  except Exception as error:  # pylint: disable=broad-except  (any sympy failure is an answer)
    send.send_bytes(json.dumps({"status": f"error: {error_line(error)}"}).encode())


def error_line(error: BaseException) -> str:
  """An exception as one short line: its type and message."""
  return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def assessment(model, truth, r2_test: float) -> Iterator[dict[str, Any]]:
  """The stages of `assess`, unbounded: the cleaned model and its size, then the check; the
  last dict has `status`."""
  import sympy  # pylint: disable=g-import-not-at-top

  cleaned = sympy.simplify(round_floats(model), ratio=1)
  yield {"simplified": str(cleaned), "model_size": node_count(cleaned)}
  if truth is None:
    yield {"status": "ok", "symbolic_solution": None, "symbolic_detail": "no ground truth"}
    return
  if not r2_test > CHECK_MIN_R2:
    yield {"status": "ok", "symbolic_solution": False,
           "symbolic_detail": f"not checked: test R2 <= {CHECK_MIN_R2}"}
    return
  holds = _symbolic_conditions(cleaned, truth)
  solved = bool(holds) and str(cleaned) not in ("0", "nan")
  yield {"status": "ok", "symbolic_solution": solved,
         "symbolic_detail": ", ".join(holds) or "difference and ratio not constant"}


def _symbolic_conditions(cleaned, truth) -> list[str]:
  """Which of SRBench's conditions hold: error is zero / constant, fraction is constant."""
  import sympy  # pylint: disable=g-import-not-at-top

  true_model = round_floats(truth.subs(sympy.pi, sympy.Float(SRBENCH_PI)))
  difference = round_floats(true_model - cleaned)
  fraction = round_floats(cleaned / true_model)
  if not difference.is_constant() or fraction.is_constant():
    difference = sympy.simplify(difference, ratio=1)
  conditions = {"error is zero": str(difference) == "0",
                "error is constant": bool(difference.is_constant()),
                "fraction is constant": bool(fraction.is_constant())}
  return [name for name, holds in conditions.items() if holds]
