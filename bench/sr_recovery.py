"""Recovery rate of an SR model on held-out generated functions, per search mode.

  python bench/sr_recovery.py --model WORKDIR_OR_PTH [--per_dim 50] [--dims 1,2]
      [--modes greedy,beam,greedy_bfgs,sample_bfgs,lso] [--lso_iterations 20] [--seed 7777777]

Functions come from the model's own generator config (its training distribution) with a seed
stream that training and its evaluation do not use (they draw chunks seeded by `train.seed`
and `train.seed + eval.seed_offset`; here one numpy stream seeded by (--seed, dimension)), one
input dimension at a time. Each mode fits `SNIPRegressor` on the function's fit points
(200, as training) and scores it on the in-domain prediction points (`predict_1.0`, 200 points
drawn afresh, the original's in-domain evaluation): recovered = test R² > 0.99. A mode that
finds no valid equation counts as a miss. Prints one markdown table row per (mode, dimension)
and writes every fit to --out (JSONL) when given.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax.sr import regressor  # pylint: disable=g-import-not-at-top
from snip_jax.symbolic.generator import generate_sample
from snip_jax.symbolic.refine import fit_scores

MODES = {
    "greedy": dict(decoding="greedy", n_candidates=1, refine=False),
    "beam": dict(decoding="beam", n_candidates=10, refine=False),
    "greedy_bfgs": dict(decoding="greedy", n_candidates=1, refine=True),
    "sample_bfgs": dict(decoding="sample", n_candidates=10, refine=True),
    "lso": dict(decoding="sample", n_candidates=10, refine=True, lso=True),
}
THRESHOLD = 0.99


def held_out_functions(env_cfg, dim: int, count: int, seed: int) -> list:
  """`count` evaluation samples (fit and prediction points) with `dim` inputs."""
  cfg = env_cfg.replace(min_input_dimension=dim, max_input_dimension=dim)
  rng = np.random.default_rng([seed, dim])
  return [generate_sample(rng, cfg, train=False) for _ in range(count)]


def fit_one(model_path: str, mode: str, sample, options: dict) -> dict:
  """One fit: test R² on the in-domain prediction points, train R², seconds, equation."""
  reg = regressor.SNIPRegressor(model_path, random_state=0, **MODES[mode], **options)
  start = time.perf_counter()
  try:
    reg.fit(sample.x, sample.y[:, 0])
  except RuntimeError:  # no valid candidate
    return {"test_r2": -np.inf, "train_r2": -np.inf, "seconds": time.perf_counter() - start,
            "equation": None}
  seconds = time.perf_counter() - start
  x_test, y_test = sample.predict["predict_1.0"]
  test_r2 = fit_scores(y_test, reg.predict(x_test)[:, None])[1]
  return {"test_r2": float(test_r2), "train_r2": float(reg.train_r2_), "seconds": seconds,
          "equation": reg.equation_}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--per_dim", type=int, default=50)
  parser.add_argument("--dims", default="1,2")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--lso_iterations", type=int, default=20)
  parser.add_argument("--max_len", type=int, default=200)
  parser.add_argument("--seed", type=int, default=7_777_777)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  env_cfg = regressor._load(args.model).env_cfg  # pylint: disable=protected-access
  options = {"lso_iterations": args.lso_iterations, "max_len": args.max_len}
  out = open(args.out, "a", encoding="utf-8") if args.out else None
  print("| mode | inputs | functions | recovered (test R² > 0.99) | median test R² |"
        " median s per fit |\n| --- | ---: | ---: | ---: | ---: | ---: |")
  for dim in map(int, args.dims.split(",")):
    samples = held_out_functions(env_cfg, dim, args.per_dim, args.seed)
    for mode in args.modes.split(","):
      fits = [fit_one(args.model, mode, s, options) for s in samples]
      for s, fit in zip(samples, fits):
        if out:
          out.write(json.dumps({"mode": mode, "dim": dim, "true": s.tree.infix(), **fit},
                               default=float) + "\n")
      r2 = np.array([f["test_r2"] for f in fits])
      print(f"| {mode} | {dim} | {len(fits)} | {np.mean(r2 > THRESHOLD):.1%} |"
            f" {np.median(r2):.3f} | {np.median([f['seconds'] for f in fits]):.2f} |",
            flush=True)


if __name__ == "__main__":
  main()
