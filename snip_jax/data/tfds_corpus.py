"""Exported `data.prefix` corpora as TFDS ArrayRecord datasets, read with Grain; no TensorFlow.

What works without TensorFlow (tensorflow-datasets 4.9.10, array-record 0.8.6, grain 0.2.18;
TensorFlow is never imported, the tests check `sys.modules`):
- Writing: `SnipCorpus`, a `tfds.core.GeneratorBasedBuilder`, with `file_format='array_record'`
  and plain `download_and_prepare()` (no download_config, no Beam; `build_tfds_corpus` only
  points its unused download_dir at a temporary folder). TFDS serialises the
  `tf.train.Example` protos with its own protobuf copy and writes through `array_record`.
- Reading: `tfds.builder_from_directory(...).as_data_source(split)` (random access:
  `__len__`, `__getitem__`, `__getitems__`), and `tfds.data_source('snip_corpus',
  data_dir=...)` too, since the builder is not registered and TFDS falls back to the files.
- float64 `x_values` / `y_values` are stored exactly: a TFDS `Tensor` with the default
  encoding goes through `tf.train.Example`'s FloatList, which is float32 (1e300 -> inf), so
  every array feature here is raw bytes: `Encoding.BYTES` (format 2, the default) or
  `Encoding.ZLIB` (format 1, what earlier versions wrote; `build_tfds_corpus(...,
  compress=True)`). Both are read (TFDS decodes what the dataset's features.json says); format
  2 reads faster and is no larger on disk, since ArrayRecord compresses its record groups.
- `SnipCorpus.code_path` is overridden: for a builder defined inside a package, TFDS 4.9.10
  looks it up with `importlib_resources`, which it does not declare for Python >= 3.9.
- Scalars come back from TFDS as Python ints/floats; `CorpusSource` casts them back to the
  dtypes `collate` produces (int32, float32).

Layout: `<data_dir>/snip_corpus/1.0.0/` with `snip_corpus-<split>.array_record-XXXXX-of-YYYYY`,
`dataset_info.json`, `features.json` and `metadata.json` (our env config, format version,
source files and target-property counts). Examples keep the data.prefix line order
(`disable_shuffling=True`); the arrays are `collate`'s rows, so a training batch is laid out
exactly as from live generation. Shuffling happens at read time, per epoch, with Grain.

Reading for training: `snip_jax.data.pipeline.corpus_batches(corpus_source(...), ...)`, the
same Grain pipeline (shuffle per epoch -> shard -> repeat -> batch) as a data.prefix read into
memory, so batch k is a pure function of (seed, shard, k) and a run resumes at batch k.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from snip_jax.data.batching import MAX_EQUATION_LEN, collate
from snip_jax.data.corpus import PREFIX_FILE, CorpusError, read_corpus
from snip_jax.symbolic.config import EnvConfig

DATASET_NAME = "snip_corpus"
FORMAT_VERSION = 2  # 2: arrays as raw bytes; 1: zlib-compressed (compress=True)
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "valid", "test")
_GROUP = 256  # samples tokenised per `collate` call while building
_ARRAY_KEYS = ("points", "equations", "x_values", "y_values")
_SCALAR_KEYS = ("n_points", "equation_lengths", "d_in", "d_out")


class EnvMismatchError(ValueError):
  """A dataset built for one environment config was asked for with another."""


# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------


def _env_dict(env_cfg: EnvConfig) -> dict:
  """The env config as it reads back from metadata.json, so the two compare equal."""
  return json.loads(json.dumps(dataclasses.asdict(env_cfg)))


def _features(env_cfg: EnvConfig, compress: bool = False) -> tfds.features.FeaturesDict:
  """Per-example features: `collate`'s rows (no batch dim), arrays as raw (zlib) bytes."""
  zlib = tfds.features.Encoding.ZLIB if compress else tfds.features.Encoding.BYTES
  width = (env_cfg.max_input_dimension + env_cfg.max_output_dimension) * env_cfg.tokens_per_float
  max_len = env_cfg.max_len
  return tfds.features.FeaturesDict({
      "points": tfds.features.Tensor(shape=(max_len, width), dtype=np.int32, encoding=zlib),
      "n_points": np.int32,
      "equations": tfds.features.Tensor(shape=(MAX_EQUATION_LEN,), dtype=np.int32,
                                        encoding=zlib),
      "equation_lengths": np.int32,
      "x_values": tfds.features.Tensor(shape=(max_len, env_cfg.max_input_dimension),
                                       dtype=np.float64, encoding=zlib),
      "y_values": tfds.features.Tensor(shape=(max_len, env_cfg.max_output_dimension),
                                       dtype=np.float64, encoding=zlib),
      "d_in": np.int32,
      "d_out": np.int32,
      "target_property": np.float32,
      "tree": tfds.features.Text(),
  })


def _file_digest(path: pathlib.Path) -> str:
  """sha256 of a source file: a rebuild into the same data_dir must use the same corpus."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _source_record(path: pathlib.Path) -> dict:
  """Where a split came from, kept in metadata.json to recognise a rebuild of the same files."""
  return {"file": str(path.resolve()), "bytes": path.stat().st_size,
          "sha256": _file_digest(path)}


class SnipCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """data.prefix files -> TFDS ArrayRecord dataset of tokenised examples, one per line."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "collate-layout examples from data.prefix corpora."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file: TFDS 4.9.10's own lookup imports `importlib_resources`, not installed here."""
    return epath.Path(__file__)

  def __init__(self, *, env_cfg: EnvConfig, prefix_paths: Mapping[str, pathlib.Path],
               compress: bool = False, **kwargs):
    self._env_cfg = env_cfg
    self._compress = compress
    self._prefix_paths = {split: pathlib.Path(p) for split, p in prefix_paths.items()}
    self.sources = {split: _source_record(p) for split, p in self._prefix_paths.items()}
    self._target_counts: dict[str, dict[str, int]] = {}
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict(
        format_version=1 if self._compress else FORMAT_VERSION, env=_env_dict(self._env_cfg),
        max_equation_len=MAX_EQUATION_LEN, sources=self.sources, splits=self._target_counts)
    return tfds.core.DatasetInfo(builder=self, features=_features(self._env_cfg, self._compress),
                                 metadata=metadata, disable_shuffling=True,
                                 description="SNIP data.prefix corpus, tokenised as collate.")

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, path)
            for split, path in self._prefix_paths.items()}

  def _generate_examples(self, split: str, path: pathlib.Path):
    """(line index, example) in file order; counts which lines carry a target property."""
    counts = self._target_counts.setdefault(split, {"n_examples": 0,
                                                    "n_with_target_property": 0})
    group, index = [], 0
    for sample in read_corpus(path, self._env_cfg):
      group.append(sample)
      if len(group) == _GROUP:
        yield from self._tokenise(path, index, group, counts)
        index, group = index + len(group), []
    if group:
      yield from self._tokenise(path, index, group, counts)

  def _tokenise(self, path, start: int, samples, counts):
    """`collate` a group of samples and split the batch back into per-line examples."""
    try:
      batch = collate(samples, self._env_cfg)
    except ValueError as err:
      raise CorpusError(f"{path}: lines {start + 1}-{start + len(samples)} do not fit the env"
                        f" config: {err}") from None
    for i, sample in enumerate(samples):
      target = sample.target_property
      counts["n_examples"] += 1
      counts["n_with_target_property"] += target is not None
      example = {key: batch[key][i] for key in _ARRAY_KEYS + _SCALAR_KEYS}
      example["target_property"] = np.float32(np.nan if target is None else target)
      example["tree"] = sample.tree.prefix()
      yield start + i, example


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def _resolve_prefix_paths(prefix_paths) -> dict[str, pathlib.Path]:
  """{split: file}: a dict as given, a split_corpus directory, or one file as 'train'."""
  if isinstance(prefix_paths, Mapping):
    paths = {split: pathlib.Path(p) for split, p in prefix_paths.items()}
  else:
    path = pathlib.Path(prefix_paths)
    if path.is_dir():
      paths = {s: path / f"{PREFIX_FILE}.{s}" for s in SPLITS
               if (path / f"{PREFIX_FILE}.{s}").exists()}
      if not paths:
        raise FileNotFoundError(f"{path} has no {PREFIX_FILE}.train/.valid/.test (split_corpus"
                                " output); pass the files as {split: path}")
    else:
      paths = {"train": path}
  for split, path in paths.items():
    if not path.is_file():
      raise FileNotFoundError(f"split {split!r}: {path} is not a file")
  return paths


def dataset_dir(data_dir: str | os.PathLike) -> pathlib.Path:
  """The versioned directory of the dataset: <data_dir>/snip_corpus/1.0.0."""
  return pathlib.Path(data_dir) / DATASET_NAME / str(SnipCorpus.VERSION)


def build_tfds_corpus(prefix_paths, data_dir: str | os.PathLike, env_cfg: EnvConfig,
                      compress: bool = False) -> SnipCorpus:
  """Convert data.prefix files into `<data_dir>/snip_corpus/1.0.0` (ArrayRecord); returns it.

  `prefix_paths`: {split: path}, a split_corpus output directory, or one file (-> 'train').
  Reuses a finished build of the same files and env config; refuses a different one.
  `compress`: zlib-compress each array as earlier versions did (format 1; slower to read, no
  smaller: ArrayRecord compresses its record groups anyway).
  """
  paths = _resolve_prefix_paths(prefix_paths)
  existing = dataset_dir(data_dir)
  metadata = None
  if (existing / "dataset_info.json").exists():
    metadata = _read_metadata(existing)
    _check_env(existing, metadata, env_cfg)
  builder = SnipCorpus(env_cfg=env_cfg, prefix_paths=paths, data_dir=str(data_dir),
                       compress=compress)
  if metadata is not None:
    if _digests(metadata.get("sources", {})) != _digests(builder.sources):
      raise ValueError(f"{existing} already holds a corpus built from other files"
                       f" ({_describe_sources(metadata.get('sources', {}))}); use a new"
                       " data_dir or delete that one")
    logging.info("%s is already built from these files; reusing it", existing)
    return builder
  with tempfile.TemporaryDirectory() as scratch:
    builder.download_and_prepare(download_dir=scratch)
  logging.info("built %s: %s", builder.data_dir,
               {s: v.num_examples for s, v in builder.info.splits.items()})
  return builder


def _digests(sources: dict) -> dict:
  """{split: sha256}: the same files moved elsewhere still match."""
  return {split: src.get("sha256") for split, src in sources.items()}


def _describe_sources(sources: dict) -> str:
  """`split: file` pairs for an error message."""
  return ", ".join(f"{split}: {src.get('file')}" for split, src in sources.items())


# ---------------------------------------------------------------------------------------------
# Read
# ---------------------------------------------------------------------------------------------


def _read_metadata(directory: pathlib.Path) -> dict:
  """metadata.json of a built dataset; says what to do when it is not one of ours."""
  path = directory / "metadata.json"
  if not path.exists():
    raise FileNotFoundError(f"{directory} has no metadata.json: not a dataset written by"
                            " build_tfds_corpus (or the build did not finish); rebuild it")
  metadata = json.loads(path.read_text())
  if metadata.get("format_version") not in READABLE_VERSIONS:
    raise ValueError(f"{directory} has format_version {metadata.get('format_version')};"
                     f" this code reads {READABLE_VERSIONS}: rebuild it with build_tfds_corpus")
  return metadata


def _check_env(directory: pathlib.Path, metadata: dict, env_cfg: EnvConfig) -> None:
  """Refuse a dataset tokenised for another env config: its arrays would be misread."""
  stored, wanted = metadata.get("env", {}), _env_dict(env_cfg)
  changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
  if changed:
    details = "; ".join(f"{k}: built with {stored.get(k)!r}, requested {wanted.get(k)!r}"
                        for k in changed)
    raise EnvMismatchError(
        f"{directory} was built for a different env config ({details}). Pass the env config"
        " it was built with, or rebuild the corpus with this one into another data_dir.")


class CorpusSource:
  """Random access to one split: `collate`'s per-example rows (+ `tree`, `point_mask`)."""

  def __init__(self, tfds_source, env_cfg: EnvConfig, split: str, has_target_property: bool):
    self._source = tfds_source
    self.env_cfg = env_cfg
    self.split = split
    self.has_target_property = has_target_property
    self._positions = np.arange(env_cfg.max_len)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return self._convert(self._source[index])

  def __getitems__(self, indices) -> list[dict]:
    return [self._convert(e) for e in self._source.__getitems__(list(indices))]

  def _getitems(self, indices) -> list[dict]:
    """Grain's batched-read hook: one ArrayRecord read per batch instead of one per example."""
    return self.__getitems__(indices)

  def __repr__(self) -> str:
    return f"CorpusSource(split={self.split!r}, len={len(self)})"

  def _convert(self, example: dict) -> dict:
    """TFDS's decoded example -> the dtypes `collate` gives (TFDS returns Python scalars)."""
    out = {key: example[key] for key in _ARRAY_KEYS}
    for key in _SCALAR_KEYS:
      out[key] = np.int32(example[key])
    out["point_mask"] = self._positions < out["n_points"]
    if self.has_target_property:
      out["target_property"] = np.float32(example["target_property"])
    out["tree"] = example["tree"].decode("utf-8")
    return out


def corpus_source(data_dir: str | os.PathLike, split: str, env_cfg: EnvConfig) -> CorpusSource:
  """Random-access source over a built split; refuses a dataset built for another env config.

  `data_dir` is what was given to `build_tfds_corpus` (or the versioned directory itself).
  `target_property` is included iff every example of the split has one, as in `collate`.
  """
  directory = pathlib.Path(data_dir)
  if not (directory / "dataset_info.json").exists():
    directory = dataset_dir(data_dir)
  if not (directory / "dataset_info.json").exists():
    raise FileNotFoundError(f"no {DATASET_NAME} dataset in {data_dir}: build it first with"
                            " build_tfds_corpus(prefix_paths, data_dir, env_cfg)")
  metadata = _read_metadata(directory)
  _check_env(directory, metadata, env_cfg)
  builder = tfds.builder_from_directory(str(directory))
  if split not in builder.info.splits:
    raise ValueError(f"{directory} has splits {sorted(builder.info.splits)}, not {split!r}")
  counts = metadata.get("splits", {}).get(split, {})
  n_with = counts.get("n_with_target_property", 0)
  if 0 < n_with < counts.get("n_examples", 0):
    logging.warning("%s split %s: only %d of %d examples have a target_property; batches leave"
                    " it out", directory, split, n_with, counts["n_examples"])
  has_target = n_with > 0 and n_with == counts.get("n_examples")
  return CorpusSource(builder.as_data_source(split), env_cfg, split, has_target)
