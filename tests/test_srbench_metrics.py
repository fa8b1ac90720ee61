"""SRBench metrics against hand-computed values, and the bounded symbolic-solution check."""

import time

import numpy as np
import pytest
import sympy

from snip_jax.srbench import metrics

x, y, z = sympy.symbols("x y z")


def test_r2_and_accuracy_equal_hand_computed_values():
  truth = np.array([1.0, 2.0, 3.0, 4.0])
  # residuals 0, 0, 0, 1 -> SS_res 1; mean 2.5 -> SS_tot 2.25 + 0.25 + 0.25 + 2.25 = 5
  assert metrics.r2_score(truth, np.array([1.0, 2.0, 3.0, 5.0])) == pytest.approx(1 - 1 / 5)
  assert metrics.r2_score(truth, np.array([1.0, np.nan, 3.0, 4.0])) == -np.inf
  r2 = [0.995, 0.9999, None, 0.5, 0.99]  # None: a failed fit; 0.99 is not above 0.99
  assert metrics.accuracy(r2, 0.99) == pytest.approx(2 / 5)
  assert metrics.accuracy(r2, 0.999) == pytest.approx(1 / 5)


def test_rounding_and_size_follow_srbench():
  rounded = metrics.round_floats(sympy.Float(2.00049) * x + sympy.Float(3e-5) * y
                                 + sympy.Float(1.23456) * sympy.sin(sympy.Float(0.9996) * z))
  # 3 decimals; |c| < 1e-4 -> 0; whole numbers as integers (sin(1.0·z) would not be sin(z))
  assert rounded == 2 * x + sympy.Float(1.235) * sympy.sin(z)
  # x*(y + 1): Mul, x, Add, 1, y
  assert metrics.node_count(x * (y + 1)) == 5
  found = metrics.assess(x * y + x + sympy.Float(1e-6) * z)
  assert found["simplified"] == "x*(y + 1)" and found["model_size"] == 5
  assert found["symbolic_solution"] is None and found["status"] == "ok"


@pytest.mark.parametrize("model, truth, solved, why", [
    (x * y + x, x * (y + 1), True, "error is zero"),
    (sympy.Float(2.0001) * sympy.sin(x), 2 * sympy.sin(x), True, "error is zero"),
    (sympy.sin(x), x, False, "not constant"),
    (x * y + 3, x * y, True, "error is constant"),
    (sympy.Float(0.159155) * x * y, x * y / (2 * sympy.pi), True, "fraction is constant"),
    (sympy.Integer(0) * x, x, False, "fraction is constant"),  # 0 never solves
])
def test_symbolic_solution_is_srbenchs_check(model, truth, solved, why):
  found = metrics.assess(model, truth, r2_test=0.99)
  assert found["status"] == "ok"
  assert found["symbolic_solution"] is solved and why in found["symbolic_detail"]


def test_symbolic_solution_is_checked_only_above_r2_one_half():
  found = metrics.assess(x, x, r2_test=0.5)
  assert found["symbolic_solution"] is False and "not checked" in found["symbolic_detail"]


def test_a_pathological_expression_stops_at_the_timeout():
  # sympy.simplify takes minutes on this (measured: > 20 s); the check must give up in time
  slow = (sum(sympy.sin(x * i + y) ** 3 * sympy.cos(z * i - x) ** 2 for i in range(1, 6))
          / (1 + sum(sympy.tan(x + i * y) for i in range(1, 4))))
  start = time.monotonic()
  found = metrics.assess(slow, x, r2_test=1.0, timeout=1.0)
  assert time.monotonic() - start < 5.0
  assert found == {"status": "timeout"}


def test_a_failing_check_is_an_answer_not_an_exception():
  found = metrics.run_in_child(_raises, (), timeout=5.0)
  assert found["status"] == "error: ZeroDivisionError: division by zero"
  assert found["partial"] == 1  # what the child sent before it failed


def _raises():
  yield {"partial": 1}
  yield {"value": 1 / 0}
