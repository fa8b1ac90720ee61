"""What verifying checkpoints costs: .pth zip CRCs and the checksums of saved arrays.

  python bench/integrity.py [--workdir /tmp/snip_bench_integrity] [--mb 1024] [--repeats 3]

1. `.pth` CRC-32 (`load_pth(verify_crc=True)`, the default, vs `verify_crc=False`) on two
   files in the page cache: the full-size SNIP-10dmax layout of bench/convert.py (457 MB) and
   `--mb` MB of float32 in 64 MB tensors. Timed: `load_pth` alone (without the check nothing is
   read yet), and `load_pth` plus one pass over every array (what a conversion does anyway).
2. Checkpoint checksums (`array_checksums` at each save, `verify_arrays` at each restore) on
   the runlocal TrainState as the trainer holds it (replicated jax.Arrays), next to the
   blocking part of `save_checkpoint`; and on a full-size state's worth of arrays (SNIP-10dmax
   params plus Adam's two moments).
"""

import argparse
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from bench.convert import synthesize_pth
from configs import pretrain
from snip_jax.convert.converter import read_pth
from snip_jax.convert.integrity import array_checksums, verify_arrays
from snip_jax.convert.pth import load_pth
from snip_jax.convert.pth_writer import save_pth
from snip_jax.model import SNIP, init_params
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import clip
from snip_jax.train import checkpoints, trainer
from snip_jax.train.train_step import create_train_state, data_mesh
# pylint: enable=g-import-not-at-top,wrong-import-position

TENSOR_MB = 64


def best_of(repeats: int, fn) -> float:
  """The fastest of `repeats` timed calls of `fn`, in seconds."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def float32_pth(path: pathlib.Path, megabytes: int) -> pathlib.Path:
  """A .pth of `megabytes` MB of random float32 in TENSOR_MB tensors."""
  rng = np.random.default_rng(0)
  n = TENSOR_MB * 2**20 // 4
  tensors = {f"w{i}": rng.standard_normal(n, dtype=np.float32)
             for i in range(max(1, megabytes // TENSOR_MB))}
  return save_pth({"state_dict": tensors}, path)


def read_all(tree) -> None:
  """One pass over every array of a loaded checkpoint."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, np.ndarray):
      leaf.sum()


def pth_row(path: pathlib.Path, repeats: int) -> str:
  """A markdown row: size, load_pth with and without CRCs, and the same plus a read of all."""
  path.read_bytes()  # into the page cache
  times = [best_of(repeats, lambda v=v: load_pth(path, verify_crc=v)) for v in (True, False)]
  times += [best_of(repeats, lambda v=v: read_all(load_pth(path, verify_crc=v)))
            for v in (True, False)]
  size = path.stat().st_size
  return (f"| {path.name} | {size / 1e6:.0f} | {times[0]:.3f} | {times[1]:.3f} |"
          f" {times[2]:.3f} | {times[3]:.3f} | {size / 1e9 / (times[0] - times[1]):.1f} |")


def runlocal_state():
  """The runlocal TrainState, replicated over this machine's devices as the trainer holds it."""
  config = pretrain.get_config("runlocal")
  model_cfg = trainer.model_config(config, env_config_from(config.env))
  optimizer, _ = trainer.make_optimizer(config.optim)
  state = create_train_state(model_cfg, init_params(SNIP(model_cfg), jax.random.key(0)),
                             optimizer, learnable_temperature=config.train.learnable_temperature)
  return jax.device_put(state, NamedSharding(data_mesh(), P()))


def checksum_row(name: str, tree, repeats: int, save_s: str = "") -> str:
  """A markdown row: size, array_checksums and verify_arrays seconds (and a save's, if given)."""
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(tree))
  checksums = array_checksums(tree)
  crc_s = best_of(repeats, lambda: array_checksums(tree))
  verify_s = best_of(repeats, lambda: verify_arrays(tree, checksums, name))
  return f"| {name} | {size / 1e6:.1f} | {crc_s * 1e3:.1f} | {verify_s * 1e3:.1f} | {save_s} |"


def save_seconds(state, repeats: int) -> float:
  """The blocking part of checkpoints.save_checkpoint (checksums included), best of `repeats`."""
  with tempfile.TemporaryDirectory() as directory:
    manager = checkpoints.checkpoint_manager(pathlib.Path(directory), 1, "eval_loss",
                                           clip.EVAL_METRICS)
    times = []
    for step in range(repeats):
      start = time.perf_counter()
      checkpoints.save_checkpoint(manager, state.replace(step=state.step + step), {}, None)
      times.append(time.perf_counter() - start)
      manager.wait_until_finished()
    manager.close()
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/snip_bench_integrity")
  parser.add_argument("--mb", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  full = synthesize_pth(work / "snip10d_synthetic.pth")
  files = [full, float32_pth(work / f"float32_{args.mb}mb.pth", args.mb)]
  print("| file | MB | load_pth, CRC (s) | load_pth, verify_crc=False (s) |"
        " load + read all, CRC (s) | load + read all, no CRC (s) | CRC GB/s |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for path in files:
    print(pth_row(path, args.repeats))

  state = runlocal_state()
  params = read_pth(full)[2]
  full_state = {"params": params, "mu": params, "nu": params}
  print("\n| tree | MB | array_checksums (ms) | verify_arrays (ms) | save_checkpoint, blocking"
        " (ms) |")
  print("| --- | ---: | ---: | ---: | ---: |")
  print(checksum_row("runlocal TrainState", state, args.repeats,
                     f"{save_seconds(state, args.repeats) * 1e3:.1f}"))
  print(checksum_row("SNIP-10dmax params + Adam moments", full_state, args.repeats))


if __name__ == "__main__":
  main()
