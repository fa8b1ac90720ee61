"""The fit command: symbolic regression of one CSV column on the others with SNIPRegressor.

  launch.py --config=configs/sr.py:fit --workdir=OUT --config.data.csv=FILE \
      --config.data.target=COLUMN --config.model_path=snip-e2e-sr.pth

Rows are split 75/25 (seeded) into train and test; the equation, its train and test R² are
printed, and OUT/results.json (equation, R², the features used, the candidates tried) and
OUT/pred_vs_true.png are written, only once the fit succeeded.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from typing import Any

import numpy as np
from absl import logging

from snip_jax import checks
from snip_jax.data.tabular import read_csv
from snip_jax.errors import UserError
from snip_jax.sr.regressor import SNIPRegressor
from snip_jax.symbolic.refine import fit_scores
from snip_jax.train import plots

RESULTS_FILE = "results.json"
PLOT_FILE = "pred_vs_true.png"
ESTIMATOR_OPTIONS = ("decoding", "n_candidates", "temperature", "max_len", "refine", "lso",
                     "lso_iterations", "lso_pop_size", "lso_samples", "stop_r2", "time_budget",
                      "n_jobs", "refine_per")


def validate_config(config, workdir: str) -> None:
  """The workdir, the CSV (read in full) and the model path, before anything is written."""
  checks.workdir(workdir)
  if not config.model_path or not os.path.exists(config.model_path):
    raise UserError(f"config.model_path={config.model_path!r} does not exist: set it to an SR"
                    " checkpoint (snip-e2e-sr.pth), its converted directory or an SR workdir")
  csv_path = checks.readable(config.data.csv, "config.data.csv", hint="a CSV with a header row")
  if not config.data.target:
    raise UserError("set config.data.target to the column to predict")
  if not 0.0 < config.data.test_fraction < 1.0:
    raise UserError(f"config.data.test_fraction must be in (0, 1), got"
                    f" {config.data.test_fraction}")
  read_csv(csv_path, config.data.target)


def run_fit(config, workdir: str) -> dict[str, Any]:
  """Fit on the train rows, score on the test rows, write the results and the plot."""
  X, y, names = read_csv(pathlib.Path(config.data.csv), config.data.target)
  train, test = _split(len(y), config.data.test_fraction, config.seed)
  options = {k: config.fit[k] for k in ESTIMATOR_OPTIONS}
  options["time_budget"] = options["time_budget"] or None
  start = time.perf_counter()
  with checks.as_user_error(RuntimeError):  # RuntimeError: no valid candidate at all
    reg = SNIPRegressor(config.model_path, random_state=config.seed, **options).fit(
        X[train], y[train])
  results = _results(reg, X, y, names, train, test, time.perf_counter() - start)
  _write(pathlib.Path(workdir), results, y[test], reg.predict(X[test]))
  logging.info("equation: %s | train R2 %.4f, test R2 %.4f (%s)", results["equation"],
               results["train_r2"], results["test_r2"], results["variables"])
  return results


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded train/test row indices (at least one row each)."""
  order = np.random.default_rng(seed).permutation(n)
  n_test = min(max(1, int(round(n * test_fraction))), n - 1)
  return np.sort(order[n_test:]), np.sort(order[:n_test])


def _results(reg: SNIPRegressor, X, y, names, train, test, seconds: float) -> dict[str, Any]:
  """What results.json records."""
  score = lambda rows: fit_scores(y[rows, None], reg.predict(X[rows])[:, None])[1]
  return {"equation": str(reg.sympy_expr()), "infix": reg.equation_,
          "variables": {f"x_{j}": name for j, name in enumerate(names)},
          "selected_features": [names[j] for j in reg.selected_features_],
          "train_r2": score(train), "test_r2": score(test),
          "n_train": int(len(train)), "n_test": int(len(test)), "fit_seconds": seconds,
          "n_invalid_candidates": int(reg.n_invalid_),
          "candidates": [vars(c) for c in reg.candidates_[:20]]}


def _write(workdir: pathlib.Path, results: dict, y_test, prediction) -> None:
  """results.json (written atomically) and the predicted-vs-true plot of the test rows."""
  workdir.mkdir(parents=True, exist_ok=True)
  title = f"test rows: R2 {results['test_r2']:.4f}"
  plots.plot_scatter(y_test, prediction, workdir / PLOT_FILE, title)
  with tempfile.NamedTemporaryFile("w", dir=workdir, delete=False, suffix=".tmp") as f:
    f.write(json.dumps(results, indent=1, default=float) + "\n")
  os.replace(f.name, workdir / RESULTS_FILE)
