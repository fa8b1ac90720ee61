"""Conversion and embedding speed at full size (SNIP-10dmax shape, latent 512).

  python bench/convert.py [--workdir /tmp/snip_bench_convert] [--batch 16] [--repeats 3]

1. Synthesises a full-size d=10 `.pth` in the original layout (random float32 weights for every
   key of the state_dict manifest, the tied decoder weight stored once as torch does).
2. Converts it in a fresh process (`python -m snip_jax.convert`), timing it and reading the
   process's peak RSS; targets: < 10 s and < 3x the file size.
3. Times `embed_points` and `embed_equations` on this machine at batch 16 and compares the sum
   with the original's full-size forward of both encoders at batch 16 (6.12 s, d=1, torch CPU,
   tests/fixtures/snip_original/train_step_bench.json when present, else the documented value).
"""

import argparse
import collections
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snip_jax.convert.pth_writer import save_pth  # pylint: disable=g-import-not-at-top

MANIFEST = ROOT / "tests" / "fixtures" / "snip_original" / "state_dict_manifest.json"
ORIGINAL_FORWARD_S = 6.12


def synthesize_pth(path: pathlib.Path) -> pathlib.Path:
  """A full-size d=10 checkpoint with the manifest's keys and shapes and original-style params."""
  manifest = json.loads(MANIFEST.read_text())["sets"]["d10"]
  rng = np.random.default_rng(0)
  data = {"epoch": 0, "n_total_iter": 0,
          "params": {"max_input_dimension": 10, "latent_dim": 512, "enc_emb_dim": 512,
                     "dec_emb_dim": 512, "n_enc_layers": 8, "n_dec_layers": 8,
                     "n_enc_heads": 16, "n_dec_heads": 16, "emb_emb_dim": 64,
                     "n_words": int(manifest["n_equation_words"])}}
  for module, spec in manifest["modules"].items():
    sd = collections.OrderedDict()
    for key, entry in spec["state_dict"].items():
      if module == "decoder" and key == "proj.weight":
        sd[key] = sd["embeddings.weight"]
        continue
      sd[key] = (rng.standard_normal(entry["shape"], dtype=np.float32) * 0.02)
    data[module] = sd
  return save_pth(data, path)


def convert_in_fresh_process(pth: pathlib.Path, out: pathlib.Path) -> tuple[float, float]:
  """(seconds, peak RSS in bytes) of `python -m snip_jax.convert` on `pth`."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "snip_jax.convert", f"--pth={pth}", f"--out={out}",
                  "--overwrite"], cwd=ROOT, check=True, capture_output=True)
  seconds = time.perf_counter() - start
  return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def time_embeddings(out: pathlib.Path, batch: int, repeats: int) -> tuple[float, float]:
  """Median seconds per batch of `batch` for embed_points and embed_equations (after compile)."""
  import snip_jax  # pylint: disable=g-import-not-at-top
  from snip_jax.symbolic import default_env_config, generate_sample  # pylint: disable=g-import-not-at-top

  model = snip_jax.load_pretrained(out, batch_size=batch)
  rng = np.random.default_rng(0)
  samples = [generate_sample(rng, default_env_config(max_input_dimension=10))
             for _ in range(batch)]
  datasets = [(s.x, s.y) for s in samples]
  prefixes = [s.prefix for s in samples]
  model.embed_points(datasets), model.embed_equations(prefixes)
  points, equations = [], []
  for _ in range(repeats):
    t = time.perf_counter(); model.embed_points(datasets); points.append(time.perf_counter() - t)
    t = time.perf_counter(); model.embed_equations(prefixes)
    equations.append(time.perf_counter() - t)
  return float(np.median(points)), float(np.median(equations))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/snip_bench_convert")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  t = time.perf_counter()
  pth = synthesize_pth(work / "snip10d_synthetic.pth")
  size = pth.stat().st_size
  print(f"synthesised {pth} ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s")
  seconds, peak = convert_in_fresh_process(pth, work / "converted")
  print(f"convert: {seconds:.2f}s wall (incl. interpreter and JAX start), peak RSS"
        f" {peak / 1e6:.0f} MB = {peak / size:.2f}x the file (targets: < 10 s, < 3x)")
  points_s, equations_s = time_embeddings(work / "converted", args.batch, args.repeats)
  total = points_s + equations_s
  print(f"embed_points batch {args.batch}: {points_s:.2f}s | embed_equations: {equations_s:.2f}s"
        f" | both {total:.2f}s vs the original's encoder forward {ORIGINAL_FORWARD_S:.2f}s"
        f" -> {ORIGINAL_FORWARD_S / total:.2f}x")


if __name__ == "__main__":
  main()
