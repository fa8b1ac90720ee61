"""A torch-free, safe reader for PyTorch `.pth` checkpoints (the `torch.save` zip format, torch >= 1.6).

`load_pth(path)` returns the checkpoint's top-level object (for SNIP: a dict with `epoch`,
`params`, one state_dict per module, `optimizer`, ...) with every tensor as a numpy array of
the same dtype, shape, strides and storage offset. Nothing in the file can run code: its
`data.pkl` is unpickled with an explicit allowlist of globals (tensor and storage rebuilds,
`OrderedDict`, pure paths, numpy arrays/scalars/dtypes, a few pure-data builtins); any other
global raises `UnsafeCheckpointError`, naming it, before anything is called.

Layout read (what torch.save writes): one top-level folder `<archive>/` with `data.pkl`,
`byteorder`, `version`, ... and one uncompressed, 64-byte aligned record `data/<key>` per
storage. With `mmap=True` (default) those records are mapped copy-on-write and the arrays are
views of the mapping: no copy, pages are read on first touch, writes stay private to this
process. Tensors that shared a storage in torch (SNIP's tied decoder `embeddings.weight` and
`proj.weight`) share memory here too. Every record read is checked against its zip CRC-32
(torch does not check them), mapped storages included: that reads each mapped page once (0.26 s
per GB from the page cache, docs/BENCHMARKS.md); `verify_crc=False` skips it for the mapped
storages of a trusted file, which then load without reading. A mapped file
must not be truncated or rewritten in place while its arrays are alive (reading them would
then crash the process): load with `mmap=False` to copy everything into memory instead.

Pure-data conversions: `pathlib.PosixPath`/`WindowsPath`/`Path` become `PurePosixPath`/
`PureWindowsPath`/`PurePath` (no filesystem access), `torch.Size` a tuple, `torch.device` a
string such as "cuda:0", torch dtypes numpy dtypes, autograd fields (`requires_grad`, hooks)
are dropped and `nn.Parameter`s become plain arrays. `bfloat16` and `float8_*` use the
`ml_dtypes` scalar types that jax uses, so `jnp.asarray` takes them without a copy.

Not supported, each with a one-line error: the legacy pre-1.6 (non-zip) format, big-endian
archives, and tensors whose rebuild is not on the allowlist (quantized, sparse, nested, tensor
subclasses, tensors with Python attributes).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import mmap as mmap_module
import operator
import os
import pathlib
import pickle
import struct
import types
import zipfile
import zlib
from typing import Any, Optional

import ml_dtypes
import numpy as np

try:
  from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
  from numpy.core import multiarray as _multiarray

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_pth"]

# Pre-1.6 torch.save wrote this number as its first pickle; the LONG1 opcode holding it.
_LEGACY_MAGIC_OPCODE = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_LOCAL_HEADER_SIZE = 30

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
}
_UNTYPED_STORAGES = ("torch.storage.UntypedStorage", "torch.UntypedStorage")
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64,
    "complex128": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}
# What zipfile raises for damaged archives and records, besides BadZipFile itself.
_ZIP_READ_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, struct.error, UnicodeDecodeError,
                    NotImplementedError)
_ZIPFILE_CRC_ERROR = "Bad CRC-32"  # how zipfile's BadZipFile for a CRC mismatch starts
# Python 3 writes protocol-2 pickles (torch's default) with Python 2 module names.
_MODULE_ALIASES = {"__builtin__": "builtins"}


class CheckpointError(ValueError):
  """A file that cannot be read as a torch.save checkpoint; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
  """A checkpoint whose pickle references a global outside the allowlist (it could run code)."""


class _Invalid(Exception):
  """Inconsistent content found while reading a checkpoint; `load_pth` adds the file name."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  """What a `torch.*Storage` global unpickles to: its element dtype (None for raw bytes)."""
  dtype: Optional[np.dtype]


@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
  """An opaque storage from `persistent_load`, so only real records can back a tensor."""
  array: np.ndarray


def _strided_view(storage, storage_offset, size, stride, dtype=None) -> np.ndarray:
  """A view of `storage` with torch's element offset, shape and strides, bounds-checked."""
  if not isinstance(storage, _Storage):
    raise _Invalid("a tensor is built from something that is not a storage record")
  flat = storage.array if dtype is None else _reinterpret(storage.array, dtype)
  offset = operator.index(storage_offset)
  shape = tuple(operator.index(n) for n in size)
  strides = tuple(operator.index(s) for s in stride)
  if len(shape) != len(strides) or min((offset,) + shape + strides) < 0:
    raise _Invalid(f"a tensor has offset {offset}, size {shape} and stride {strides}")
  if 0 in shape:
    return np.zeros(shape, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
  if last >= len(flat):
    raise _Invalid(f"a tensor (offset {offset}, size {shape}, stride {strides}) lies outside "
                   f"its storage of {len(flat)} elements")
  byte_strides = tuple(s * flat.itemsize for s in strides)
  return np.ndarray(shape, flat.dtype, buffer=flat.view(np.uint8), offset=offset * flat.itemsize,
                    strides=byte_strides)


def _reinterpret(flat: np.ndarray, dtype) -> np.ndarray:
  """Raw storage bytes viewed as `dtype` (what `_rebuild_tensor_v3` does with its dtype)."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject or flat.nbytes % dtype.itemsize:
    raise _Invalid(f"a tensor has dtype {dtype!r} that does not fit its storage")
  return flat.view(dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
  """`torch._utils._rebuild_tensor`: a tensor as a strided view of its storage."""
  return _strided_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """`torch._utils._rebuild_tensor_v2`, what torch.save writes per tensor; drops autograd fields."""
  return _strided_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  """`torch._utils._rebuild_tensor_v3`, for dtypes without a typed storage class (uint16, float8)."""
  return _strided_view(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  """`torch._utils._rebuild_parameter`: an `nn.Parameter` becomes its data array."""
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  """`torch._utils._rebuild_parameter_with_state`: the data array; Python attributes dropped."""
  return data


def _torch_size(dims=()):
  """`torch.Size` as a plain tuple of ints."""
  return tuple(operator.index(d) for d in dims)


def _torch_device(kind, index=None):
  """`torch.device` as its string form ("cpu", "cuda:0"): the arrays live on the host anyway."""
  if not isinstance(kind, str):
    raise _Invalid(f"a torch.device has type {kind!r}")
  return kind if index is None else f"{kind}:{operator.index(index)}"


def _posix_path(*parts):
  """`pathlib.PosixPath` (or `PurePosixPath`) as a pure path: no filesystem access."""
  return pathlib.PurePosixPath(*parts)


def _windows_path(*parts):
  """`pathlib.WindowsPath` (or `PureWindowsPath`) as a pure path, readable on any OS."""
  return pathlib.PureWindowsPath(*parts)


def _native_path(*parts):
  """`pathlib.Path` (or `PurePath`) as the pure path flavour of this OS."""
  return pathlib.PurePath(*parts)


def _latin1_bytes(text, encoding):
  """`_codecs.encode` as protocol 2 uses it for bytes objects, and nothing else."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise _Invalid("_codecs.encode is used for something other than a bytes object")
  return text.encode("latin-1")


def _empty_bytes():
  """`bytes()` as protocol 2 writes `b""`; any argument (a size, an iterable) is refused."""
  return b""


_SAFE_GLOBALS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.Size": _torch_size,
    "torch.device": _torch_device,
    "collections.OrderedDict": collections.OrderedDict,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytes": _empty_bytes,
    "_codecs.encode": _latin1_bytes,
    **{f"torch.{name}": np.dtype(dtype) for name, dtype in _TORCH_DTYPES.items()},
    **{f"{module}.{name}": getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
    **{f"{module}.{name}": pure
       for module in ("pathlib", "pathlib._local")
       for name, pure in (("PosixPath", _posix_path), ("PurePosixPath", _posix_path),
                          ("WindowsPath", _windows_path), ("PureWindowsPath", _windows_path),
                          ("Path", _native_path), ("PurePath", _native_path))},
}


class _CheckpointUnpickler(pickle.Unpickler):
  """Unpickles `data.pkl` with only allowlisted globals; storages come from the archive."""

  def __init__(self, data: bytes, archive: "_Archive", name: str):
    super().__init__(io.BytesIO(data), encoding="utf-8")
    self._archive = archive
    self._name = name

  def find_class(self, module, name):
    """The allowlisted object for `module.name`; anything else is refused before it is called."""
    qualname = f"{_MODULE_ALIASES.get(module, module)}.{name}"
    if qualname in _UNTYPED_STORAGES:
      return _StorageType(None)
    if qualname.startswith("torch.") and qualname[6:] in _STORAGE_DTYPES:
      return _StorageType(np.dtype(_STORAGE_DTYPES[qualname[6:]]))
    if qualname in _SAFE_GLOBALS:
      value = _SAFE_GLOBALS[qualname]
      # A fresh wrapper per reference: pickle's BUILD may set attributes on what it gets, and
      # must not be able to change functions shared with later loads.
      return functools.partial(value) if isinstance(value, types.FunctionType) else value
    raise UnsafeCheckpointError(f"refusing to load {self._name}: it references {module}.{name}, "
                                "which is not allowed in a checkpoint")

  def persistent_load(self, pid):
    """A storage record for torch's ('storage', storage_type, key, location, numel) id."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise _Invalid(f"data.pkl has an unexpected persistent id {str(pid)[:80]}")
    _, storage_type, key, _, numel = pid
    dtype = storage_type.dtype if storage_type.dtype is not None else np.dtype(np.uint8)
    return _Storage(self._archive.storage(key, dtype, operator.index(numel)))


class _Archive:
  """The records of one open torch.save zip, storages as (memory-mapped) numpy arrays."""

  def __init__(self, zf: zipfile.ZipFile, mapped: Optional[mmap_module.mmap], verify_crc: bool):
    self._zf = zf
    self._mapped = mapped
    self._verify_crc = verify_crc
    names = zf.namelist()
    self._prefix = names[0].split("/")[0] if names else ""
    self._raw = {}

  def record(self, name: str) -> Optional[bytes]:
    """The bytes of `<archive>/<name>`, or None when the zip has no such record."""
    try:
      info = self._zf.getinfo(f"{self._prefix}/{name}")
    except KeyError:
      return None
    return self._read(info)

  def _read(self, info: zipfile.ZipInfo) -> bytes:
    """A record's bytes, decompressed and CRC-checked; a bad CRC is named, other damage is a
    BadZipFile."""
    try:
      return self._zf.read(info)
    except zipfile.BadZipFile as exc:
      if str(exc).startswith(_ZIPFILE_CRC_ERROR):
        raise _Invalid(_crc_mismatch(info.filename)) from None
      raise zipfile.BadZipFile(f"{info.filename}: {exc}") from exc
    except _ZIP_READ_ERRORS as exc:
      raise zipfile.BadZipFile(f"{info.filename}: {exc}") from exc

  def storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    """Storage `key` as a 1-D array of `numel` `dtype` elements, shared by all its tensors."""
    if key not in self._raw:
      self._raw[key] = self._read_storage(f"{self._prefix}/data/{key}")
    raw = self._raw[key]
    if numel < 0 or raw.nbytes < numel * dtype.itemsize:
      raise _Invalid(f"storage record {self._prefix}/data/{key} holds {raw.nbytes} bytes, "
                     f"{numel} {dtype} elements need {max(numel, 0) * dtype.itemsize}")
    return raw[:numel * dtype.itemsize].view(dtype)

  def _read_storage(self, name: str) -> np.ndarray:
    """A storage record's bytes: a view into the mapping when stored, else a private copy."""
    try:
      info = self._zf.getinfo(name)
    except KeyError:
      raise _Invalid(f"storage record {name} is missing from the zip") from None
    if self._mapped is None or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
      return np.frombuffer(bytearray(self._read(info)), np.uint8)
    start = self._data_offset(info)
    if start + info.file_size > len(self._mapped):
      raise _Invalid(f"storage record {name} extends past the end of the file")
    raw = np.frombuffer(self._mapped, np.uint8, info.file_size, start)
    if self._verify_crc and zlib.crc32(raw) != info.CRC:
      raise _Invalid(_crc_mismatch(name))
    return raw

  def _data_offset(self, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, name and extra field."""
    header = self._mapped[info.header_offset:info.header_offset + _ZIP_LOCAL_HEADER_SIZE]
    if len(header) < _ZIP_LOCAL_HEADER_SIZE or header[:4] != _ZIP_LOCAL_HEADER:
      raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_len + extra_len


def _crc_mismatch(record: str) -> str:
  """What a record whose bytes do not match its zip CRC-32 is reported as."""
  return f"record {record} does not match its CRC-32 (the file is corrupt)"


def _check_container(head: bytes, name: str) -> None:
  """Refuses, with the reason, files that are not zips: legacy torch pickles, anything else."""
  if head.startswith(b"\x80") and _LEGACY_MAGIC_OPCODE in head:
    raise CheckpointError(f"{name} uses the legacy (non-zip) .pth format, which is not "
                          "supported; re-save it with torch>=1.6: torch.save(torch.load(f), f)")
  if not head.startswith(_ZIP_LOCAL_HEADER):
    raise CheckpointError(f"{name} is not a valid checkpoint zip (truncated or corrupt)")


def _unpickle(archive: _Archive, name: str) -> Any:
  """The top-level object of the archive's data.pkl, unpickled through the allowlist."""
  byteorder = archive.record("byteorder")
  if byteorder not in (None, b"little"):
    raise _Invalid(f"its byteorder is {byteorder!r}; only little-endian checkpoints are supported")
  data = archive.record("data.pkl")
  if data is None:
    raise _Invalid("the zip has no <archive>/data.pkl record (is it a torch.save file?)")
  try:
    result = _CheckpointUnpickler(data, archive, name).load()
  except (CheckpointError, _Invalid, zipfile.BadZipFile):
    raise
  except Exception as exc:
    detail = " ".join(str(exc).split())[:200]
    raise _Invalid(f"data.pkl does not unpickle ({type(exc).__name__}: {detail})") from exc
  return result.array if isinstance(result, _Storage) else result


def load_pth(path: str | os.PathLike, *, mmap: bool = True, verify_crc: bool = True) -> Any:
  """The checkpoint at `path` (torch.save zip) with numpy arrays for tensors, unpickled safely.

  With `mmap=True` storages are zero-copy, copy-on-write views of the file; `mmap=False`
  reads them into memory (use it if the file may be rewritten while the arrays are in use).
  Every record is checked against its zip CRC-32; `verify_crc=False` skips that for the mapped
  storages (a trusted huge file: nothing is then read until used). Raises
  `UnsafeCheckpointError` for a pickle referencing a non-allowlisted global and
  `CheckpointError` (both ValueErrors) for anything else that is not a readable checkpoint,
  such as a record whose bytes do not match its CRC-32 (named in the message).
  """
  name = os.fspath(path)
  with open(path, "rb") as f:
    _check_container(f.read(32), name)
    try:
      with zipfile.ZipFile(f) as zf:
        mapped = mmap_module.mmap(f.fileno(), 0, access=mmap_module.ACCESS_COPY) if mmap else None
        return _unpickle(_Archive(zf, mapped, verify_crc), name)
    except _ZIP_READ_ERRORS as exc:
      raise CheckpointError(f"{name} is not a valid checkpoint zip (truncated or corrupt)") from exc
    except _Invalid as exc:
      raise CheckpointError(f"{name} is not a valid checkpoint: {exc}") from None
