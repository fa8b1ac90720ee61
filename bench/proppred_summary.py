"""A markdown table of the property-prediction runs under a directory (their eval/results.json).

  python bench/proppred_summary.py OUT_DIR     # as written by bench/proppred_ncr.sh
"""

import json
import pathlib
import sys


def _budget_and_seed(run_dir: pathlib.Path) -> tuple[int, int]:
  """(data.n_train, train.seed) of the run, from the config.json the training loop writes."""
  config = json.loads((run_dir / "config.json").read_text())["run_config"]
  return int(config["data"]["n_train"]), int(config["train"]["seed"])


def main(out_dir: str) -> None:
  rows = []
  for path in sorted(pathlib.Path(out_dir).glob("*/eval/results.json")):
    results = json.loads(path.read_text())
    rows.append((*_budget_and_seed(path.parents[1]), results["variant"], results))
  if not rows:
    raise SystemExit(f"no */eval/results.json under {out_dir}")
  order = {"supervised": 0, "frozen": 1, "finetuned": 2}
  print("| labels | variant | seed | R² | NMSE | MSE | acc@0.1 | acc@0.01 |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for n, seed, variant, r in sorted(rows, key=lambda row: (row[0], order.get(row[2], 9), row[1])):
    m = r["metrics"]
    print(f"| {n} | {variant} | {seed} | {m['r2']:.3f} | {m['nmse']:.3f} | {m['mse']:.4f} |"
          f" {m['accuracy_within_0.1']:.3f} | {m['accuracy_within_0.01']:.3f} |")
  chance = rows[0][3]["chance"]
  print(f"| - | chance (test mean) | - | {chance['r2']:.3f} | {chance['nmse']:.3f} |"
        f" {chance['mse']:.4f} | {chance['accuracy_within_0.1']:.3f} |"
        f" {chance['accuracy_within_0.01']:.3f} |")


if __name__ == "__main__":
  main(sys.argv[1])
