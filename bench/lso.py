"""Latent-space search speed: seconds per problem at the original's settings (50 members x
`--iterations` x 2 samples), the whole population decoded in one call per iteration (this
project) against members decoded one by one (the original's design), in the same run.

  python bench/lso.py [--iterations 80] [--model tests/fixtures/snip_sr_original/tiny_sr.pth]

Both designs refine every valid candidate with the same BFGS (snip_jax.symbolic.refine); the
search never stops early (stop R² above 1), so both run every iteration.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax import load_pretrained  # pylint: disable=g-import-not-at-top
from snip_jax.sr import lso
from snip_jax.symbolic.refine import refine_many


def scorer(model, x, y, one_by_one: bool, distinct_once: bool = False):
  """LSO's decode-and-score callback: batched over the population, or member by member;
  `distinct_once` refines each distinct equation once (as SNIPRegressor does)."""
  refined = {}

  def decode(latents, samples):
    if not one_by_one:
      return model.decode_latents(latents, n_samples=samples, seed=0)
    return [model.decode_latents(z[None], n_samples=samples, seed=0)[0] for z in latents]

  def decode_and_score(latents, samples):
    equations, r2 = [], []
    for member in decode(latents, samples):
      valid = [e for e in member if e is not None]
      if distinct_once:
        new = [e for e in valid if e.prefix() not in refined]
        refined.update(zip((e.prefix() for e in new), refine_many(new, x, y)))
        results = [refined[e.prefix()] for e in valid]
      else:
        results = refine_many(valid, x, y)
      best = max(results, key=lambda r: r.r2, default=None)
      equations.append(None if best is None else best.expression)
      r2.append(-np.inf if best is None else best.r2)
    return equations, np.asarray(r2), []

  return decode_and_score


def seconds_per_problem(model, x, y, iterations: int, one_by_one: bool,
                        distinct_once: bool = False) -> float:
  """Wall time of one search (after a one-iteration warm-up compiles the decoder)."""
  encode = lambda xs, ys: model.embed_points(list(zip(xs, ys)))
  search = lambda its: lso.latent_space_optimisation(
      encode, scorer(model, x, y, one_by_one, distinct_once), x, y,
      options=lso.LSOOptions(max_iterations=its, stop_r2=2.0), rng=0)
  search(1)
  start = time.perf_counter()
  assert search(iterations).iterations == iterations
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iterations", type=int, default=80)
  parser.add_argument("--model", default="tests/fixtures/snip_sr_original/tiny_sr.pth")
  args = parser.parse_args()
  model = load_pretrained(args.model)
  rng = np.random.default_rng(0)
  x = rng.uniform(-2, 2, size=(200, 2))
  y = 3.0 - 3.4 * x[:, 0] + np.sin(x[:, 1])
  batched = seconds_per_problem(model, x, y, args.iterations, one_by_one=False)
  print(f"population decoded per call: {batched:8.1f} s per problem", flush=True)
  distinct = seconds_per_problem(model, x, y, args.iterations, one_by_one=False,
                                 distinct_once=True)
  print(f"  + each distinct equation refined once: {distinct:8.1f} s per problem", flush=True)
  single = seconds_per_problem(model, x, y, args.iterations, one_by_one=True)
  print(f"members one by one:          {single:8.1f} s per problem;"
        f" speed-up {single / batched:.1f}x (batched), {single / distinct:.1f}x (+ once)",
        flush=True)


if __name__ == "__main__":
  main()
