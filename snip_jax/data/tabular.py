"""Tabular user data: a CSV with a header row -> (X, y, names); numeric arrays -> clean (X, y).

Shared by the fit command, the SRBench harness and retrieval queries: every problem with a
user's table is one clear error naming it (the file, row and column), never a crash halfway.
"""

from __future__ import annotations

import csv
import math
import pathlib

import numpy as np
from absl import logging

from snip_jax.errors import UserError


def read_csv(path: pathlib.Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(X, y, feature names) of a CSV with a header row; empty cells are NaN (rows dropped later)."""
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if not rows or not rows[0]:
    raise UserError(f"{path} is empty: it needs a header row and data rows")
  header, body = [h.strip() for h in rows[0]], rows[1:]
  if target not in header:
    raise UserError(f"{path} has no column {target!r}; its columns: {', '.join(header)}")
  values = np.empty((len(body), len(header)))
  for r, row in enumerate(body, start=2):
    if len(row) != len(header):
      raise UserError(f"{path}:{r}: {len(row)} cells, the header has {len(header)}")
    for c, cell in enumerate(row):
      values[r - 2, c] = _number(cell, path, r, header[c])
  t = header.index(target)
  return np.delete(values, t, axis=1), values[:, t], header[:t] + header[t + 1:]


def _number(cell: str, path: pathlib.Path, row: int, column: str) -> float:
  """A cell as a float (empty: NaN); a UserError naming the cell otherwise."""
  if not cell.strip():
    return math.nan
  try:
    return float(cell)
  except ValueError:
    raise UserError(f"{path}:{row}: column {column!r} holds {cell[:40]!r}, not a number; drop"
                    " or encode non-numeric columns first") from None


def clean_data(X, y) -> tuple[np.ndarray, np.ndarray]:
  """Float64 X [n, d], y [n] without NaN/inf rows; ValueError naming any other problem."""
  try:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise ValueError(f"X and y must be numeric ({err}); convert or drop non-numeric columns")
  X = X[:, None] if X.ndim == 1 else X
  if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
    raise ValueError(f"X must be [n_samples, n_features] and y [n_samples]; got X {X.shape},"
                     f" y {y.shape}")
  finite = np.isfinite(X).all(axis=1) & np.isfinite(y)
  if not finite.all():
    logging.warning("dropping %d of %d rows with NaN/inf values", (~finite).sum(), len(y))
    X, y = X[finite], y[finite]
  if len(y) < 2:
    raise ValueError(f"need at least 2 rows with finite values, got {len(y)}")
  if np.ptp(y) == 0:
    raise ValueError("y is constant: R² is undefined and there is nothing to regress")
  return X, y
