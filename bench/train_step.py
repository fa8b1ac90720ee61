"""CLIP train-step time against the original's, on the same machine (train_step_bench.json).

  python bench/train_step.py [--cases small_d2_bs64,full_d1_bs16] [--steps 5] [--equation_bucket 32]

Times the jitted train step (embedder + encoder_y + encoder_f forward, backward, clipping and
the original's Adam) on generated batches after compilation, and the batch preparation
(generation excluded, tokenisation into arrays included) that the original spends 0.40 s on
at batch 64. Prints the median step time, samples/s and the ratio to the original's median.
Achieved FLOP/s is printed too: 6 x (trained matmul params x positions + attention scores
2 x layers x positions^2 x dim) per sample and encoder, the usual forward+backward estimate
(embedding lookups excluded), with the positions actually computed (200 points; the equation
width after trimming); compare with the device's peak for utilisation.

`--equation_bucket` is train.equation_bucket: equation padding is cut to the batch's longest
equation rounded up to a multiple of it (the same latents; 0 keeps the original's 200 columns).
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snip_jax.data.batching import collate, trim_equations  # pylint: disable=g-import-not-at-top
from snip_jax.model import SNIP, ModelConfig, init_params
from snip_jax.symbolic import default_env_config, generate_sample
from snip_jax.train.optimizer import snip_optimizer
from snip_jax.train.train_step import create_train_state, data_mesh, make_train_step

BENCH = ROOT / "tests" / "fixtures" / "snip_original" / "train_step_bench.json"
CASES = {
    "small_d2_bs64": dict(env=dict(max_input_dimension=2), batch=64,
                          model=dict(enc_emb_dim=64, dec_emb_dim=64, n_enc_layers=2,
                                     n_dec_layers=2, n_enc_heads=4, n_dec_heads=4,
                                     emb_emb_dim=16, latent_dim=32)),
    "full_d1_bs16": dict(env=dict(max_input_dimension=1), batch=16, model=dict(latent_dim=512)),
}


def run_case(name: str, steps: int, equation_bucket: int) -> dict:
  case = CASES[name]
  env_cfg = default_env_config(**case["env"])
  model_cfg = ModelConfig.from_env(env_cfg, **case["model"])
  rng = np.random.default_rng(0)
  samples = [[generate_sample(rng, env_cfg) for _ in range(case["batch"])] for _ in range(2)]
  t = time.perf_counter()
  batches = [collate(s, env_cfg) for s in samples]
  if equation_bucket:
    batches = [trim_equations(b, equation_bucket) for b in batches]
  collate_s = (time.perf_counter() - t) / len(batches)
  params = init_params(SNIP(model_cfg), jax.random.key(0))
  optimizer = snip_optimizer(lr=4e-5)
  state = create_train_state(model_cfg, params, optimizer)
  step = make_train_step(model_cfg, optimizer, data_mesh())
  key = jax.random.key(1)
  for batch in batches:  # compile every width before timing
    state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, batches[i % 2], key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  median = float(np.median(times))
  eq_width = float(np.mean([b["equations"].shape[1] for b in batches]))
  flops = case["batch"] * (_flops_per_sample(state.params, ("embedder", "encoder_y"),
                                             model_cfg, env_cfg.max_len)
                           + _flops_per_sample(state.params, ("encoder_f",), model_cfg, eq_width))
  return dict(step_s=median, collate_s=collate_s, samples_per_s=case["batch"] / median,
              tflops=flops / median / 1e12, eq_width=eq_width)


def _flops_per_sample(params, modules, model_cfg: ModelConfig, slen: float) -> float:
  """Forward + backward FLOPs of `modules` for one sample of `slen` positions (no embeddings)."""
  matmul = sum(leaf.size for m in modules
               for path, leaf in jax.tree_util.tree_leaves_with_path(params[m])
               if "embeddings" not in jax.tree_util.keystr(path))
  attention = 2 * model_cfg.n_enc_layers * slen * slen * model_cfg.enc_emb_dim
  return 6 * matmul * slen + 3 * attention


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="small_d2_bs64,full_d1_bs16")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--equation_bucket", type=int, default=32)
  args = parser.parse_args()
  original = json.loads(BENCH.read_text())["cases"]
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  for name in args.cases.split(","):
    r = run_case(name, args.steps, args.equation_bucket)
    ref = original[name]
    print(f"{name}: step {r['step_s']:.3f}s (original {ref['enc_dec_step_median_s']:.3f}s,"
          f" model only {ref['split_model_only_median_s']:.3f}s) -> "
          f"{ref['split_model_only_median_s'] / r['step_s']:.2f}x on the model step | "
          f"{r['samples_per_s']:.1f} samples/s | {r['tflops'] * 1e3:.1f} GFLOP/s | batch prep"
          f" {r['collate_s'] * 1e3:.1f} ms (original {ref['split_prep_median_s'] * 1e3:.0f} ms)"
          f" | equation width {r['eq_width']:.0f} (bucket {args.equation_bucket})")


if __name__ == "__main__":
  main()
