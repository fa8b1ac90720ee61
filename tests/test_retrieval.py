"""Equation retrieval (snip_jax/retrieval): an index of equations embedded by encoder_f, queried
with datasets. A toy model whose encoders agree by construction checks that an indexed
equation's own data finds it; a tiny (untrained) SNIP checks the similarity and the sharded
top-k against brute force and runs the two jobs; builds deduplicate, append, resume after an
interruption to the same index, and refuse another model; bad inputs are one clear line."""

import json
import pathlib

import numpy as np
import pytest

from configs import retrieval as retrieval_configs
from snip_jax import jobs
from snip_jax.errors import UserError
from snip_jax.model import ModelConfig
from snip_jax.retrieval import (CorpusSource, GeneratedSource, Index, ListSource, Retriever,
                                TfdsSource, build, build_index, commands, search, store)
from snip_jax.symbolic.generator import skeleton
from snip_jax.symbolic import default_env_config
from snip_jax.symbolic.trees import parse_prefix

EXPORT_V0 = pathlib.Path(__file__).parent / "fixtures" / "export_v0"
ENV = default_env_config(max_input_dimension=2, max_len=40)
DISTINCT = ["mul,1.5,x_0", "add,0.5,pow2,x_0", "sin,mul,2.0,x_0", "exp,mul,0.7,x_0", "cos,x_0",
            "pow3,x_0", "add,x_0,sin,mul,3.0,x_0", "abs,x_0", "mul,x_0,cos,x_0",
            "inv,add,3.0,x_0", "sqrt,add,2.5,x_0", "log,add,2.5,x_0", "mul,x_0,x_1"]


class AgreeingEncoders:
  """A toy SNIP whose two encoders agree by construction: encoder_f(f) is f at fixed probe
  points (x_1 = reversed x_0), encoder_y(x, y) is y interpolated at those points along x_0."""

  def __init__(self, env_cfg=ENV, latent_dim=24, shift=0.0):
    self.env_cfg = env_cfg
    self.model_cfg = ModelConfig.from_env(env_cfg, latent_dim=latent_dim, normalize_latents=True,
                                          clip_temperature=0.05)
    probes = np.linspace(-2.0, 2.0, latent_dim) + shift
    self.params = {"probes": probes}
    self._x = np.stack([probes, probes[::-1]], axis=1)
    self.calls = 0

  def embed_equations(self, exprs, equation_bucket=0):
    del equation_bucket
    self.calls += 1
    values = [parse_prefix(e).evaluate(self._x)[:, 0] if isinstance(e, str)
              else e.evaluate(self._x)[:, 0] for e in exprs]
    return np.clip(np.nan_to_num(np.stack(values)), -1e6, 1e6)

  def embed_points(self, datasets, subsample=None):
    del subsample
    out = []
    for x, y in datasets:
      order = np.argsort(x[:, 0])
      out.append(np.interp(self.params["probes"], x[order, 0], np.ravel(y)[order]))
    return np.stack(out)


def _data(prefix, n=200, seed=0):
  x = np.random.default_rng(seed).uniform(-2, 2, (n, 1))
  return x, parse_prefix(prefix).evaluate(x)[:, 0]


def _snapshot(directory):
  """Everything an index holds, for comparing two builds."""
  index = Index(directory)
  arrays = [(np.asarray(index.latents(s)), index.meta(s)) for s in range(len(index.counts))]
  return (index.manifest["shards"], index.manifest["sources"],
          index.entries(range(index.n_entries)),
          np.concatenate([a for a, _ in arrays]), np.concatenate([m["keys"] for _, m in arrays]))


# ------------------------------------------------------------------------- the toy model


def test_an_indexed_equations_own_data_finds_it_first(tmp_path):
  model = AgreeingEncoders()
  build_index(tmp_path, model, ListSource(DISTINCT, chunk_size=4), shard_size=5)
  retriever = Retriever(model, tmp_path)
  one_d = DISTINCT[:-1]
  found = retriever.query([_data(p, seed=i) for i, p in enumerate(one_d)], k=5)
  for prefix, matches in zip(one_d, found):
    assert matches[0].equation == prefix and matches[0].rank == 1, (prefix, matches[0])
    assert matches[0].r2 > 0.9999 and matches[0].size == len(parse_prefix(prefix))
    assert "mul,x_0,x_1" not in [m.equation for m in matches]  # 1-D data: no x_1 equation
  # Other constants, same skeleton: the fit recovers them.
  x, y = _data("add,2.0,pow2,x_0")
  best = retriever.query(x, y, k=5)[0]
  assert best.equation == "add,0.5,pow2,x_0" and best.r2 > 0.9999
  assert float(parse_prefix(best.fitted_equation).nodes[0].children[0].value) == \
      pytest.approx(2.0, abs=1e-4)


def test_one_entry_per_skeleton_with_its_first_constants_and_appending(tmp_path):
  model = AgreeingEncoders()
  first = ["add,1.0,mul,2.0,x_0", "sin,x_0", "add,3.0,mul,-1.5,x_0", "add,sin,0.5,x_0"]
  summary = build_index(tmp_path, model, ListSource(first))
  assert (summary.n_entries, summary.added, summary.duplicates) == (3, 3, 1)
  second = ["add,0.2,x_0", "sin,x_0", "cos,x_0", "cos,x_0"]  # add,0.2,x_0 = add,sin,0.5,x_0
  summary = build_index(tmp_path, model, ListSource(second))
  assert (summary.n_entries, summary.added, summary.duplicates) == (4, 1, 3)
  index = Index(tmp_path)
  assert [e["equation"] for e in index.entries(range(4))] == [
      "add,1.0,mul,2.0,x_0", "sin,x_0", "add,sin,0.5,x_0", "cos,x_0"]
  assert index.entries([2])[0]["skeleton"] == "add,CONSTANT,x_0"
  assert [s["added"] for s in index.manifest["sources"]] == [3, 1]
  again = build_index(tmp_path, model, ListSource(second))  # the same source: already read
  assert (again.added, again.consumed, Index(tmp_path).n_entries) == (0, 4, 4)


def test_data_prefix_and_tfds_corpora_are_indexed_by_distinct_skeleton(tmp_path):
  from snip_jax.data.tfds_corpus import build_tfds_corpus

  model = AgreeingEncoders()
  path = EXPORT_V0 / "data.prefix"
  build_tfds_corpus(path, tmp_path / "tfds", ENV)
  lines = [json.loads(line)["tree"] for line in path.read_text().splitlines()]
  firsts = {}
  for prefix in lines:
    firsts.setdefault(skeleton(parse_prefix(prefix)), prefix)
  for name, source in (("jsonl", CorpusSource(path, ENV, chunk_size=16)),
                       ("tfds", TfdsSource(tmp_path / "tfds", "train", ENV, chunk_size=16))):
    summary = build_index(tmp_path / name, model, source)
    assert summary.consumed == len(lines) == 90
    assert [e["equation"] for e in Index(tmp_path / name).entries(range(summary.n_entries))] == \
        list(firsts.values())


class _Interrupt(Exception):
  pass


@pytest.mark.parametrize("where", ["embedding", "between_shards_and_manifest"])
def test_an_interrupted_build_resumes_to_the_uninterrupted_index(tmp_path, monkeypatch, where):
  source = lambda: GeneratedSource(ENV, limit=300, seed=3, chunk_size=32)
  model = AgreeingEncoders()
  build_index(tmp_path / "whole", model, source(), shard_size=40, commit_every_s=0)
  broken = AgreeingEncoders()
  if where == "embedding":
    def fail_on_fifth(exprs, equation_bucket, original=broken.embed_equations):
      if broken.calls == 4:
        raise _Interrupt
      return original(exprs, equation_bucket)
    monkeypatch.setattr(broken, "embed_equations", fail_on_fifth)
  else:
    calls = []
    def fail_on_fourth(path, value, original=store.write_json):
      calls.append(path)
      if len(calls) == 4:
        raise _Interrupt
      original(path, value)
    monkeypatch.setattr(store, "write_json", fail_on_fourth)
  with pytest.raises(_Interrupt):
    build_index(tmp_path / "resumed", broken, source(), shard_size=40, commit_every_s=0)
  monkeypatch.undo()
  consumed = Index(tmp_path / "resumed").manifest["sources"][0]["consumed"]
  assert 0 < consumed < 300
  rerun = build_index(tmp_path / "resumed", AgreeingEncoders(), source(), shard_size=40)
  assert rerun.added + rerun.duplicates == 300 - consumed  # only what was not committed
  whole, resumed = _snapshot(tmp_path / "whole"), _snapshot(tmp_path / "resumed")
  assert len(whole[0]) > 2 and whole[:3] == resumed[:3]
  np.testing.assert_array_equal(whole[3], resumed[3])
  np.testing.assert_array_equal(whole[4], resumed[4])
  assert not list((tmp_path / "resumed" / store.SHARDS_DIR).glob("*.tmp"))


@pytest.mark.parametrize("other, message", [
    (AgreeingEncoders(latent_dim=16), "latent size 24; this model's is 16"),
    (AgreeingEncoders(default_env_config(max_input_dimension=3)), "another vocabulary"),
    (AgreeingEncoders(shift=0.01), "other model weights"),
])
def test_an_index_of_another_model_is_refused(tmp_path, other, message):
  build_index(tmp_path, AgreeingEncoders(), ListSource(DISTINCT))
  before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
  with pytest.raises(UserError, match=message):
    Retriever(other, tmp_path)
  with pytest.raises(UserError, match=message):
    build_index(tmp_path, other, ListSource(["cos,x_0"]))
  assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_skeleton_set_merges_without_forgetting(monkeypatch):
  monkeypatch.setattr(build, "_MERGE_EVERY", 3)
  seen = build.SkeletonSet(np.array([5, 1], np.uint64))
  assert seen.first_seen(np.array([1, 2, 2, 3, 4], np.uint64)).tolist() == [0, 1, 0, 1, 1]
  assert seen.first_seen(np.array([2, 3, 4, 5, 6], np.uint64)).tolist() == [0, 0, 0, 0, 1]


# ------------------------------------------------------------------------- a tiny SNIP, the jobs


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, compilation_cache):
  """An index of 300 generated functions built by the runlocal job (untrained tiny SNIP)."""
  del compilation_cache
  directory = tmp_path_factory.mktemp("retrieval") / "index"
  config = retrieval_configs.get_config("runlocal")
  config.data.n_equations, config.build.shard_size, config.build.chunk_size = 300, 64, 128
  assert jobs.run(config, str(directory)) == 0
  return directory, commands.untrained_model(config, 64)


def test_similarity_is_the_models_own_and_top_k_over_shards_is_exact(tiny_index, monkeypatch):
  monkeypatch.setattr(search, "QUERY_BLOCK", 2)  # 5 datasets: blocks of 2, 2 and 1
  directory, model = tiny_index
  index = Index(directory)
  assert len(index.counts) > 2 and index.counts[-1] < index.shard_size
  datasets = [_data(p, n=80, seed=i) for i, p in enumerate(DISTINCT[:5])]
  z_f = model.embed_equations([e["equation"] for e in index.entries(range(index.n_entries))])
  z_y = model.embed_points(datasets)
  expected = model.similarity(z_y, z_f, normalize=True) / model.model_cfg.clip_temperature
  retriever = Retriever(model, directory)
  queries = retriever.embed(datasets)
  for approximate in (False, True):
    scores, ids = retriever.search(queries, [1] * 5, k=10, approximate=approximate)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, 1), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :10], rtol=1e-4,
                               atol=1e-4)
  half = Retriever(model, directory, dtype="bfloat16")  # scores to bfloat16's ~3 digits
  scores, _ = half.search(queries, [1] * 5, k=10)
  np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :10], rtol=2e-2, atol=5e-2)


def _csv(path, rows=120, columns=("t",), target=lambda t: 1.5 * np.sin(2 * t) + 0.3, extra=""):
  x = np.random.default_rng(0).uniform(-2, 2, (rows, len(columns)))
  lines = [",".join([*columns, "y"])] + [",".join(map(str, [*r, target(r[0])])) for r in x]
  path.write_text("\n".join(lines) + "\n" + extra)
  return path


def _query_config(index, csv, target="y"):
  config = retrieval_configs.get_config("query,runlocal")
  config.index, config.data.csv, config.data.target = str(index), csv, target
  config.query.k, config.query.n_fit = 6, 3
  return config


def test_query_job_prints_a_table_and_writes_results(tiny_index, tmp_path, capsys):
  directory, _ = tiny_index
  csvs = f"{_csv(tmp_path / 'a.csv')},{_csv(tmp_path / 'b.csv', target=np.exp)}"
  assert jobs.run(_query_config(directory, csvs), str(tmp_path / "out")) == 0
  results = json.loads((tmp_path / "out" / commands.RESULTS_FILE).read_text())
  assert [d["csv"] for d in results["datasets"]] == [str(tmp_path / n) for n in ("a.csv", "b.csv")]
  printed = capsys.readouterr().out
  assert "untrained" in printed and "results.json" in printed
  for dataset in results["datasets"]:
    matches = dataset["matches"]
    assert len(matches) == 6 and dataset["variables"] == {"x_0": "t"}
    fitted = [m["r2"] for m in matches[:3]]
    assert fitted == sorted(fitted, reverse=True) and all(m["r2"] is None for m in matches[3:])
    assert [m["rank"] for m in matches[3:]] == sorted(m["rank"] for m in matches[3:])
    assert all(set(m) >= {"equation", "similarity", "fitted_equation", "r2", "size"}
               for m in matches)
    assert matches[0]["fitted_readable"] in printed


@pytest.mark.parametrize("csv_text, target, message", [
    ("t,y\n1,2\n3,4\n", "z", "has no column 'z'"),
    ("t,y\n1,2\n3,abc\n", "y", ":3: column 'y' holds 'abc'"),
    ("t,y\n1,2\n3,2\n", "y", "y is constant"),
    ("a,b,c,y\n1,2,3,4\n5,6,7,9\n", "y", "3 input columns; this model takes at most 1"),
])
def test_bad_csv_input_is_one_clear_error_and_nothing_is_written(tiny_index, tmp_path, csv_text,
                                                                  target, message):
  directory, _ = tiny_index
  (tmp_path / "data.csv").write_text(csv_text)
  with pytest.raises(UserError, match=message):
    jobs.run(_query_config(directory, str(tmp_path / "data.csv"), target), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_build_job_refuses_a_workdir_of_other_files_and_a_missing_model(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  config = retrieval_configs.get_config("runlocal")
  with pytest.raises(UserError, match="holds other files and no index.json"):
    jobs.run(config, str(tmp_path))
  config = retrieval_configs.get_config("build")
  with pytest.raises(UserError, match="config.model_path='' does not exist"):
    jobs.run(config, str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()
