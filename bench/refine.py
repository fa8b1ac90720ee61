"""Constant refinement throughput: BFGS refinements/s on one core for typical candidates.

  python bench/refine.py [--candidates 200] [--rows 200] [--min_nodes 15] [--max_nodes 25]

Candidates are generated functions (d_in 1–2) of `min_nodes`–`max_nodes` prefix tokens whose
float constants are perturbed by 10 % (a decoded equation near the truth); each is refined on
200 of its own points with the faithful options (BFGS, default tolerances, no restarts). Prints
refinements/s, evaluations per refinement and the status counts.
"""

import argparse
import collections
import dataclasses
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top
from snip_jax.symbolic import default_env_config, generate_sample
from snip_jax.symbolic.refine import refine_many
from snip_jax.symbolic.trees import is_integer_text, is_number


def perturbed(prefix: list[str], rng: np.random.Generator) -> list[str]:
  """The prefix with every float constant multiplied by 1 + 0.1·N(0, 1)."""
  out = []
  for token in prefix:
    if is_number(token) and not is_integer_text(token):
      token = repr(float(token) * (1.0 + 0.1 * rng.standard_normal()))
    out.append(token)
  return out


def problems(n: int, rows: int, min_nodes: int, max_nodes: int, seed: int = 0):
  """(candidate prefix, x, y) for n generated functions of the requested size."""
  cfg = dataclasses.replace(default_env_config(), max_input_dimension=2)
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < n:
    sample = generate_sample(rng, cfg)
    prefix = sample.tree.prefix_list()
    if min_nodes <= len(prefix) <= max_nodes and len(sample.x) >= rows:
      out.append((perturbed(prefix, rng), sample.x[:rows], sample.y[:rows, 0]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--candidates", type=int, default=200)
  parser.add_argument("--rows", type=int, default=200)
  parser.add_argument("--min_nodes", type=int, default=15)
  parser.add_argument("--max_nodes", type=int, default=25)
  args = parser.parse_args()
  cases = problems(args.candidates, args.rows, args.min_nodes, args.max_nodes)
  start = time.perf_counter()
  results = [refine_many([prefix], x, y)[0] for prefix, x, y in cases]
  seconds = time.perf_counter() - start
  nodes = np.mean([len(prefix) for prefix, _, _ in cases])
  evals = np.mean([r.n_evals for r in results])
  statuses = collections.Counter(r.status for r in results)
  good = np.mean([r.r2 > 0.99 for r in results])
  print(f"{len(results)} candidates, mean {nodes:.1f} nodes, {args.rows} rows: "
        f"{len(results) / seconds:.0f} refinements/s (one process), {evals:.1f} evaluations "
        f"each, {1e3 * seconds / len(results):.2f} ms each; R² > 0.99 after: {good:.0%}; "
        f"statuses {dict(statuses)}")


if __name__ == "__main__":
  main()
