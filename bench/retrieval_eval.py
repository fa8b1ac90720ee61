"""Zero-shot equation retrieval with a pretrained SNIP: skeleton hit rates and fits vs chance.

  python bench/retrieval_eval.py --model WORKDIR_OR_CHECKPOINT [--n_index 100000]
                                 [--n_queries 200] [--n_fit 10] [--num_workers 2]

An index of `n_index` generated functions of `input_dimension` (1) variables, seed `seed`,
deduplicated by skeleton, is built under `index_root` (a directory per model, size and seed:
rerunning resumes or reuses it). Queries are held-out functions (seed + 1): those whose
skeleton is in the index and those whose skeleton is not, `n_queries` of each. Each query's
points are embedded with encoder_y and the index searched by the model's similarity. Reported:
the top-1/10/100 skeleton hit rates (the query's skeleton among the first k hits) against
chance (k / entries), and the share of queries reaching R² > 0.99 on their points after BFGS
from the stored constants: of the top-1 hit, of the best of the top-`n_fit`, of the best of
`n_fit` random entries (chance), and of the query's own skeleton (what fitting alone reaches).
Prints a markdown table.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top
from snip_jax.data.pipeline import generate_chunk
from snip_jax.pretrained import load_pretrained
from snip_jax.retrieval import GeneratedSource, Retriever, build_index
from snip_jax.retrieval.query import DEFAULT_REFINE
from snip_jax.retrieval.sources import skeleton_keys
from snip_jax.retrieval.store import model_identity
from snip_jax.symbolic.generator import skeleton
from snip_jax.symbolic.refine import refine_many

KS = (1, 10, 100)


def held_out(env_cfg, seed: int, key_to_id: dict, n: int, max_chunks: int):
  """(in-index, out-of-index) lists of (sample, own entry id or -1), n each at most."""
  groups = ([], [])
  for chunk in range(max_chunks):
    samples, _ = generate_chunk(chunk, env_cfg=env_cfg, seed=seed, chunk_size=256)
    keys = skeleton_keys([skeleton(s.tree) for s in samples])
    for sample, key in zip(samples, keys.tolist()):
      own = key_to_id.get(key, -1)
      group = groups[0] if own >= 0 else groups[1]
      if len(group) < n:
        group.append((sample, own))
    if all(len(g) == n for g in groups):
      break
  return groups


def best_r2(equations: list[str], x, y) -> list[float]:
  """R² after fitting each equation's constants to (x, y), in order."""
  return [r.r2 for r in refine_many(equations, x, y, **DEFAULT_REFINE)]


def evaluate(retriever: Retriever, group: list, n_fit: int, rng: np.random.Generator) -> dict:
  """Hit rates and R² > 0.99 shares of one group of queries."""
  if not group:
    return {}
  datasets = [(s.x, s.y[:, 0]) for s, _ in group]
  start = time.perf_counter()
  scores, ids = retriever.search(retriever.embed(datasets), [x.shape[1] for x, _ in datasets],
                                 max(KS))
  seconds = time.perf_counter() - start
  own = np.array([o for _, o in group])
  out = {"n": len(group), "ms_per_query": 1e3 * seconds / len(group)}
  for k in KS:
    out[f"top{k}"] = float(np.mean([(o >= 0) and (o in row[:k]) for o, row in zip(own, ids)]))
  fits = {"top1": [], f"top{n_fit}": [], "random": [], "own": []}
  index = retriever.index
  for (x, y), row, o in zip(datasets, ids, own):
    hits = [e["equation"] for e in index.entries(row[:n_fit][row[:n_fit] >= 0])]
    r2 = best_r2(hits, x, y)
    fits["top1"].append(r2[0] > 0.99)
    fits[f"top{n_fit}"].append(max(r2) > 0.99)
    chance = index.entries(rng.choice(index.n_entries, n_fit, replace=False))
    fits["random"].append(max(best_r2([e["equation"] for e in chance], x, y)) > 0.99)
    if o >= 0:
      fits["own"].append(best_r2([index.entries([o])[0]["equation"]], x, y)[0] > 0.99)
  out.update({f"r2_{name}": float(np.mean(v)) if v else None for name, v in fits.items()})
  return out


def _pct(value) -> str:
  """A share as a percentage; a dash for none."""
  return "–" if value is None else f"{100 * value:.1f}%"


def table(rows: dict, n_entries: int, n_fit: int) -> str:
  """The markdown table of both groups."""
  chance = " / ".join(f"{100 * min(1.0, k / n_entries):.2g}%" for k in KS)
  lines = [f"| queries | n | top-1 / top-10 / top-100 skeleton hit (chance {chance}) |"
           f" R² > 0.99: top-1 fitted | best of top-{n_fit} fitted |"
           f" best of {n_fit} random fitted (chance) | own skeleton fitted |",
           "| --- | ---: | :---: | ---: | ---: | ---: | ---: |"]
  for name, r in rows.items():
    if not r:
      lines.append(f"| {name} | 0 | – | – | – | – | – |")
      continue
    hits = " / ".join(_pct(r[f"top{k}"]) for k in KS) if name.startswith("skeleton in") \
        else "– (not indexed)"
    lines.append(f"| {name} | {r['n']} | {hits} | {_pct(r['r2_top1'])} |"
                 f" {_pct(r[f'r2_top{n_fit}'])} | {_pct(r['r2_random'])} | {_pct(r['r2_own'])} |")
  return "\n".join(lines)


def main():
  """Build (or reuse) the index, query both groups, print the table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="a pretraining workdir, converted dir or .pth")
  parser.add_argument("--n_index", type=int, default=100_000)
  parser.add_argument("--n_queries", type=int, default=200, help="per group")
  parser.add_argument("--n_fit", type=int, default=10)
  parser.add_argument("--input_dimension", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=0, help="generator processes")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--index_root", default="/tmp/snip_retrieval_eval")
  args = parser.parse_args()

  model = load_pretrained(args.model, batch_size=args.batch_size)
  env = dataclasses.replace(model.env_cfg, max_input_dimension=args.input_dimension,
                            min_input_dimension=1)
  name = f"{model_identity(model)['params_sha256']}_n{args.n_index}_d{args.input_dimension}"
  directory = pathlib.Path(args.index_root) / f"{name}_s{args.seed}"
  start = time.perf_counter()
  summary = build_index(directory, model, GeneratedSource(
      env, limit=args.n_index, seed=args.seed, num_workers=args.num_workers),
      model_path=str(pathlib.Path(args.model).absolute()))
  print(f"index {directory}: {summary.n_entries:,} entries (skeletons) of {args.n_index:,}"
        f" functions; {summary.added:,} added in {time.perf_counter() - start:.0f} s")

  retriever = Retriever(model, directory)
  keys = retriever.index.all_keys().tolist()
  key_to_id = {key: i for i, key in enumerate(keys)}
  inside, outside = held_out(env, args.seed + 1, key_to_id, args.n_queries,
                             max_chunks=max(4, 100 * args.n_queries // 256))
  rng = np.random.default_rng(args.seed)
  rows = {"skeleton in the index": evaluate(retriever, inside, args.n_fit, rng),
          "skeleton not in the index": evaluate(retriever, outside, args.n_fit, rng)}
  for name, r in rows.items():
    if r:
      print(f"{name}: {r['n']} queries, search {r['ms_per_query']:.1f} ms per query (embed +"
            " top-100, batched)")
  print(f"\nmodel {args.model}; {summary.n_entries:,} entries\n")
  print(table(rows, summary.n_entries, args.n_fit))


if __name__ == "__main__":
  main()
