"""An equation index on disk: a manifest and shards of latents, skeleton keys and equations.

  INDEX/index.json                   the manifest: format, the model's identity, shard counts,
                                     sources and how many of their items were consumed
  INDEX/shards/NNNNN.latents.npy     float32 [count, latent_dim], in scoring form (L2-normalised
                                     when the model normalises its latents), memory-mapped
  INDEX/shards/NNNNN.meta.npz        keys (uint64 skeleton hashes), n_vars, offsets of the lines
  INDEX/shards/NNNNN.entries.jsonl   one {"equation", "skeleton"} object per entry

Every shard but the last holds exactly `shard_size` entries, so entry i is row i % shard_size of
shard i // shard_size, and no array is ever larger than one shard. Files are replaced
atomically (a temporary file, then os.replace); the manifest is written last and is the commit
point: a reader uses only the rows it lists, so a build killed at any moment leaves a valid
index, and the next build continues from the manifest (rows past it are rewritten).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from snip_jax import __version__
from snip_jax.convert.integrity import array_checksums
from snip_jax.errors import UserError
from snip_jax.symbolic.tokenizers import build_vocab

MANIFEST_FILE = "index.json"
SHARDS_DIR = "shards"
LOCK_FILE = ".build.lock"
FORMAT_VERSION = 1


def write_atomic(path: pathlib.Path, write: Callable[[Any], None], mode: str = "wb") -> None:
  """Write `path` through `write(file)` into a temporary file, then rename it into place."""
  encoding = None if "b" in mode else "utf-8"
  with tempfile.NamedTemporaryFile(mode, encoding=encoding, dir=path.parent,
                                   prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
    try:
      write(f)
    except BaseException:
      f.close()
      os.unlink(f.name)
      raise
  os.chmod(f.name, 0o666 & ~_umask())  # as an ordinary new file (temporary files are 0600)
  os.replace(f.name, path)


def _umask() -> int:
  """The process's umask (read by setting it, then restoring it)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_json(path: pathlib.Path, value: Any) -> None:
  """`value` as indented JSON, atomically."""
  write_atomic(path, lambda f: f.write(json.dumps(value, indent=1, default=float) + "\n"), "w")


# ------------------------------------------------------------------------- the model's identity


def _sha256(text: str) -> str:
  """A short (16 hex digits) sha256 of `text`."""
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(model) -> dict:
  """What must match between an index and a model: latent size, vocabulary and params hash
  (over the params, the temperature and the normalisations that shape the latents)."""
  cfg, env = model.model_cfg, model.env_cfg
  vocab = build_vocab(env)
  scoring = {"temperature": float(cfg.clip_temperature),
             "normalize_latents": bool(cfg.normalize_latents),
             "normalize_y": bool(env.normalize_y)}
  params = json.dumps({"checksums": array_checksums(model.params), **scoring}, sort_keys=True)
  return {"latent_dim": int(cfg.latent_dim),
          "vocabulary": {"n_words": vocab.n_words,
                         "sha256": _sha256(" ".join(vocab.equation_id2word))},
          "max_input_dimension": int(env.max_input_dimension),
          "params_sha256": _sha256(params), **scoring}


def check_model(stored: dict, model, where: pathlib.Path) -> None:
  """Refuse a model other than the one that built the index (UserError naming what differs)."""
  mine = model_identity(model)
  fix = (f"use the model it was built with ({stored.get('model_path') or 'unnamed'}, as"
         f" {where / MANIFEST_FILE} records) or build a new index with this model")
  if stored["latent_dim"] != mine["latent_dim"]:
    raise UserError(f"the index {where} was built with a model of latent size"
                    f" {stored['latent_dim']}; this model's is {mine['latent_dim']}: {fix}")
  if stored["vocabulary"] != mine["vocabulary"]:
    raise UserError(f"the index {where} was built with a model of another vocabulary"
                    f" ({stored['vocabulary']['n_words']} equation words; this model has"
                    f" {mine['vocabulary']['n_words']}, or other words): {fix}")
  if stored["params_sha256"] != mine["params_sha256"]:
    raise UserError(f"the index {where} was built with other model weights (params hash"
                    f" {stored['params_sha256']}, this model's {mine['params_sha256']}): {fix}")


# ------------------------------------------------------------------------- shards


@dataclasses.dataclass
class ShardRows:
  """Entries in memory: latents [n, D], skeleton keys, n_vars and their JSON lines."""

  latents: np.ndarray
  keys: np.ndarray
  n_vars: np.ndarray
  lines: list[str]

  @classmethod
  def empty(cls, latent_dim: int) -> "ShardRows":
    """No rows, of latent size `latent_dim`."""
    return cls(np.zeros((0, latent_dim), np.float32), np.zeros(0, np.uint64),
               np.zeros(0, np.int16), [])

  def __len__(self) -> int:
    return len(self.lines)

  def extend(self, other: "ShardRows") -> None:
    """Append `other`'s rows."""
    self.latents = np.concatenate([self.latents, other.latents.astype(np.float32)])
    self.keys = np.concatenate([self.keys, other.keys])
    self.n_vars = np.concatenate([self.n_vars, other.n_vars.astype(np.int16)])
    self.lines = self.lines + other.lines

  def split(self, n: int) -> tuple["ShardRows", "ShardRows"]:
    """(the first n rows, the rest)."""
    head = ShardRows(self.latents[:n], self.keys[:n], self.n_vars[:n], self.lines[:n])
    return head, ShardRows(self.latents[n:], self.keys[n:], self.n_vars[n:], self.lines[n:])


def _shard_path(directory: pathlib.Path, index: int, what: str) -> pathlib.Path:
  """The file `what` (latents.npy, meta.npz, entries.jsonl) of shard `index`."""
  return directory / SHARDS_DIR / f"{index:05d}.{what}"


def write_shard(directory: pathlib.Path, index: int, rows: ShardRows) -> None:
  """The three files of shard `index`, each replaced atomically."""
  encoded = [(line + "\n").encode() for line in rows.lines]
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded], dtype=np.int64)])
  write_atomic(_shard_path(directory, index, "entries.jsonl"), lambda f: f.write(b"".join(encoded)))
  write_atomic(_shard_path(directory, index, "meta.npz"), lambda f: np.savez(
      f, keys=rows.keys, n_vars=rows.n_vars, offsets=offsets.astype(np.int64)))
  write_atomic(_shard_path(directory, index, "latents.npy"),
               lambda f: np.save(f, rows.latents.astype(np.float32), allow_pickle=False))


class Index:
  """An index on disk, read side: shard latents (memory-mapped), n_vars, keys and entries."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = pathlib.Path(directory).absolute()
    path = self.directory / MANIFEST_FILE
    if not path.is_file():
      raise UserError(f"{self.directory} is not an equation index (no {MANIFEST_FILE}): build"
                      " one with --config=configs/retrieval.py:build --workdir=DIR")
    self.manifest = json.loads(path.read_text())
    if self.manifest.get("format_version") != FORMAT_VERSION:
      raise UserError(f"{path} has format_version {self.manifest.get('format_version')}; this"
                      f" version reads {FORMAT_VERSION}: rebuild the index")
    self.shard_size = int(self.manifest["shard_size"])
    self.counts = [int(s["count"]) for s in self.manifest["shards"]]
    self._offsets: dict[int, np.ndarray] = {}

  @property
  def n_entries(self) -> int:
    """Entries in the index (committed)."""
    return sum(self.counts)

  @property
  def latent_dim(self) -> int:
    """The latent size of the model that built the index."""
    return int(self.manifest["model"]["latent_dim"])

  def check_model(self, model) -> None:
    """UserError unless `model` is the one this index was built with."""
    check_model(self.manifest["model"], model, self.directory)

  def latents(self, shard: int) -> np.ndarray:
    """Shard `shard`'s latents [count, D], memory-mapped (read on use)."""
    array = np.load(_shard_path(self.directory, shard, "latents.npy"), mmap_mode="r",
                    allow_pickle=False)
    return array[:self.counts[shard]]

  def meta(self, shard: int) -> dict[str, np.ndarray]:
    """Shard `shard`'s keys, n_vars ([count]) and line offsets ([count + 1])."""
    with np.load(_shard_path(self.directory, shard, "meta.npz"), allow_pickle=False) as meta:
      n = self.counts[shard]
      return {"keys": meta["keys"][:n], "n_vars": meta["n_vars"][:n],
              "offsets": meta["offsets"][:n + 1]}

  def rows(self, shard: int) -> ShardRows:
    """Shard `shard` in memory (the builder reopens the last, partial shard this way)."""
    meta = self.meta(shard)
    text = _shard_path(self.directory, shard, "entries.jsonl").read_bytes()
    lines = text[:meta["offsets"][-1]].decode().splitlines()
    return ShardRows(np.array(self.latents(shard)), meta["keys"], meta["n_vars"], lines)

  def entries(self, ids: Sequence[int]) -> list[dict]:
    """The stored {"equation", "skeleton"} of entries `ids` (global row numbers)."""
    out = []
    for i in ids:
      shard, row = divmod(int(i), self.shard_size)
      if shard not in self._offsets:
        self._offsets[shard] = self.meta(shard)["offsets"]
      offsets = self._offsets[shard]
      with open(_shard_path(self.directory, shard, "entries.jsonl"), "rb") as f:
        f.seek(int(offsets[row]))
        out.append(json.loads(f.read(int(offsets[row + 1] - offsets[row]))))
    return out

  def all_keys(self) -> np.ndarray:
    """Every entry's skeleton key, in entry order."""
    keys = [self.meta(s)["keys"] for s in range(len(self.counts))]
    return np.concatenate(keys) if keys else np.zeros(0, np.uint64)


def new_manifest(model, model_path: str, shard_size: int) -> dict:
  """The manifest of an empty index for `model`."""
  return {"format_version": FORMAT_VERSION, "snip_jax_version": __version__,
          "model": {**model_identity(model), "model_path": model_path},
          "shard_size": shard_size, "shards": [], "sources": []}


@contextlib.contextmanager
def build_lock(directory: pathlib.Path) -> Iterator[None]:
  """Hold the index's build lock: a second build of the same index is refused, not interleaved."""
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / LOCK_FILE, "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f"another build is writing the index {directory}; wait for it to end"
                      " (or stop it) before starting this one") from None
    yield


def remove_uncommitted(directory: pathlib.Path, n_shards: int) -> None:
  """Delete temporary files and shards past the manifest that a killed build left behind."""
  shards = directory / SHARDS_DIR
  shards.mkdir(parents=True, exist_ok=True)
  for path in shards.iterdir():
    stem = path.name.split(".")[0]
    if path.name.endswith(".tmp") or (stem.isdigit() and int(stem) >= n_shards):
      path.unlink()


def find_source(manifest: dict, identity: dict) -> Optional[dict]:
  """The manifest's record of the source `identity` (None: a new source)."""
  return next((s for s in manifest["sources"] if s["identity"] == identity), None)
