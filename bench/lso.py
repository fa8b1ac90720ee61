"""Latent-space search speed: seconds per problem at the original's settings (50 members x
`--iterations` x 2 samples), the whole population decoded in one call per iteration (this
project) against members decoded one by one (the original's design), in the same run.

  python bench/lso.py [--iterations 80] [--model tests/fixtures/snip_sr_original/tiny_sr.pth]
      [--max_jobs 2]

Both designs refine valid candidates with the same BFGS (snip_jax.symbolic.refine); the
search never stops early (stop R² above 1), so both run every iteration. The batched design is
timed with 1 .. --max_jobs refinement processes, then with one refinement per skeleton
(SNIPRegressor's refine_per="skeleton").
"""

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax import load_pretrained  # pylint: disable=g-import-not-at-top
from snip_jax.sr import lso
from snip_jax.symbolic.generator import skeleton
from snip_jax.symbolic.refine import refine_many
from snip_jax.symbolic.trees import Expression


def scorer(model, x, y, one_by_one: bool, n_jobs: int = 1, key=Expression.prefix):
  """LSO's decode-and-score callback. One by one (the original's design): each member decoded
  and its candidates refined in turn. Batched (as SNIPRegressor): the population decoded in one
  call, each distinct `key` (equation, or skeleton) refined once per search, all new ones in
  one call (`n_jobs` processes)."""
  refined = {}

  def best_of(results):
    best = max(results, key=lambda r: r.r2, default=None)
    return (None, -np.inf) if best is None else (best.expression, best.r2)

  def one_by_one_members(latents, samples):
    for z in latents:
      member = model.decode_latents(z[None], n_samples=samples, seed=0)[0]
      yield best_of(refine_many([e for e in member if e is not None], x, y))

  def batched_members(latents, samples):
    members = [[e for e in m if e is not None]
               for m in model.decode_latents(latents, n_samples=samples, seed=0)]
    new = list({key(e): e for m in members for e in m if key(e) not in refined}.values())
    refined.update(zip(map(key, new), refine_many(new, x, y, n_jobs=n_jobs)))
    for member in members:
      yield best_of([refined[key(e)] for e in member])

  def decode_and_score(latents, samples):
    members = (one_by_one_members if one_by_one else batched_members)(latents, samples)
    equations, r2 = zip(*members)
    return list(equations), np.asarray(r2), []

  return decode_and_score


def seconds_per_problem(model, x, y, iterations: int, one_by_one: bool, n_jobs: int = 1,
                        key=Expression.prefix) -> float:
  """Wall time of one search (after a one-iteration warm-up compiles the decoder)."""
  encode = lambda xs, ys: model.embed_points(list(zip(xs, ys)))
  search = lambda its: lso.latent_space_optimisation(
      encode, scorer(model, x, y, one_by_one, n_jobs, key), x, y,
      options=lso.LSOOptions(max_iterations=its, stop_r2=2.0), rng=0)
  search(1)
  start = time.perf_counter()
  assert search(iterations).iterations == iterations
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iterations", type=int, default=80)
  parser.add_argument("--model", default="tests/fixtures/snip_sr_original/tiny_sr.pth")
  parser.add_argument("--max_jobs", type=int, default=2, help="refinement processes, 1..N")
  args = parser.parse_args()
  model = load_pretrained(args.model)
  rng = np.random.default_rng(0)
  x = rng.uniform(-2, 2, size=(200, 2))
  y = 3.0 - 3.4 * x[:, 0] + np.sin(x[:, 1])
  single = seconds_per_problem(model, x, y, args.iterations, one_by_one=True)
  print(f"members one by one (the original's design): {single:8.1f} s per problem", flush=True)
  for n_jobs in range(1, args.max_jobs + 1):
    batched = seconds_per_problem(model, x, y, args.iterations, one_by_one=False, n_jobs=n_jobs)
    print(f"population per call, refined once, {n_jobs} process(es): {batched:8.1f} s per"
          f" problem; speed-up {single / batched:.1f}x", flush=True)
  per_skeleton = seconds_per_problem(model, x, y, args.iterations, one_by_one=False,
                                     n_jobs=args.max_jobs, key=skeleton)
  print(f"  the same, refined once per skeleton (refine_per='skeleton'): {per_skeleton:8.1f} s"
        f" per problem; speed-up {single / per_skeleton:.1f}x", flush=True)

if __name__ == "__main__":
  main()
