"""Input pipeline and loop overhead: generated batches/s by workers, ArrayRecord samples/s.

  python bench/pipeline.py [--seconds 20] [--old_checkout DIR]

1. Generated batches (d=10, batch 64) per second through the Grain pipeline with 0, 1 and 2
   workers. With --old_checkout (a checkout of commit e13bbfd, whose data/pool.py the Grain
   pipeline replaced) the old pool is measured in the same run, in a subprocess.
2. ArrayRecord corpus samples per second (batch 256, d=10) in one process and with 2 workers.
3. The loop's own overhead per step: iterate() with a trivial jitted step over batches that are
   already made, minus the step alone.
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import grain
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from snip_jax.symbolic import build_vocab, default_env_config

_OLD_POOL = """
import sys, time
sys.path.insert(0, {root!r})
from snip_jax.data.stream import batch_stream
from snip_jax.symbolic import build_vocab, default_env_config
if __name__ == "__main__":
  cfg = default_env_config(max_input_dimension=10); build_vocab(cfg)
  stream = batch_stream(cfg, seed=0, batch_size={bs}, num_workers={workers})
  next(stream); n, start = 0, time.perf_counter()
  for chunk in stream:
    n += 1
    if time.perf_counter() - start >= {seconds}:
      break
  print(n / (time.perf_counter() - start)); stream.close()
"""


def rate(batches, seconds: float) -> float:
  """Elements per second after the first one arrives."""
  next(batches)
  n, start = 0, time.perf_counter()
  for _ in batches:
    n += 1
    if time.perf_counter() - start >= seconds:
      break
  value = n / (time.perf_counter() - start)
  batches.close()
  return value


def generated(cfg, seconds: float, batch_size: int, old_checkout: str) -> None:
  """Generated batches/s by number of workers, Grain and (optionally) the old pool."""
  for workers in (0, 1, 2):
    ds = pipeline.generated_batches(cfg, seed=0, batch_size=batch_size)
    grain_rate = rate(pipeline.iterate(ds, num_workers=workers), seconds)
    line = f"generated d=10 bs {batch_size}  {workers} workers  grain {grain_rate:7.2f} batches/s"
    if old_checkout:
      script = _OLD_POOL.format(root=old_checkout, bs=batch_size, workers=workers,
                                seconds=seconds)
      out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout
      old = float(out.split()[-1])
      line += f"  old pool {old:7.2f}  ratio {grain_rate / old:5.2f}"
    print(line, flush=True)


def array_record(cfg, seconds: float) -> None:
  """Samples/s from an ArrayRecord corpus (batch 256) in one process and with 2 workers."""
  from snip_jax.data.export import export_corpus  # pylint: disable=g-import-not-at-top
  from snip_jax.data.tfds_corpus import build_tfds_corpus, corpus_source  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    prefix = export_corpus(f"{tmp}/export", cfg, n_samples=1024, num_workers=2, log_every_s=60)
    build_tfds_corpus({"train": prefix}, f"{tmp}/tfds", cfg)
    source = corpus_source(f"{tmp}/tfds", "train", cfg)
    for workers in (0, 2):
      ds = pipeline.corpus_batches(source, 256, seed=0)
      batches = rate(pipeline.iterate(ds, num_workers=workers), seconds)
      print(f"ArrayRecord d=10 bs 256  {workers} workers  {batches * 256:9.0f} samples/s",
            flush=True)


def loop_overhead(steps: int = 2000) -> None:
  """Per-step time of iterate() + placement + a trivial jitted step, minus the step alone."""
  import jax  # pylint: disable=g-import-not-at-top

  step = jax.jit(lambda s, b: s + b["x"].sum())
  batch = {"x": np.ones((64, 8), np.float32)}
  ds = grain.MapDataset.range(0, steps).map(lambda _: batch)
  state = step(0.0, batch)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state, batch)
  jax.block_until_ready(state)
  alone = (time.perf_counter() - start) / steps
  with pipeline.iterate(ds, place=jax.device_put) as batches:
    start = time.perf_counter()
    for b in batches:
      state = step(state, b)
    jax.block_until_ready(state)
  total = (time.perf_counter() - start) / steps
  print(f"loop overhead: {(total - alone) * 1e3:.3f} ms/step (step alone {alone * 1e3:.3f} ms)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--old_checkout", default="")
  args = parser.parse_args()
  cfg = default_env_config(max_input_dimension=10)
  build_vocab(cfg)
  loop_overhead()
  generated(cfg, args.seconds, args.batch_size, args.old_checkout)
  array_record(cfg, args.seconds)


if __name__ == "__main__":
  main()
