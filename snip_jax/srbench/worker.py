"""One benchmark fit, in a worker process: data, split, noise, fit, R², model size, solution.

The runner sends a task as JSON; the worker answers with JSON events: `ready` once it started,
`fitting` when the fit's clock starts, `fitted` (the record so far) when the fit returned,
`assessed` with each part of the model's assessment (its text, size, symbolic solution), and
`done` with the finished record. A method that raises is a failed record, never a dead worker.
The runner kills a worker whose fit runs past its budget (a timeout) or whose sympy work runs
past the symbolic timeout (the record keeps the parts that arrived).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import zlib
from typing import Any, Iterator

import numpy as np

from snip_jax.srbench import metrics, problems
from snip_jax.srbench.methods import METHODS

MAX_MODEL_CHARS = 10_000  # longer model texts are cut in the record (the size is still exact)


def worker_main(connection) -> None:
  """A worker process: single-threaded math libraries, then tasks until the pipe closes."""
  _single_threaded()
  connection.send_bytes(json.dumps({"event": "ready"}).encode())
  try:
    while True:
      task = json.loads(connection.recv_bytes().decode())
      for event in run_task(task):
        connection.send_bytes(json.dumps(event).encode())
  except (EOFError, OSError):  # the runner closed the pipe or is gone: nothing left to do
    return


def _single_threaded() -> None:
  """One thread for BLAS/OpenMP (numpy, scikit-learn) and XLA: workers run side by side."""
  for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[name] = "1"
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      "--xla_cpu_multi_thread_eigen=false",
                                      "intra_op_parallelism_threads=1"]).strip()
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top

  threadpool_limits(1)


def run_task(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """The events of one task (see the module docstring); the last is `done` with the record."""
  record = task_key(task)
  record.update(status="failed", time_budget=task["time_budget"])
  try:
    problem = _problem(task["problem"], task["csv_path"], task["csv_target"])
    data = _fit_data(problem, task)
    record.update(n_train=len(data["y_train"]), n_test=len(data["y_test"]))
    method = METHODS[task["method"]]
    if method.prepare is not None:
      method.prepare(task["options"])
    estimator = method.build(task["time_budget"], task["seed"], task["options"])
    yield {"event": "fitting"}
    start = time.perf_counter()
    estimator.fit(data["X_train"], data["y_train"])
    record["fit_seconds"] = time.perf_counter() - start
    record.update(r2_train=_finite(metrics.r2_score(data["y_train"],
                                                    estimator.predict(data["X_train"]))),
                  r2_test=_finite(metrics.r2_score(data["y_test"],
                                                   estimator.predict(data["X_test"]))),
                  status="ok")
  except Exception as error:  # pylint: disable=broad-except  (one failed fit, the run goes on)
    record["error"] = metrics.error_line(error)
    yield {"event": "done", "record": record}
    return
  yield {"event": "fitted", "record": record}
  for part in _assessment(method, estimator, problem, record["r2_test"]):
    record.update(part)
    yield {"event": "assessed", "part": part}
  yield {"event": "done", "record": record}


def task_key(task: dict[str, Any]) -> dict[str, Any]:
  """The fields that name a task (method, problem, seed, noise) and the problem's group."""
  return {**{k: task[k] for k in ("method", "problem", "seed", "noise")},
          "group": problems.group_of(task["problem"])}


@functools.lru_cache(maxsize=8)
def _problem(name: str, csv_path: str, csv_target: str) -> problems.Problem:
  """A task's problem (cached: the same problem comes for every method, seed and noise)."""
  if name.startswith("csv_"):
    return problems.csv_problem(csv_path, csv_target)
  return problems.load_problem(name)


@functools.lru_cache(maxsize=2)
def _rows(problem: problems.Problem, n_rows: int, data_seed: int):
  """A problem's rows (cached: the same rows serve every method, seed and noise)."""
  return problems.problem_data(problem, n_rows, data_seed)


def _fit_data(problem: problems.Problem, task: dict[str, Any]) -> dict[str, np.ndarray]:
  """SRBench's protocol: a 75/25 split per seed, noise N(0, γ·RMS(y_train)) on y_train only."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  X, y = _rows(problem, task["n_rows"], task["data_seed"])
  train, test = train_test_split(np.arange(len(y)), train_size=0.75, test_size=0.25,
                                 random_state=task["seed"])
  y_train = y[train]
  if task["noise"] > 0:
    rng = np.random.default_rng([task["seed"], zlib.crc32(problem.name.encode())])
    scale = task["noise"] * math.sqrt(float(np.mean(y_train ** 2)))
    y_train = y_train + rng.normal(0.0, scale, size=len(y_train))
  return {"X_train": X[train], "y_train": y_train, "X_test": X[test], "y_test": y[test]}


def _assessment(method, estimator, problem: problems.Problem, r2_test) -> Iterator[dict]:
  """Record fields, part by part: the model's text, its SRBench size, its symbolic solution."""
  try:
    model = method.to_sympy(estimator, problem.symbols)
    yield {"model": str(model)[:MAX_MODEL_CHARS]}
    for part in metrics.assessment(model, problem.truth,
                                   -math.inf if r2_test is None else r2_test):
      yield {("assess_status" if k == "status" else k): v for k, v in part.items()}
  except Exception as error:  # pylint: disable=broad-except  (an unreadable model, not a crash)
    yield {"assess_status": f"error: {metrics.error_line(error)}"}


def _finite(value: float):
  """A float for JSON, None for NaN/inf (an R² of predictions that are not all finite)."""
  return value if math.isfinite(value) else None
