"""SR decoding speed: tokens/s for 100 sequences (50 latents x 2 samples) with and without the
key/value cache, at the tiny fixture size and at full size (run_train.sh's model).

  python bench/sr.py [--steps 60] [--repeats 2] [--sizes small,full]

Random weights, so no row emits <EOS> early: every row decodes `--steps` tokens (max_len =
steps + 1). "Without the cache" recomputes the whole (steps + 1)-long buffer at every step, as a
jitted loop must (fixed shapes): that is about twice the work of recomputing only the prefix.
At full size on a CPU the recomputation of 100 sequences takes about half an hour, so it runs on
`--full_recompute_latents` latents (x 2 samples) and reports tokens/s, which scale with the count.
"""

import argparse
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from snip_jax.model import SNIPSR, ModelConfig, init_params  # pylint: disable=g-import-not-at-top
from snip_jax.sr import decoding

SIZES = {
    "small": dict(max_input_dimension=2, enc_emb_dim=32, dec_emb_dim=32, n_enc_layers=2,
                  n_dec_layers=2, n_enc_heads=4, n_dec_heads=4, emb_emb_dim=8, latent_dim=16),
    "full": dict(max_input_dimension=10, latent_dim=512, n_dec_layers=16),
}


def tokens_per_second(model, params, latents, steps: int, repeats: int, **options) -> float:
  """Generated tokens per second of sampled decoding (best of `repeats`, after a warm-up)."""
  run = lambda: decoding.generate_from_latent(
      model, params, latents, samples_per_latent=2, max_len=steps + 1, temperature=1.0,
      rng=jax.random.key(0), **options)
  jax.block_until_ready(run())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    decoded = jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return float((decoded.lengths - 1).sum()) / best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--sizes", default="small,full")
  parser.add_argument("--full_recompute_latents", type=int, default=5)
  args = parser.parse_args()
  for name in args.sizes.split(","):
    cfg = ModelConfig.from_params(SIZES[name])
    model = SNIPSR(cfg)
    params = jax.jit(lambda key, m=model: init_params(m, key))(jax.random.key(0))
    latents = jax.random.normal(jax.random.key(1), (50, cfg.latent_dim))
    cached = tokens_per_second(model, params, latents, args.steps, args.repeats)
    n = args.full_recompute_latents if name == "full" else len(latents)
    full = tokens_per_second(model, params, latents[:n], args.steps, args.repeats,
                             use_cache=False)
    print(f"{name:5} 100 sequences x {args.steps} tokens: cache {cached:9.0f} tokens/s"
          f" ({100 * args.steps / cached:6.2f} s); recomputing ({2 * n} sequences)"
          f" {full:9.0f} tokens/s; cache speed-up {cached / full:5.1f}x", flush=True)


if __name__ == "__main__":
  main()
