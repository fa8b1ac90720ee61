"""Torch-free .pth reader: the original SNIP checkpoints, dtypes and views, refusals and errors.

Checkpoints other than the fixtures are written here with the stdlib in torch.save's layout
(`<archive>/data.pkl`, `byteorder`, 64-byte aligned uncompressed `data/<key>` records, ...) and
with the exact pickle structure torch 2.13 emits (learned from real torch.save output).
"""

import json
import os
import pathlib
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest

from snip_jax.convert.pth import CheckpointError, UnsafeCheckpointError, load_pth

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
MODULES = ("embedder", "encoder_y", "encoder_f", "decoder", "regressor", "classifier")
TINY_LAYERS = 2


# ---------------------------------------------------------------------------------------------
# A minimal torch.save writer (stdlib only)
# ---------------------------------------------------------------------------------------------


class G:
  """A reference to the global `module.name`, pickled as a GLOBAL opcode (nothing imported)."""

  def __init__(self, qualname):
    self.module, self.name = qualname.rsplit(".", 1)


class Call:
  """`func(*args)` in the pickle: what REDUCE does when the file is loaded."""

  def __init__(self, func, *args):
    self.func, self.args = func, args


class Raw:
  """Opcodes inserted verbatim (e.g. a fragment pickled by numpy itself)."""

  def __init__(self, opcodes):
    self.opcodes = opcodes


class PersId:
  """A persistent id, as torch writes for each storage reference."""

  def __init__(self, *fields):
    self.fields = fields


def _ops(obj) -> bytes:
  """Protocol-2 opcodes for `obj`: plain data via pickle itself, plus globals, calls, ids."""
  if isinstance(obj, Raw):
    return obj.opcodes
  if isinstance(obj, G):
    return pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
  if isinstance(obj, Call):
    return _ops(obj.func) + _ops(tuple(obj.args)) + pickle.REDUCE
  if isinstance(obj, PersId):
    return _ops(tuple(obj.fields)) + pickle.BINPERSID
  if isinstance(obj, tuple):
    return pickle.MARK + b"".join(map(_ops, obj)) + pickle.TUPLE
  if isinstance(obj, list):
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(_ops, obj)) + pickle.APPENDS
  if isinstance(obj, dict):
    items = b"".join(_ops(k) + _ops(v) for k, v in obj.items())
    return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS
  return pickle.dumps(obj, protocol=2)[2:-1]


def _pickle(obj) -> bytes:
  """A whole protocol-2 pickle, as torch.save writes data.pkl."""
  return pickle.PROTO + b"\x02" + _ops(obj) + pickle.STOP


def storage(storage_class, key, numel):
  """torch's persistent id for a storage record (location "cpu")."""
  return PersId("storage", G(f"torch.{storage_class}"), key, "cpu", numel)


def tensor(store, offset, size, stride):
  """`_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`, as torch writes it."""
  hooks = Call(G("collections.OrderedDict"))
  return Call(G("torch._utils._rebuild_tensor_v2"), store, offset, tuple(size), tuple(stride),
              False, hooks)


def _aligned_info(zf, name, compress):
  """A ZipInfo whose data starts 64-byte aligned, padded with an "FB" extra field like torch."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  start = zf.fp.tell() + 30 + len(name.encode()) + 4
  info.extra = b"FB" + struct.pack("<H", -start % 64) + b"Z" * (-start % 64)
  return info


def write_checkpoint(path, obj, records=None, archive="archive", byteorder=b"little",
                     compress=False, pkl=None):
  """A zip in torch.save's layout: data.pkl (from `obj`, or raw `pkl`), metadata, data/<key>."""
  entries = [("data.pkl", _pickle(obj) if pkl is None else pkl), (".format_version", b"1"),
             (".storage_alignment", b"64")]
  entries += [("byteorder", byteorder)] if byteorder is not None else []
  entries += [(f"data/{key}", data) for key, data in (records or {}).items()]
  entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in entries:
      zf.writestr(_aligned_info(zf, f"{archive}/{name}", compress), data)
  return path


def _single_line_error(exc_info, path):
  """The error message, checked to be one line that names the file."""
  message = str(exc_info.value)
  assert "\n" not in message and os.fspath(path) in message
  return message


# ---------------------------------------------------------------------------------------------
# The original's checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  return load_pth(FIXTURES / "tiny.pth")


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURES / "tiny_weights_reference.npz") as data:
    return {name: data[name] for name in data.files}


def test_tiny_top_level(tiny):
  assert list(tiny) == ["epoch", "n_total_iter", "best_metrics", "best_stopping_criterion",
                        "params", *MODULES, "optimizer"]
  assert (tiny["epoch"], tiny["n_total_iter"], tiny["best_stopping_criterion"]) == (0, 3, None)
  assert tiny["best_metrics"]["r2"] == -np.inf
  assert all(type(tiny[m]).__name__ == "OrderedDict" for m in MODULES)


def test_tiny_state_dicts_equal_torch_load(tiny, reference):
  loaded = {f"{m}/{k}": v for m in MODULES for k, v in tiny[m].items()}
  assert list(loaded) == list(reference)
  for name, expected in reference.items():
    assert isinstance(loaded[name], np.ndarray), name
    assert loaded[name].dtype == expected.dtype and loaded[name].shape == expected.shape, name
    np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_tiny_keys_follow_the_original_modules(tiny):
  manifest = json.loads((FIXTURES / "state_dict_manifest.json").read_text())
  modules = manifest["sets"]["d1"]["modules"]
  for module in MODULES:
    full = modules[module]["state_dict"]
    expected = [k for k in full if _layer_index(k) < TINY_LAYERS]
    assert list(tiny[module]) == expected, module
    assert {str(v.dtype) for v in tiny[module].values()} == {"float32"}


def _layer_index(key):
  """The first `.N.` index of a state_dict key (the layer for per-layer lists), else 0."""
  match = re.search(r"\.(\d+)\.", key)
  return int(match.group(1)) if match else 0


def test_tiny_tied_decoder_weights_share_memory(tiny):
  decoder = tiny["decoder"]
  assert np.shares_memory(decoder["proj.weight"], decoder["embeddings.weight"])
  np.testing.assert_array_equal(decoder["proj.weight"], decoder["embeddings.weight"])


def test_tiny_params_path_is_pure(tiny):
  path = tiny["params"]["eval_dump_path"]
  assert type(path) is pathlib.PurePosixPath and not isinstance(path, pathlib.Path)
  assert path == pathlib.PurePosixPath("dumped/golden/tiny/evals_all")
  assert tiny["params"]["latent_dim"] == 8 and tiny["params"]["mantissa_len"] == 2


def test_tiny_optimizer_state_matches_parameter_order(tiny):
  # named_parameters() order: every state_dict entry but the tied decoder proj.weight
  params = [(m, k, v) for m in MODULES for k, v in tiny[m].items()
            if (m, k) != ("decoder", "proj.weight")]
  optimizer = tiny["optimizer"]
  group = optimizer["param_groups"][0]
  assert group["params"] == list(range(len(params))) == sorted(optimizer["state"])
  assert group["num_updates"] == 3 and group["betas"] == (0.9, 0.999)
  for index, (module, key, param) in enumerate(params):
    state = optimizer["state"][index]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == param.shape
    assert state["exp_avg"].dtype == np.float32 and np.all(state["exp_avg_sq"] >= 0)
    # CLIP steps reach only the embedder and the encoders, and never their z_projection
    trained = module in MODULES[:3] and not key.startswith("z_projection.")
    assert state["step"] == (3 if trained else 0), (module, key)
    assert np.any(state["exp_avg_sq"] > 0) == trained, (module, key)


def test_init_checkpoints(tiny):
  init = load_pth(FIXTURES / "tiny_init.pth")
  replay_init = load_pth(FIXTURES / "tiny_replay_init.pth")
  assert list(init) == list(replay_init) == list(MODULES)
  for module in MODULES:
    assert list(init[module]) == list(tiny[module]) == list(replay_init[module])
    for key, value in init[module].items():
      np.testing.assert_array_equal(value, replay_init[module][key])
  # CLIP trains only the embedder and the encoders; the rest is untouched by 3 steps
  for module in ("decoder", "regressor", "classifier"):
    for key, value in init[module].items():
      np.testing.assert_array_equal(value, tiny[module][key])
  assert not np.array_equal(init["encoder_f"]["bottleneck_module.fc1.weight"],
                            tiny["encoder_f"]["bottleneck_module.fc1.weight"])
  np.testing.assert_array_equal(init["decoder"]["proj.weight"], init["decoder"]["embeddings.weight"])


def test_mmap_and_copy_agree_and_writes_stay_private(tmp_path):
  path = tmp_path / "tiny.pth"
  path.write_bytes((FIXTURES / "tiny.pth").read_bytes())
  before = path.read_bytes()
  mapped, copied = load_pth(path), load_pth(path, mmap=False)
  for module in MODULES:
    for key, value in mapped[module].items():
      np.testing.assert_array_equal(value, copied[module][key])
  weight = mapped["embedder"]["fc.weight"]
  assert weight.flags.writeable and copied["embedder"]["fc.weight"].flags.writeable
  weight[...] = 7.0
  assert path.read_bytes() == before
  np.testing.assert_array_equal(load_pth(path)["embedder"]["fc.weight"],
                                copied["embedder"]["fc.weight"])


# ---------------------------------------------------------------------------------------------
# Dtypes, views and other pickled values
# ---------------------------------------------------------------------------------------------


def _dtype_checkpoint(path, compress=False):
  """Tensors of several dtypes, plus a transposed, offset view sharing a float32 storage."""
  base = np.arange(24, dtype=np.float32)
  records = {
      "0": np.array([1.5, -2.0], np.float16).tobytes(),
      "1": struct.pack("<2H", 0x3FC0, 0xC000),  # bfloat16 1.5, -2.0 (as torch wrote them)
      "2": np.array([1, -2**40], "<i8").tobytes(),
      "3": bytes([1, 0, 1]),
      "4": base.tobytes(),
      "5": np.array([0.25, -1e300], "<f8").tobytes(),
      "6": np.array([-7, 2**31 - 1], "<i4").tobytes(),
      "7": np.array([-128, 5], np.int8).tobytes(),
      "8": bytes([255, 0]),
      "9": struct.pack("<2H", 65535, 1),
      "10": bytes([0x3C, 0xC0]),  # float8_e5m2 1.0, -2.0
  }
  obj = {
      "f16": tensor(storage("HalfStorage", "0", 2), 0, (2,), (1,)),
      "bf16": tensor(storage("BFloat16Storage", "1", 2), 0, (2,), (1,)),
      "i64": tensor(storage("LongStorage", "2", 2), 0, (2,), (1,)),
      "bool": tensor(storage("BoolStorage", "3", 3), 1, (2,), (1,)),
      "base": tensor(storage("FloatStorage", "4", 24), 0, (4, 6), (6, 1)),
      "view": tensor(storage("FloatStorage", "4", 24), 8, (4, 3), (1, 6)),
      "scalar": tensor(storage("FloatStorage", "4", 24), 23, (), ()),
      "empty": tensor(storage("FloatStorage", "4", 24), 0, (0, 3), (3, 1)),
      "f64": tensor(storage("DoubleStorage", "5", 2), 0, (2,), (1,)),
      "i32": tensor(storage("IntStorage", "6", 2), 0, (2,), (1,)),
      "i8": tensor(storage("CharStorage", "7", 2), 0, (2,), (1,)),
      "u8": tensor(storage("ByteStorage", "8", 2), 0, (2,), (1,)),
      "u16": Call(G("torch._utils._rebuild_tensor_v3"),
                  PersId("storage", G("torch.storage.UntypedStorage"), "9", "cpu", 4), 0, (2,),
                  (1,), False, Call(G("collections.OrderedDict")), G("torch.uint16")),
      "f8": Call(G("torch._utils._rebuild_tensor_v3"),
                 PersId("storage", G("torch.storage.UntypedStorage"), "10", "cuda:0", 2), 0,
                 (2,), (1,), False, Call(G("collections.OrderedDict")), G("torch.float8_e5m2")),
      "param": Call(G("torch._utils._rebuild_parameter"),
                    tensor(storage("FloatStorage", "4", 24), 2, (3,), (1,)), True,
                    Call(G("collections.OrderedDict"))),
  }
  return write_checkpoint(path, obj, records, compress=compress)


@pytest.mark.parametrize("compress, mmap", [(False, True), (False, False), (True, True)])
def test_dtypes_and_views(tmp_path, compress, mmap):
  loaded = load_pth(_dtype_checkpoint(tmp_path / "dtypes.pth", compress), mmap=mmap)
  expected = {"f16": ("float16", [1.5, -2.0]), "bf16": ("bfloat16", [1.5, -2.0]),
              "i64": ("int64", [1, -2**40]), "bool": ("bool", [False, True]),
              "f64": ("float64", [0.25, -1e300]), "i32": ("int32", [-7, 2**31 - 1]),
              "i8": ("int8", [-128, 5]), "u8": ("uint8", [255, 0]),
              "u16": ("uint16", [65535, 1]), "f8": ("float8_e5m2", [1.0, -2.0]),
              "param": ("float32", [2.0, 3.0, 4.0])}
  for name, (dtype, values) in expected.items():
    assert loaded[name].dtype.name == dtype, name
    assert loaded[name].astype(np.float64).tolist() == values, name
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(loaded["base"], base)
  np.testing.assert_array_equal(loaded["view"], base[1:, 2:].T)
  assert loaded["view"].strides == (4, 24) and not loaded["view"].flags.c_contiguous
  assert np.shares_memory(loaded["view"], loaded["base"])
  assert np.shares_memory(loaded["param"], loaded["base"])
  assert loaded["scalar"].shape == () and loaded["scalar"] == 23.0
  assert loaded["empty"].shape == (0, 3) and loaded["empty"].dtype == np.float32


def test_pure_data_values(tmp_path):
  numpy_array = pickle.dumps(np.arange(3.0), protocol=2)[2:-1]
  obj = {"set": {1, 2}, "frozenset": frozenset({3}), "bytes": b"ab\x00", "empty_bytes": b"",
         "slice": slice(1, 2), "complex": 1 + 2j, "np_scalar": np.float64(2.5),
         "size": Call(G("torch.Size"), (2, 3)), "device": Call(G("torch.device"), "cuda", 1),
         "windows": Call(G("pathlib.WindowsPath"), "c:\\", "x"),
         "dtype": G("torch.bfloat16"), "array": Raw(numpy_array),
         "array_np1": Raw(numpy_array.replace(b"numpy._core.", b"numpy.core."))}
  loaded = load_pth(write_checkpoint(tmp_path / "values.pth", obj))
  assert loaded["set"] == {1, 2} and loaded["frozenset"] == frozenset({3})
  assert loaded["bytes"] == b"ab\x00" and loaded["empty_bytes"] == b""
  assert loaded["slice"] == slice(1, 2) and loaded["complex"] == 1 + 2j
  assert loaded["np_scalar"] == 2.5 and loaded["np_scalar"].dtype == np.float64
  assert loaded["size"] == (2, 3) and loaded["device"] == "cuda:1"
  assert loaded["windows"] == pathlib.PureWindowsPath("c:/x")
  assert loaded["dtype"].name == "bfloat16"
  for name in ("array", "array_np1"):
    np.testing.assert_array_equal(loaded[name], np.arange(3.0))


# ---------------------------------------------------------------------------------------------
# Refusals: nothing in the pickle may run
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qualname, args", [
    ("os.system", ("touch {marker}",)),
    ("posix.system", ("touch {marker}",)),
    ("builtins.eval", ("open({marker!r}, 'w').close()",)),
    ("__builtin__.exec", ("open({marker!r}, 'w').close()",)),
    ("subprocess.Popen", (("touch", "{marker}"),)),
    ("builtins.getattr", ("{marker}", "upper")),
    ("collections.OrderedDict.fromkeys", ("{marker}",)),
    ("torch._utils._rebuild_tensor_v2.__globals__", ("{marker}",)),
    ("torch.load", ("{marker}",)),
    ("numpy.load", ("{marker}",)),
])
def test_refuses_globals_outside_the_allowlist(tmp_path, qualname, args):
  marker = os.fspath(tmp_path / "MARKER")
  args = tuple(tuple(a.format(marker=marker) for a in arg) if isinstance(arg, tuple)
               else arg.format(marker=marker) for arg in args)
  path = write_checkpoint(tmp_path / "evil.pth", {"weights": Call(G(qualname), *args)})
  with pytest.raises(UnsafeCheckpointError) as exc_info:
    load_pth(path)
  message = _single_line_error(exc_info, path)
  assert message == (f"refusing to load {path}: it references {qualname}, "
                     "which is not allowed in a checkpoint")
  assert isinstance(exc_info.value, ValueError)
  assert not os.path.exists(marker)


def test_refuses_a_global_after_allowed_calls(tmp_path):
  marker = tmp_path / "MARKER"
  obj = [Call(G("collections.OrderedDict")), Call(G("os.system"), f"touch {marker}")]
  path = write_checkpoint(tmp_path / "evil.pth", obj)
  with pytest.raises(UnsafeCheckpointError, match="os.system"):
    load_pth(path)
  assert not marker.exists()


@pytest.mark.parametrize("qualname", ["pathlib.PosixPath", "pathlib.PurePosixPath",
                                      "torch._utils._rebuild_tensor_v2", "collections.OrderedDict",
                                      "torch.FloatStorage", "torch.float32", "numpy.dtype"])
@pytest.mark.parametrize("state", [(None, {"__str__": G("builtins.set"), "__defaults__": (1,)}),
                                   {"__str__": G("builtins.set"), "dtype": G("builtins.set")}])
def test_build_cannot_modify_allowed_globals(tmp_path, qualname, state):
  before = {name: dict(vars(value)) if hasattr(value, "__dict__") else repr(value)
            for name, value in _allowed_objects().items()}
  evil = Raw(_ops(G(qualname)) + _ops(state) + pickle.BUILD)
  path = write_checkpoint(tmp_path / "build.pth", {"x": evil})
  try:
    load_pth(path)
  except CheckpointError:
    pass
  after = {name: dict(vars(value)) if hasattr(value, "__dict__") else repr(value)
           for name, value in _allowed_objects().items()}
  assert after == before
  assert str(pathlib.PurePosixPath("a/b")) == "a/b"
  assert load_pth(FIXTURES / "tiny_init.pth")["embedder"]["fc.bias"].dtype == np.float32


def _allowed_objects():
  """The objects the reader hands to pickle, and the classes whose instances it returns."""
  from snip_jax.convert import pth
  return {**pth._SAFE_GLOBALS, "PurePosixPath": pathlib.PurePosixPath,
          "PureWindowsPath": pathlib.PureWindowsPath, "StorageType": pth._StorageType}


# ---------------------------------------------------------------------------------------------
# Damaged or foreign files: one clear line each
# ---------------------------------------------------------------------------------------------


def _assert_error(path, expected):
  """`load_pth(path)` raises a one-line CheckpointError naming the file and containing `expected`."""
  with pytest.raises(CheckpointError) as exc_info:
    load_pth(path)
  assert not isinstance(exc_info.value, UnsafeCheckpointError)
  assert expected in _single_line_error(exc_info, path)


@pytest.mark.parametrize("content", ["half", "random", "empty", "text"])
def test_not_a_zip(tmp_path, content):
  tiny = (FIXTURES / "tiny.pth").read_bytes()
  data = {"half": tiny[:len(tiny) // 2], "random": np.random.default_rng(0).bytes(4096),
          "empty": b"", "text": b"epoch: 3\n"}[content]
  path = tmp_path / "bad.pth"
  path.write_bytes(data)
  _assert_error(path, f"{path} is not a valid checkpoint zip (truncated or corrupt)")


def test_corrupt_pickle_record_fails_crc(tmp_path):
  data = bytearray((FIXTURES / "tiny.pth").read_bytes())
  data[2000] ^= 0xFF
  path = tmp_path / "bad.pth"
  path.write_bytes(bytes(data))
  _assert_error(path, "record checkpoint/data.pkl does not match its CRC-32 (the file is corrupt)")


def _flip_in_storage(tmp_path, record="checkpoint/data/0"):
  """tiny.pth copied with one byte flipped in the middle of storage record `record`."""
  data = bytearray((FIXTURES / "tiny.pth").read_bytes())
  with zipfile.ZipFile(FIXTURES / "tiny.pth") as zf:
    info = zf.getinfo(record)
  name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
  start = info.header_offset + 30 + name_len + extra_len
  data[start + info.file_size // 2] ^= 0x01
  path = tmp_path / "flipped.pth"
  path.write_bytes(bytes(data))
  return path


@pytest.mark.parametrize("mmap", [True, False])
def test_flipped_byte_in_a_tensor_storage_fails_its_crc(tmp_path, mmap):
  path = _flip_in_storage(tmp_path)
  with pytest.raises(CheckpointError) as exc_info:
    load_pth(path, mmap=mmap)
  assert _single_line_error(exc_info, path).endswith(
      "is not a valid checkpoint: record checkpoint/data/0 does not match its CRC-32 (the file is"
      " corrupt)")


def test_verify_crc_false_loads_a_trusted_file_as_it_is(tmp_path, tiny):
  path = _flip_in_storage(tmp_path)
  loaded = load_pth(path, verify_crc=False)
  differ = [key for module in MODULES for key, value in tiny[module].items()
            if not np.array_equal(value, loaded[module][key], equal_nan=True)]
  assert len(differ) == 1


def test_legacy_format(tmp_path):
  path = tmp_path / "legacy.pth"
  header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
  path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header))
  _assert_error(path, "legacy (non-zip) .pth format, which is not supported; re-save it with "
                "torch>=1.6: torch.save(torch.load(f), f)")


def test_zip_without_data_pkl(tmp_path):
  path = tmp_path / "other.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/weights.bin", b"\0" * 16)
  _assert_error(path, "the zip has no <archive>/data.pkl record")


def test_missing_storage_record(tmp_path):
  obj = {"w": tensor(storage("FloatStorage", "7", 2), 0, (2,), (1,))}
  path = write_checkpoint(tmp_path / "missing.pth", obj, {"0": b"\0" * 8})
  _assert_error(path, "storage record archive/data/7 is missing from the zip")


def test_short_storage_record(tmp_path):
  obj = {"w": tensor(storage("FloatStorage", "0", 4), 0, (4,), (1,))}
  path = write_checkpoint(tmp_path / "short.pth", obj, {"0": b"\0" * 8})
  _assert_error(path, "storage record archive/data/0 holds 8 bytes, 4 float32 elements need 16")


@pytest.mark.parametrize("offset, size, stride", [(1, (4,), (1,)), (0, (2, 3), (3, 1)),
                                                  (0, (3,), (-1,)), (0, (10**6,), (2,))])
def test_view_outside_its_storage(tmp_path, offset, size, stride):
  obj = {"w": tensor(storage("FloatStorage", "0", 4), offset, size, stride)}
  path = write_checkpoint(tmp_path / "oob.pth", obj, {"0": b"\0" * 16})
  with pytest.raises(CheckpointError, match="a tensor .*(outside|stride)"):
    load_pth(path)


def test_tensor_from_something_else(tmp_path):
  fake = Raw(pickle.dumps(np.zeros(4, np.float32), protocol=2)[2:-1])
  path = write_checkpoint(tmp_path / "fake.pth", {"w": tensor(fake, 0, (4,), (1,))})
  _assert_error(path, "a tensor is built from something that is not a storage record")


def test_pickle_that_is_not_a_checkpoint(tmp_path):
  path = write_checkpoint(tmp_path / "garbage.pth", None, pkl=b"this is not a pickle")
  _assert_error(path, "data.pkl does not unpickle")


def test_bad_persistent_id(tmp_path):
  path = write_checkpoint(tmp_path / "pid.pth", {"w": PersId("storage", "FloatStorage", "0")})
  _assert_error(path, "data.pkl has an unexpected persistent id")


def test_big_endian(tmp_path):
  path = write_checkpoint(tmp_path / "be.pth", {"epoch": 1}, byteorder=b"big")
  _assert_error(path, "only little-endian checkpoints are supported")


def test_no_byteorder_record_means_little_endian(tmp_path):
  obj = {"w": tensor(storage("FloatStorage", "0", 2), 0, (2,), (1,))}
  path = write_checkpoint(tmp_path / "old.pth", obj, {"0": struct.pack("<2f", 1, 2)},
                          byteorder=None)
  assert load_pth(path)["w"].tolist() == [1.0, 2.0]
