"""The torch-free .pth writer: round trips through the reader, and exported SNIP checkpoints."""

import collections
import pathlib
import zipfile

import ml_dtypes
import numpy as np
import pytest

import snip_jax
from snip_jax.convert import converter
from snip_jax.convert.pth import load_pth
from snip_jax.convert.pth_writer import save_pth

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"


def test_round_trip_of_arrays_and_plain_data(tmp_path):
  rng = np.random.default_rng(0)
  obj = {
      "params": {"lr": 1e-5, "name": "x", "flag": True, "none": None, "dims": [1, 2, (3, 4)],
                 "path": pathlib.PurePosixPath("/a/b")},
      "module": collections.OrderedDict([
          ("w", rng.normal(size=(3, 4)).astype(np.float32)),
          ("t", rng.normal(size=(4, 3)).astype(np.float32).T),  # non-contiguous input
          ("d", rng.normal(size=5)), ("h", np.arange(4, dtype=np.float16)),
          ("b", np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)),
          ("i", np.arange(6, dtype=np.int64).reshape(2, 3)), ("m", np.array([True, False])),
          ("s", np.array(3.0, dtype=np.float32)), ("e", np.zeros((0, 2), np.float32)),
      ]),
      "empty": {},
  }
  path = save_pth(obj, tmp_path / "x.pth")
  back = load_pth(path)
  assert isinstance(back["module"], collections.OrderedDict)
  assert list(back["module"]) == list(obj["module"])
  for key, value in obj["module"].items():
    assert back["module"][key].dtype == value.dtype and back["module"][key].shape == value.shape
    np.testing.assert_array_equal(back["module"][key], value)
  assert back["params"]["path"] == "/a/b" and back["params"]["dims"] == [1, 2, (3, 4)]
  assert back["params"]["lr"] == 1e-5 and back["params"]["none"] is None and back["empty"] == {}
  with zipfile.ZipFile(path) as zf:
    for info in zf.infolist():
      if "/data/" in info.filename:
        assert info.compress_type == zipfile.ZIP_STORED


def test_exported_snip_checkpoint_reloads_with_the_same_weights_and_latents(tmp_path):
  tiny = snip_jax.load_pretrained(FIXTURES / "tiny.pth", batch_size=2)
  path = converter.export_pth(tiny.params, tiny.model_cfg, tiny.env_cfg, tmp_path / "back.pth")
  reference = np.load(FIXTURES / "tiny_weights_reference.npz")
  back = load_pth(path)
  for name in reference.files:
    module, key = name.split("/", 1)
    np.testing.assert_array_equal(back[module][key], reference[name], err_msg=name)
  again = snip_jax.load_pretrained(path, batch_size=2)
  assert again.model_cfg == tiny.model_cfg and again.env_cfg == tiny.env_cfg
  eqs = ["add,0.5,x_0", "mul,x_0,x_1"]
  np.testing.assert_array_equal(again.embed_equations(eqs), tiny.embed_equations(eqs))


def test_unsupported_objects_are_refused(tmp_path):
  with pytest.raises(TypeError, match="cannot write set"):
    save_pth({"a": {1, 2}}, tmp_path / "bad.pth")
  with pytest.raises(TypeError, match="no torch storage type for dtype complex64"):
    save_pth({"a": np.zeros(2, np.complex64)}, tmp_path / "bad.pth")
