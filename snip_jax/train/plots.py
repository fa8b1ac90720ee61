"""PNG plots: a training workdir's metrics.jsonl (loss, accuracy or R^2, optimizer), and
predicted-vs-true scatter plots.

  python -m snip_jax.train.plots --workdir DIR     # writes DIR/plots/*.png
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np
from absl import app, flags, logging

# (file name, title, [(metrics.jsonl key, label)]) of each figure.
FIGURES = (
    ("loss.png", "loss (CLIP, or MSE for property prediction)",
     [("loss", "train"), ("eval_loss", "eval")]),
    ("accuracy.png", "top-1 retrieval accuracy",
     [("accuracy_f2y", "train f->y (in batch)"), ("accuracy_y2f", "train y->f (in batch)"),
      ("eval_accuracy_f2y", "eval f->y (all eval samples)"),
      ("eval_accuracy_y2f", "eval y->f (all eval samples)")]),
    ("regression.png", "held-out property prediction",
     [("eval_r2", "eval R^2"), ("eval_nmse", "eval NMSE")]),
    ("equations.png", "symbolic regression",
     [("token_accuracy", "train token accuracy"), ("eval_token_accuracy", "eval token accuracy"),
      ("eval_r2_above_0.99", "eval greedy R^2 > 0.99")]),
    ("optimizer.png", "optimizer", [("lr", "learning rate"), ("grad_norm", "grad norm"),
                                    ("temperature", "temperature")]),
    ("throughput.png", "throughput", [("samples_per_s", "samples/s")]),
)


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the records that have `key`."""
  points = [(r["step"], r[key]) for r in records if key in r]
  return [s for s, _ in points], [v for _, v in points]


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def plot_scatter(y_true, y_pred, path: pathlib.Path, title: str) -> pathlib.Path:
  """Predicted against true values with the identity line (non-finite predictions left out)."""
  plt = pyplot()
  finite = np.isfinite(y_pred)
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.scatter(y_true[finite], y_pred[finite], s=6, alpha=0.5)
  values = np.concatenate([y_true, y_pred[finite]])
  ax.plot([values.min(), values.max()], [values.min(), values.max()], color="black", lw=1)
  ax.set_xlabel("true")
  ax.set_ylabel("predicted")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_workdir(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """Write one PNG per figure with data into workdir/plots; returns their paths."""
  plt = pyplot()
  workdir = pathlib.Path(workdir)
  metrics_path = workdir / "metrics.jsonl"
  if not metrics_path.exists():
    raise FileNotFoundError(f"{metrics_path} does not exist: is {workdir} a training workdir?")
  records = read_metrics(metrics_path)
  out_dir = workdir / "plots"
  out_dir.mkdir(exist_ok=True)
  paths = []
  for name, title, curves in FIGURES:
    series = [(label, *_series(records, key)) for key, label in curves]
    series = [s for s in series if s[1]]
    if not series:
      continue
    rows = len(series) if name == "optimizer.png" else 1  # different scales: one axis each
    fig, axes = plt.subplots(rows, 1, squeeze=False, figsize=(7, 2.5 * rows + 1.5))
    for i, (label, steps, values) in enumerate(series):
      ax = axes[min(i, rows - 1)][0]
      ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=label)
      ax.set_xlabel("step")
      ax.legend()
      ax.grid(alpha=0.3)
    axes[0][0].set_title(title)
    fig.tight_layout()
    path = out_dir / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  paths = plot_workdir(flags.FLAGS.workdir)
  logging.info("wrote %d plots", len(paths))
  for path in paths:
    print(path)


if __name__ == "__main__":
  # Defined here, not at import: launch.py, which imports this module, has its own --workdir.
  flags.DEFINE_string("workdir", None, "Training workdir holding metrics.jsonl.")
  flags.mark_flag_as_required("workdir")
  app.run(main)
