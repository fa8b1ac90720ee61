"""Training metrics: metrics.jsonl, TensorBoard, and the progress lines.

`metrics.jsonl` gets one JSON object per train log (step, loss, accuracy_f2y, accuracy_y2f, lr,
grad_norm, temperature, samples_per_s, step_time_s; means over the log interval) and per
evaluation (step and the task's eval metrics); `tensorboard/` the same scalars.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def mean_metrics(fetched: list[dict]) -> dict[str, float]:
  """Means over a log interval of the step metrics (already fetched from the devices)."""
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class MetricWriter:
  """Appends to metrics.jsonl and TensorBoard (process 0 only; others drop the records)."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self.tensorboard_dir = workdir / TENSORBOARD_DIR
    self._tb = None
    if not self.active:
      return
    _drop_records_after(self.path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=resume_step + 1,
                             flush_secs=10)

  def write(self, step: int, record: dict[str, float]) -> None:
    """One JSON line {step, **record} and one TensorBoard scalar per field."""
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **record}) + "\n")
    for key, value in record.items():
      self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    """Flush and close the event file."""
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
  """Forget records a stopped run logged past the checkpoint it resumes from."""
  if not path.exists():
    return
  lines = [line for line in path.read_text().splitlines()
           if line.strip() and _record_step(line, path) <= step]
  path.write_text("".join(line + "\n" for line in lines))


def _record_step(line: str, path: pathlib.Path) -> float:
  """A metrics line's step; inf (dropped) for a line a killed run left half-written."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError):
    logging.warning("dropping an unreadable line of %s (a killed run's last write?): %.80r",
                    path, line)
    return math.inf


def fmt(metrics: dict[str, float]) -> str:
  """`k=v` pairs for a log line."""
  return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def log_progress(step: int, tc, train_log: dict[str, float]) -> None:
  """One progress line: step, epoch, loss (and accuracies), throughput, ETA."""
  eta_s = (tc.num_train_steps - step) * train_log["step_time_s"]
  accuracies = (f" acc f2y {train_log['accuracy_f2y']:.3f} y2f {train_log['accuracy_y2f']:.3f}"
                if "accuracy_f2y" in train_log else "")
  if "token_accuracy" in train_log:
    accuracies = f" token acc {train_log['token_accuracy']:.3f}"
  logging.info("step %d/%d (epoch %.2f) loss %.4f%s lr %.3g | %.1f samples/s, ETA %s", step,
               tc.num_train_steps, step / tc.n_steps_per_epoch, train_log["loss"], accuracies,
               train_log.get("lr", float("nan")), train_log["samples_per_s"],
               time.strftime("%H:%M:%S", time.gmtime(eta_s)) if eta_s < 86400
               else f"{eta_s / 86400:.1f} days")
