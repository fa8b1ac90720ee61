"""Write `.pth` files in `torch.save`'s zip layout, without torch.

For giving weights trained here back to PyTorch users: `torch.load(path, weights_only=True)`
returns the same nested dicts with torch tensors. Layout: `archive/data.pkl` (pickle
protocol 2; every array becomes `torch._utils._rebuild_tensor_v2` over a typed storage
referenced by a persistent id), one uncompressed, 64-byte-aligned `archive/data/<key>` record
per array, plus the small version records torch writes.
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_CLASSES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}
_ALIGNMENT = 64


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


class _Pickler:
  """Protocol-2 opcodes for plain data and arrays; arrays are collected as storage records."""

  def __init__(self):
    self.records: list[np.ndarray] = []

  def dump(self, obj: Any) -> bytes:
    return pickle.PROTO + b"\x02" + self._ops(obj) + pickle.STOP

  def _ops(self, obj: Any) -> bytes:
    if isinstance(obj, np.ndarray):
      return self._tensor(obj)
    if isinstance(obj, np.generic):
      return self._ops(obj.item())
    if isinstance(obj, collections.OrderedDict):
      return (_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
              + self._items(obj))
    if isinstance(obj, dict):
      return pickle.EMPTY_DICT + self._items(obj)
    if isinstance(obj, list):
      return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(self._ops, obj)) + pickle.APPENDS
    if isinstance(obj, tuple):
      return pickle.MARK + b"".join(map(self._ops, obj)) + pickle.TUPLE
    if isinstance(obj, os.PathLike):
      return self._ops(os.fspath(obj))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
      return pickle.dumps(obj, protocol=2)[2:-1]
    raise TypeError(f"cannot write {type(obj).__name__} to a .pth: use dicts, lists, tuples,"
                    " numpy arrays and plain scalars/strings")

  def _items(self, mapping) -> bytes:
    if not mapping:
      return b""
    body = b"".join(self._ops(k) + self._ops(v) for k, v in mapping.items())
    return pickle.MARK + body + pickle.SETITEMS

  def _tensor(self, array: np.ndarray) -> bytes:
    if array.dtype not in _STORAGE_CLASSES:
      raise TypeError(f"no torch storage type for dtype {array.dtype}")
    array = array if array.flags.c_contiguous else array.copy(order="C")
    key = str(len(self.records))
    self.records.append(array)
    storage = (pickle.MARK + self._ops("storage") + _global("torch", _STORAGE_CLASSES[array.dtype])
               + self._ops(key) + self._ops("cpu") + self._ops(array.size) + pickle.TUPLE
               + pickle.BINPERSID)
    strides = tuple(s // array.itemsize for s in array.strides)
    args = (pickle.MARK + storage + self._ops(0) + self._ops(tuple(array.shape))
            + self._ops(strides) + self._ops(False)
            + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.TUPLE)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _aligned_info(zf: zipfile.ZipFile, name: str, size: int) -> zipfile.ZipInfo:
  """A stored member whose data starts on a 64-byte boundary (padding in an extra field)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = size
  header_end = zf.fp.tell() + 30 + len(name.encode()) + 4
  pad = -header_end % _ALIGNMENT
  info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
  return info


def save_pth(obj: Any, path: str | os.PathLike, archive: str = "archive") -> pathlib.Path:
  """Write `obj` (nested dicts/lists of numpy arrays and plain data) as a torch.save file."""
  path = pathlib.Path(path)
  pickler = _Pickler()
  data_pkl = pickler.dump(obj)
  small = [("data.pkl", data_pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
           ("byteorder", b"little")]
  tmp = path.with_name(path.name + ".tmp")
  with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
    for name, data in small:
      zf.writestr(_aligned_info(zf, f"{archive}/{name}", len(data)), data)
    for key, array in enumerate(pickler.records):
      name = f"{archive}/data/{key}"
      with zf.open(_aligned_info(zf, name, array.nbytes), "w") as member:
        member.write(memoryview(array.reshape(-1).view(np.uint8)))
    zf.writestr(_aligned_info(zf, f"{archive}/version", 2), b"3\n")
  os.replace(tmp, path)
  return path
