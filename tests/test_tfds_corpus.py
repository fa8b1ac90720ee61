"""data.prefix -> TFDS ArrayRecord -> Grain batches (snip_jax.data.pipeline), without TensorFlow."""

import itertools
import pathlib
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from snip_jax.data import corpus, export, pipeline
from snip_jax.data import tfds_corpus as tc
from snip_jax.data.batching import collate
from snip_jax.symbolic import default_env_config

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
CFG = default_env_config(max_input_dimension=2)
PROP_CFG = default_env_config(is_proppred=True, property_type="ncr")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  """A 61-sample corpus (odd, so two shards leave one out) built as a 'train' split."""
  root = tmp_path_factory.mktemp("plain")
  prefix = export.export_corpus(root / "export", CFG, n_samples=61, chunk_size=16)
  tc.build_tfds_corpus(prefix, root / "tfds", CFG)
  return prefix, root / "tfds"


@pytest.fixture(scope="module")
def prop(tmp_path_factory):
  """A property corpus, split into train/valid/test by split_corpus."""
  root = tmp_path_factory.mktemp("prop")
  prefix = export.export_corpus(root / "export", PROP_CFG, n_samples=48, chunk_size=16)
  export.split_corpus(prefix, root / "split", n_valid=6, n_test=6)
  tc.build_tfds_corpus(root / "split", root / "tfds", PROP_CFG)
  return root / "split", root / "tfds"


def _assert_rows_match_collate(source, samples, cfg):
  assert len(source) == len(samples)
  for i, sample in enumerate(samples):
    expected = collate([sample], cfg)
    row = source[i]
    assert row["tree"] == sample.tree.prefix()
    assert set(row) - {"tree"} == set(expected)
    for key, value in expected.items():
      assert row[key].dtype == value.dtype, key
      np.testing.assert_array_equal(row[key], value[0], err_msg=f"line {i + 1} {key}")


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _read(ds, start=0, stop=None, **iterate):
  """Batches start..stop (the end of a finite `ds` if None) of a pipeline dataset, as a list."""
  with pipeline.iterate(ds, start=start, stop=stop, **iterate) as batches:
    return list(batches)


def _array_record_batches(source, batch_size, seed, start=0, stop=None, **kwargs):
  """pipeline.corpus_batches of an ArrayRecord source, read as training reads it."""
  return _read(pipeline.corpus_batches(source, batch_size, seed, **kwargs), start, stop,
               read_threads=8)


def _jsonl_batches(path, cfg, batch_size, seed, start=0, stop=None, **kwargs):
  """pipeline.corpus_batches of a data.prefix read into memory."""
  return _read(pipeline.corpus_batches(pipeline.corpus_samples(path, cfg), batch_size, seed,
                                       env_cfg=cfg, **kwargs), start, stop)


def _fingerprints(batches):
  """One identity per example: its x values (random floats) plus its equation."""
  return [b["x_values"][i].tobytes() + b["equations"][i].tobytes()
          for b in batches for i in range(len(b["n_points"]))]


def test_examples_equal_collate_of_each_reloaded_sample_in_order(plain):
  prefix, data_dir = plain
  samples = list(corpus.read_corpus(prefix, CFG))
  _assert_rows_match_collate(tc.corpus_source(data_dir, "train", CFG), samples, CFG)
  assert "tensorflow" not in sys.modules


def test_property_splits_equal_collate_and_keep_target_property(prop):
  split_dir, data_dir = prop
  for split in ("train", "valid", "test"):
    samples = list(corpus.read_corpus(split_dir / f"data.prefix.{split}", PROP_CFG))
    source = tc.corpus_source(data_dir, split, PROP_CFG)
    assert source.has_target_property
    _assert_rows_match_collate(source, samples, PROP_CFG)


@pytest.mark.parametrize("which, cfg", [("plain", CFG), ("prop", PROP_CFG)])
def test_batches_have_exactly_the_collate_shapes_and_dtypes(which, cfg, request):
  prefix, data_dir = request.getfixturevalue(which)
  path = prefix if which == "plain" else prefix / "data.prefix.train"
  expected = collate(list(itertools.islice(corpus.read_corpus(path, cfg), 8)), cfg)
  batch, = _array_record_batches(tc.corpus_source(data_dir, "train", cfg), 8, 0, stop=1)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == \
      {k: (v.shape, v.dtype) for k, v in expected.items()}


def test_shuffle_is_deterministic_per_seed_and_reshuffles_each_epoch(plain):
  source = tc.corpus_source(plain[1], "train", CFG)
  run = lambda seed: _array_record_batches(source, 8, seed, num_epochs=2, drop_remainder=False)
  first = run(3)
  _assert_batches_equal(first, run(3))
  assert _fingerprints(first) != _fingerprints(run(4))
  ids = _fingerprints(first)
  assert sorted(ids[:61]) == sorted(ids[61:]) and ids[:61] != ids[61:]


def test_two_shards_partition_the_data(plain):
  source = tc.corpus_source(plain[1], "train", CFG)
  shards = [_fingerprints(_array_record_batches(source, 5, 1, num_epochs=1, shard_index=i,
                                                shard_count=2, drop_remainder=False))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 30
  assert not set(shards[0]) & set(shards[1])
  everything = set(_fingerprints(_array_record_batches(source, 61, 1, num_epochs=1)))
  assert set(shards[0]) | set(shards[1]) < everything


def test_resume_at_batch_k_continues_the_same_stream(plain):
  source = tc.corpus_source(plain[1], "train", CFG)
  full = _array_record_batches(source, 8, 5, shard_index=1, shard_count=2, stop=12)
  resumed = _array_record_batches(source, 8, 5, shard_index=1, shard_count=2, start=7, stop=12)
  _assert_batches_equal(full[7:], resumed)


def test_env_config_mismatch_is_refused(plain, tmp_path):
  prefix, data_dir = plain
  other = CFG.replace(max_len=100)
  with pytest.raises(tc.EnvMismatchError, match="max_len: built with 200, requested 100"):
    tc.corpus_source(data_dir, "train", other)
  with pytest.raises(tc.EnvMismatchError, match="max_len"):
    tc.build_tfds_corpus(prefix, data_dir, other)
  other_file = tmp_path / "data.prefix"
  other_file.write_text("".join(prefix.read_text().splitlines(True)[:10]))
  with pytest.raises(ValueError, match="built from other files"):
    tc.build_tfds_corpus(other_file, data_dir, CFG)
  assert tc.build_tfds_corpus(prefix, data_dir, CFG).info.splits["train"].num_examples == 61


def test_jsonl_batches_equal_the_array_record_path_shuffled_or_not(plain):
  """The data.prefix source is read, shuffled, sharded and batched as the ArrayRecord one."""
  prefix, data_dir = plain
  source = tc.corpus_source(data_dir, "train", CFG)
  for shuffle in (False, True):
    for kwargs, start in (({"num_epochs": 2}, 0),
                          ({"num_epochs": 1, "shard_index": 1, "shard_count": 2,
                            "drop_remainder": False}, 2)):
      _assert_batches_equal(_jsonl_batches(prefix, CFG, 8, 7, start, shuffle=shuffle, **kwargs),
                            _array_record_batches(source, 8, 7, start, shuffle=shuffle, **kwargs))


def test_jsonl_shuffle_is_seeded(plain):
  prefix = plain[0]
  run = lambda seed: _fingerprints(_jsonl_batches(prefix, CFG, 8, seed, shuffle=True,
                                                  num_epochs=1, drop_remainder=False))
  assert run(0) == run(0) != run(1)
  in_order = _fingerprints(_jsonl_batches(prefix, CFG, 8, 0, shuffle=False, num_epochs=1,
                                          drop_remainder=False))
  assert sorted(run(0)) == sorted(in_order) and run(0) != in_order


def test_original_export_fixture_converts(tmp_path):
  cfg = default_env_config()
  path = FIXTURES / "original_export_d1.prefix.gz"
  builder = tc.build_tfds_corpus({"train": path}, tmp_path, cfg)
  samples = list(corpus.read_corpus(path, cfg))
  _assert_rows_match_collate(tc.corpus_source(tmp_path, "train", cfg), samples, cfg)
  standard = tfds.data_source("snip_corpus", data_dir=str(tmp_path))["train"]
  assert len(standard) == builder.info.splits["train"].num_examples == len(samples)


def test_compressed_format_1_corpora_read_the_same_batches(plain, tmp_path):
  prefix, data_dir = plain
  tc.build_tfds_corpus(prefix, tmp_path / "zlib", CFG, compress=True)
  raw, zlib = (tc.dataset_dir(d) for d in (data_dir, tmp_path / "zlib"))
  assert tc._read_metadata(zlib)["format_version"] == 1
  assert tc._read_metadata(raw)["format_version"] == tc.FORMAT_VERSION == 2
  _assert_batches_equal(
      _array_record_batches(tc.corpus_source(tmp_path / "zlib", "train", CFG), 8, 3, stop=9),
      _array_record_batches(tc.corpus_source(data_dir, "train", CFG), 8, 3, stop=9))
