"""The report of a benchmark workdir: summary.md and plots, from its results.jsonl.

Rows are (problem group, noise level, method) over every recorded fit (problems × seeds): the
median test R², the accuracy (share of fits with test R² > 0.99 and > 0.999), the symbolic
solution rate, the median model size and the median fit time. A failed or timed-out fit counts
as R² = −∞ (not accurate, not solved); sizes and times are medians over the fits that have one.
The published SNIP figures appear as reference rows, marked as published, not measured here.
"""

from __future__ import annotations

import collections
import os
import pathlib
import statistics
import tempfile
from typing import Any, Optional, Sequence

import numpy as np

import snip_jax
from snip_jax.srbench import metrics

SUMMARY_FILE = "summary.md"
PLOT_FILES = ("r2_accuracy.png", "pareto.png", "time.png")
# Meidani et al., SNIP (ICLR 2024), SRBench results: reported there, not measured here.
PUBLISHED_SNIP = {
    "feynman": {"median_r2": 0.995, "acc_0.99": 0.882, "size": "~32 (mean tokens)",
                "seconds": 73.0},
    "strogatz": {"acc_0.99": 0.929},
}
PUBLISHED_NOTE = ("SNIP (published)* rows: Meidani et al., SNIP (ICLR 2024), as reported on"
                  " SRBench, not measured here; size there is the mean expression length in"
                  " tokens, time the median search time. Also reported: median R² 0.873 on 55"
                  " black-box problems.")


def write_report(workdir: pathlib.Path, records: Sequence[dict[str, Any]],
                 time_budget: float) -> dict[str, Any]:
  """summary.md and the plots of `records`; returns their paths."""
  rows = summarise(records)
  write_atomically(workdir / SUMMARY_FILE, summary_markdown(rows, records, time_budget))
  plots = _plots(workdir, rows, records, time_budget) if records else []
  return {"summary": str(workdir / SUMMARY_FILE), "plots": [str(p) for p in plots],
          "rows": rows}


def write_atomically(path: pathlib.Path, text: str) -> None:
  """`text` as the file `path`, all or nothing: a temporary file in its folder, then a rename."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp",
                                   encoding="utf-8") as f:
    f.write(text)
  _readable(f.name)
  os.replace(f.name, path)


def _readable(path: str) -> None:
  """The permissions a new file gets (temporary files are created private: 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


# ------------------------------------------------------------------------- numbers


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (group, noise, method): the SRBench metrics over its fits."""
  groups = collections.defaultdict(list)
  for record in records:
    groups[(record["group"], record["noise"], record["method"])].append(record)
  return [_row(group, noise, method, fits)
          for (group, noise, method), fits in sorted(groups.items())]


def _row(group: str, noise: float, method: str, fits: list[dict]) -> dict[str, Any]:
  """The metrics of one method's fits on one group at one noise level."""
  r2 = [r.get("r2_test") if r["status"] == "ok" else None for r in fits]
  sizes = [r["model_size"] for r in fits if r.get("model_size") is not None]
  seconds = [r["fit_seconds"] for r in fits if r.get("fit_seconds") is not None]
  return {"group": group, "noise": noise, "method": method, "fits": len(fits),
          "problems": len({r["problem"] for r in fits}),
          "failed": sum(r["status"] == "failed" for r in fits),
          "timeouts": sum(r["status"] == "timeout" for r in fits),
          "median_r2": float(np.median([-np.inf if v is None else v for v in r2])),
          "acc_0.99": metrics.accuracy(r2, 0.99), "acc_0.999": metrics.accuracy(r2, 0.999),
          "solution_rate": (None if group == "csv" else
                            float(np.mean([bool(r.get("symbolic_solution")) for r in fits]))),
          "median_size": statistics.median(sizes) if sizes else None,
          "median_seconds": statistics.median(seconds) if seconds else None}


# ------------------------------------------------------------------------- summary.md


def summary_markdown(rows: list[dict], records: Sequence[dict], time_budget: float) -> str:
  """The summary table, the per-problem table and what the columns mean."""
  failed = sum(r["status"] != "ok" for r in records)
  lines = [f"# SRBench-style results (snip-jax {snip_jax.__version__})", "",
           f"{len(records)} fits ({failed} failed or timed out), a budget of {time_budget:g} s"
           " per fit. Columns: docs/SRBENCH.md.", "",
           "| problems | noise | method | fits | failed | median test R² | R² > 0.99 |"
           " R² > 0.999 | symbolic solution | median size | median fit time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in _with_published(rows):
    lines.append(_summary_line(row))
  lines += ["", PUBLISHED_NOTE, "", *_per_problem(records)]
  return "\n".join(lines) + "\n"


def _with_published(rows: list[dict]) -> list[dict]:
  """The measured rows, each group at noise 0 followed by SNIP's published figures."""
  out = []
  for i, row in enumerate(rows):
    out.append(row)
    last_of_group = i + 1 == len(rows) or (rows[i + 1]["group"], rows[i + 1]["noise"]) != (
        row["group"], row["noise"])
    if last_of_group and row["noise"] == 0 and row["group"] in PUBLISHED_SNIP:
      out.append({"group": row["group"], "noise": 0.0, "method": "SNIP (published)*",
                  "published": PUBLISHED_SNIP[row["group"]]})
  return out


def _summary_line(row: dict) -> str:
  """One table line; published rows show only what was reported."""
  if "published" in row:
    p = row["published"]
    cells = ["–", "–", _r2(p.get("median_r2")), _percent(p.get("acc_0.99")), "–", "–",
             p.get("size", "–"), _number(p.get("seconds"))]
  else:
    cells = [str(row["fits"]), str(row["failed"] + row["timeouts"]), _r2(row["median_r2"]),
             _percent(row["acc_0.99"]), _percent(row["acc_0.999"]),
             _percent(row["solution_rate"]), _number(row["median_size"]),
             _number(row["median_seconds"])]
  return f"| {row['group']} | {row['noise']:g} | {row['method']} | {' | '.join(cells)} |"


def _per_problem(records: Sequence[dict]) -> list[str]:
  """Median test R² per problem (rows) and method (columns); ✓k/n: solved in k of n fits."""
  methods = sorted({r["method"] for r in records})
  cells = collections.defaultdict(list)
  for r in records:
    cells[(r["problem"], r["noise"], r["method"])].append(r)
  lines = ["## Per problem", "", "Median test R² over seeds; ✓k/n: a symbolic solution in k of"
           " n fits; fail: no fit succeeded.", "",
           f"| problem | noise | {' | '.join(methods)} |",
           f"|---|---|{'---|' * len(methods)}"]
  for problem, noise in sorted({(p, g) for p, g, _ in cells}):
    row = [_problem_cell(cells.get((problem, noise, m), [])) for m in methods]
    lines.append(f"| {problem} | {noise:g} | {' | '.join(row)} |")
  return lines


def _problem_cell(fits: list[dict]) -> str:
  """One method's fits on one problem: median test R² and its symbolic solutions."""
  if not fits:
    return ""
  r2 = [r["r2_test"] for r in fits if r["status"] == "ok" and r.get("r2_test") is not None]
  solved = sum(bool(r.get("symbolic_solution")) for r in fits)
  text = _r2(statistics.median(r2)) if r2 else "fail"
  return f"{text} ✓{solved}/{len(fits)}" if solved else text


def _r2(value: Optional[float]) -> str:
  """An R² with 4 decimals; `fail` for −∞ (failed fits), `–` for none."""
  return "–" if value is None else f"{value:.4f}" if np.isfinite(value) else "fail"


def _percent(value: Optional[float]) -> str:
  """A share as a percentage with one decimal; `–` for none."""
  return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: Optional[float]) -> str:
  """A size or time: whole numbers without decimals, others with one; `–` for none."""
  return "–" if value is None else f"{value:.1f}" if value % 1 else f"{value:.0f}"


# ------------------------------------------------------------------------- plots


def _plots(workdir: pathlib.Path, rows: list[dict], records: Sequence[dict],
           time_budget: float) -> list[pathlib.Path]:
  """The three figures (matplotlib on its file-only backend), each written atomically."""
  from snip_jax.train import plots  # pylint: disable=g-import-not-at-top

  plt = plots.pyplot()
  figures = (_accuracy_figure(plt, rows), _pareto_figure(plt, rows),
             _time_figure(plt, records, time_budget))
  paths = []
  for name, fig in zip(PLOT_FILES, figures):
    paths.append(workdir / name)
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".png", delete=False) as f:
      fig.savefig(f, format="png", dpi=100)
    _readable(f.name)
    os.replace(f.name, paths[-1])
    plt.close(fig)
  return paths


def _label(row: dict) -> str:
  """A row's problem set as plots name it: the group, and the noise level if any."""
  return f"{row['group']}" + (f" (noise {row['noise']:g})" if row["noise"] else "")


def _accuracy_figure(plt, rows: list[dict]):
  """Bars: the share of fits with test R² > 0.99 and > 0.999, per method and problem group."""
  sets = sorted({_label(r) for r in rows})
  fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
  for ax, name in zip(axes[0], sets):
    mine = [r for r in rows if _label(r) == name]
    positions = np.arange(len(mine))
    ax.bar(positions - 0.2, [100 * r["acc_0.99"] for r in mine], 0.4, label="R² > 0.99")
    ax.bar(positions + 0.2, [100 * r["acc_0.999"] for r in mine], 0.4, label="R² > 0.999")
    published = PUBLISHED_SNIP.get(name, {}).get("acc_0.99")
    if published is not None:
      ax.axhline(100 * published, color="black", ls="--", lw=1,
                 label="SNIP R² > 0.99 (published)")
    ax.set_xticks(positions, [r["method"] for r in mine], rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of fits")
    ax.set_title(name)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def _pareto_figure(plt, rows: list[dict]):
  """Accuracy (R² > 0.99) against median model size: the Pareto picture, per method."""
  fig, ax = plt.subplots(figsize=(6, 4.5))
  methods = sorted({r["method"] for r in rows})
  sets = sorted({_label(r) for r in rows})
  for row in rows:
    if row["median_size"] is not None:
      ax.scatter(row["median_size"], 100 * row["acc_0.99"], s=50,
                 color=f"C{methods.index(row['method']) % 10}",
                 marker="osD^v<>ph*"[sets.index(_label(row)) % 10],
                 label=f"{row['method']}, {_label(row)}")
  ax.set_xlabel("median model size (nodes of the simplified model)")
  ax.set_ylabel("% of fits with test R² > 0.99")
  ax.set_title("accuracy vs model size (up and left is better)")
  ax.grid(alpha=0.3)
  if ax.collections:
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def _time_figure(plt, records: Sequence[dict], time_budget: float):
  """Fit time per problem (problems in name order), one series per method, and the budget."""
  problems = sorted({r["problem"] for r in records})
  index = {p: i for i, p in enumerate(problems)}
  fig, ax = plt.subplots(figsize=(8, 4))
  for method in sorted({r["method"] for r in records}):
    mine = [r for r in records if r["method"] == method and r.get("fit_seconds") is not None]
    ax.scatter([index[r["problem"]] for r in mine], [r["fit_seconds"] for r in mine], s=10,
               label=method)
  ax.axhline(time_budget, color="black", ls="--", lw=1, label="budget")
  ax.set_yscale("log")
  ax.set_xticks(range(len(problems)), problems if len(problems) <= 20 else [""] * len(problems),
                rotation=45, ha="right", fontsize=7)
  ax.set_xlabel(f"problem ({len(problems)}, in name order)")
  ax.set_ylabel("fit time (s)")
  ax.set_title("time per problem")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
