"""load_pretrained / convert: the original's latents from tiny.pth, round trips, errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sympy

import snip_jax
from snip_jax.convert import converter
from snip_jax.pretrained import Pretrained

ROOT = pathlib.Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "snip_original"
TINY = FIXTURES / "tiny.pth"


@pytest.fixture(scope="module")
def io():
  return np.load(FIXTURES / "tiny_io.npz"), json.loads((FIXTURES / "tiny_io.json").read_text())


@pytest.fixture(scope="module")
def tiny():
  return snip_jax.load_pretrained(TINY, batch_size=4)


def _dataset(io, i):
  arrays, _ = io
  n, d = arrays["n_points"][i], arrays["d_in"][i]
  return arrays["x_to_fit"][i, :n, :d], arrays["y_to_fit"][i, :n]


def test_embed_points_matches_the_originals_latents(io, tiny):
  arrays, _ = io
  full = [i for i, n in enumerate(arrays["n_points"]) if n == 200]
  xs, ys = zip(*[_dataset(io, i) for i in full])
  z = tiny.embed_points(list(zip(xs, ys)))
  np.testing.assert_allclose(z, arrays["encoder_y_latent"][full], atol=1e-5, rtol=1e-5)
  one = tiny.embed_points(xs[1], ys[1][:, 0])  # a single dataset, y given as [N]
  assert one.shape == (8,)
  np.testing.assert_allclose(one, z[1], atol=1e-6)


def test_a_datasets_latent_does_not_depend_on_its_batch(io, tiny):
  xs, ys = zip(*[_dataset(io, i) for i in range(8)])
  together = tiny.embed_points(list(zip(xs, ys)))  # 8 datasets, batch_size 4: two chunks
  for i in range(8):
    np.testing.assert_allclose(tiny.embed_points(xs[i], ys[i]), together[i], atol=1e-6)


def test_embed_equations_from_prefix_infix_and_sympy(io, tiny):
  arrays, meta = io
  expected = arrays["encoder_f_latent"]
  np.testing.assert_allclose(tiny.embed_equations(meta["prefix"]), expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(tiny.embed_equations(meta["infix"]), expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(tiny.embed_equations(meta["prefix"][0]), expected[0], atol=1e-5)
  a = tiny.embed_equations(sympy.sympify("0.85*x_0 - 0.394"))
  b = tiny.embed_equations("sub,mul,0.85,x_0,0.394")
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_similarity_is_the_clip_logits(io, tiny):
  arrays, _ = io
  z_f, z_y = arrays["encoder_f_latent"], arrays["encoder_y_latent"]
  np.testing.assert_allclose(tiny.similarity(z_f, z_y), arrays["clip_logits_per_f"], atol=1e-5)
  cos = tiny.similarity(z_f, z_f, normalize=True)
  np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)


def test_convert_round_trip_and_export_back(tmp_path, io, tiny):
  arrays, meta = io
  out = converter.convert_pth(TINY, tmp_path / "tiny")
  loaded = snip_jax.load_pretrained(out, batch_size=4)
  assert loaded.model_cfg == tiny.model_cfg and loaded.env_cfg == tiny.env_cfg
  np.testing.assert_array_equal(loaded.embed_equations(meta["prefix"]),
                                tiny.embed_equations(meta["prefix"]))
  with pytest.raises(FileExistsError, match="overwrite"):
    converter.convert_pth(TINY, tmp_path / "tiny")
  npz = converter.export_state_dicts(loaded.params, loaded.model_cfg, tmp_path / "sd.npz")
  exported, reference = np.load(npz), np.load(FIXTURES / "tiny_weights_reference.npz")
  assert sorted(exported.files) == sorted(reference.files)
  for key in reference.files:
    np.testing.assert_array_equal(exported[key], reference[key], err_msg=key)


@pytest.mark.slow
def test_command_lines(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=300)
  out = run("-m", "snip_jax.convert", f"--pth={TINY}", f"--out={tmp_path / 'a'}")
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "a" / "config.json").exists()
  back = run("-m", "snip_jax.convert", f"--from_dir={tmp_path / 'a'}", f"--to_npz={tmp_path / 'a.npz'}")
  assert back.returncode == 0, back.stderr
  launched = run("launch.py", "--config=configs/convert.py", f"--config.pth={TINY}",
                 f"--workdir={tmp_path / 'b'}")
  assert launched.returncode == 0, launched.stderr
  assert json.loads((tmp_path / "b" / "config.json").read_text())["source"]["pth"] == str(TINY)


def test_bad_inputs_get_clear_errors(io, tiny, tmp_path):
  x, y = _dataset(io, 0)
  big_x, big_y = np.concatenate([x, x]), np.concatenate([y, y])
  with pytest.raises(ValueError, match="400 points; the model takes at most max_len=200"):
    tiny.embed_points(big_x, big_y)
  z = tiny.embed_points(big_x, big_y, subsample=np.random.default_rng(0))
  assert z.shape == (8,) and np.all(np.isfinite(z))
  with pytest.raises(ValueError, match="x has 3 input columns; this model takes at most"):
    tiny.embed_points(np.zeros((5, 3)), np.zeros(5))
  with pytest.raises(ValueError, match="the dataset has NaN/inf"):
    tiny.embed_points(np.full((5, 1), np.nan), np.zeros(5))
  with pytest.raises(ValueError, match="equation 1: token 'x_7' is not in this model's vocabulary"):
    tiny.embed_equations(["x_0", "mul,2,x_7"])
  with pytest.raises(ValueError, match="equation 0: unparsable prefix"):
    tiny.embed_equations(["add,x_0"])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    snip_jax.load_pretrained(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="neither a converted checkpoint nor a training workdir"):
    snip_jax.load_pretrained(tmp_path)


def test_normalize_y_models_normalise_the_outputs(io, tiny):
  x, y = _dataset(io, 0)
  normalized = Pretrained(tiny.model_cfg, tiny.env_cfg.replace(normalize_y=True), tiny.params)
  np.testing.assert_allclose(normalized.embed_points(x, y), normalized.embed_points(x, 3 * y - 7),
                             atol=1e-5)


def test_embed_points_reads_lists_and_names_the_wrong_array(io, tiny):
  x, y = _dataset(io, 0)
  expected = tiny.embed_points(x, y)
  assert expected.shape == (8,)
  np.testing.assert_array_equal(tiny.embed_points(x.tolist(), y.tolist()), expected)
  np.testing.assert_array_equal(tiny.embed_points(x[:, 0].tolist(), y[:, 0].tolist()), expected)
  both = tiny.embed_points([(x.tolist(), y.tolist()), (x, y[:, 0])])
  assert both.shape == (2, 8)
  np.testing.assert_allclose(both, [expected, expected], atol=1e-6)
  n = len(x)
  cases = {
      (lambda: tiny.embed_points(x, np.zeros((n, 2)))):
          "y has 2 output columns; this model takes at most max_output_dimension=1",
      (lambda: tiny.embed_points(x)): "y is missing: one dataset is embed_points",
      (lambda: tiny.embed_points([x, x])): r"item 0 of the datasets list is not an \(x, y\) pair",
      (lambda: tiny.embed_points([])): "no datasets given",
      (lambda: tiny.embed_points([], [])): "the dataset is empty",
      (lambda: tiny.embed_points(x.T, y)): rf"x has 1 rows \(shape \(1, {n}\)\) but y has {n}.*"
                                           r"transposed\?",
      (lambda: tiny.embed_points(np.stack([x, x]), np.stack([y, y]))):
          rf"x has shape \(2, {n}, 1\); one dataset is embed_points\(x, y\)",
      (lambda: tiny.embed_points([x, x[:5]], [y, y[:5]])): "x is not a numeric array",
      (lambda: tiny.embed_points([(x, y), (x, y[:5])])):
          rf"dataset 1: x has {n} rows .* but y has 5",
      (lambda: tiny.embed_points(x, "abc")): "y is not a numeric array",
      (lambda: tiny.embed_equations([])): "no equations given",
  }
  for call, message in cases.items():
    with pytest.raises(ValueError, match=message):
      call()


def test_embed_equations_refuses_code_without_running_it(tiny, tmp_path):
  canary = tmp_path / "canary"
  for text in (f"__import__('os').system('touch {canary}')",
               f"(__import__('os').system('touch {canary}') or 1)*x_0", "x_0 + 9**9**9**9"):
    with pytest.raises(ValueError, match="equation 0: cannot parse infix expression"):
      tiny.embed_equations(text)
  assert not canary.exists()
