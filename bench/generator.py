"""Generator throughput: accepted samples/s including tokenisation into batch arrays.

  python bench/generator.py [--seconds 20] [--workers 2] [--batch_size 64]

Prints samples/s for d=1 and d=10, single process and with Grain worker processes, and the ratio to
the original generator's single-process figures measured on the same machine
(tests/fixtures/snip_original/generator_samples_meta.json).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax.data.batching import collate  # pylint: disable=g-import-not-at-top
from snip_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from snip_jax.symbolic import build_vocab, default_env_config, generate_sample

META = (pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "snip_original"
        / "generator_samples_meta.json")


def single_process(cfg, seconds, batch_size):
  """Batches generated and collated in this process for `seconds`; returns (samples/s, collate s)."""
  rng = np.random.default_rng(0)
  n, collate_time = 0, 0.0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    samples = [generate_sample(rng, cfg) for _ in range(batch_size)]
    t = time.perf_counter()
    collate(samples, cfg)
    collate_time += time.perf_counter() - t
    n += batch_size
  elapsed = time.perf_counter() - start
  return n / elapsed, collate_time / (n / batch_size)


def pooled(cfg, seconds, batch_size, workers):
  """Collated batches from `workers` processes, measured after the first batch arrives."""
  ds = pipeline.generated_batches(cfg, seed=0, batch_size=batch_size)
  with pipeline.iterate(ds, num_workers=workers) as batches:
    next(batches)
    n, start = 0, time.perf_counter()
    for batch in batches:
      n += batch["points"].shape[0]
      if time.perf_counter() - start >= seconds:
        break
    rate = n / (time.perf_counter() - start)
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  original = {k: v["throughput"]["samples_per_second"]
              for k, v in json.loads(META.read_text())["sets"].items()}
  print(f"{'set':5} {'mode':14} {'samples/s':>10} {'x original':>10}  notes")
  for name, dim in (("d1", 1), ("d10", 10)):
    cfg = default_env_config(max_input_dimension=dim)
    build_vocab(cfg)
    rate, collate_s = single_process(cfg, args.seconds, args.batch_size)
    print(f"{name:5} {'1 process':14} {rate:10.1f} {rate / original[name]:10.2f}  collate of"
          f" {args.batch_size}: {collate_s * 1e3:.1f} ms (original tokenisation: 400 ms)")
    rate_pool = pooled(cfg, args.seconds, args.batch_size, args.workers)
    print(f"{name:5} {f'{args.workers} workers':14} {rate_pool:10.1f}"
          f" {rate_pool / original[name]:10.2f}  scaling {rate_pool / rate:.2f}x over 1 process")


if __name__ == "__main__":
  main()
