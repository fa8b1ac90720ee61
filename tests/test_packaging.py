"""snip-jax as a library: the command and its presets, the version in outputs, and the wheel.

The wheel test builds the wheel offline from a copy of the sources (this environment's
setuptools and wheel, no build isolation), installs it without dependencies into a fresh
virtualenv that borrows this environment's packages through a .pth file, and runs it from a
directory outside the checkout with no repository on the path.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest

import snip_jax
from configs import pretrain
from snip_jax.convert import converter
from snip_jax.model import ModelConfig
from snip_jax.symbolic.config import default_env_config
from snip_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "snip_jax", "configs")
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "JAX_PLATFORMS": "cpu"}
PRESETS = ("convert", "export", "pretrain", "proppred")
JOBS = ("export", "convert", "pretrain", "proppred", "proppred_eval")
TINY_EXPORT = ("--config.export.n_samples=20", "--config.export.num_workers=0",
               "--config.export.n_valid=0", "--config.export.n_test=0")
IMPORT_CHECK = """
import importlib.metadata, importlib.util, json, snip_jax
from snip_jax.configs import convert, export, pretrain, proppred
configs = [m.get_config(a) for m, a in ((convert, ""), (export, "runlocal"),
           (pretrain, "runlocal"), (proppred, "ncr,frozen,runlocal"))]
print(json.dumps({"version": snip_jax.__version__, "file": snip_jax.__file__,
                  "metadata": importlib.metadata.version("snip-jax"),
                  "jobs": [c.job for c in configs],
                  "top_level_configs": importlib.util.find_spec("configs") is not None}))
"""


def _run(args, cwd, **kwargs):
  """`args` in `cwd` without PYTHONPATH; the completed process, output as text."""
  return subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True,
                        text=True, timeout=120, **kwargs)


def _checked(args, cwd):
  """`args` in `cwd`; its stdout, after asserting that it succeeded."""
  done = _run(args, cwd)
  assert done.returncode == 0, done.stdout + done.stderr
  return done.stdout


def _assert_help(text):
  """--help names every bundled preset, every job, and how to call it."""
  assert text.startswith("usage: snip-jax --config=NAME[:ARG] --workdir=DIR")
  for name in PRESETS + JOBS:
    assert f"\n  {name} " in text
  assert "runlocal" in text and len(text.splitlines()) < 36


# ------------------------------------------------------------------------- in the checkout


def test_help_of_launch_py_and_python_m_is_the_same_listing(tmp_path):
  by_script = _checked([sys.executable, REPO / "launch.py", "--help"], tmp_path)
  by_module = _checked([sys.executable, "-m", "snip_jax", "--help"], REPO)
  _assert_help(by_script)
  assert by_module == by_script


def test_config_is_a_preset_name_or_a_file(tmp_path):
  unknown = _run([sys.executable, REPO / "launch.py", "--config=pretrian:runlocal",
                  f"--workdir={tmp_path / 'w'}"], tmp_path)
  assert unknown.returncode == 2 and unknown.stdout == ""
  assert unknown.stderr.startswith("error: ") and len(unknown.stderr.splitlines()) == 1
  assert "'pretrian'" in unknown.stderr and "pretrain, proppred" in unknown.stderr
  by_path = _run([sys.executable, REPO / "launch.py", f"--config={tmp_path / 'no.py'}",
                  f"--workdir={tmp_path / 'w'}"], tmp_path)
  assert by_path.returncode == 2 and "No such file" in by_path.stderr


def test_outputs_record_the_version(tmp_path):
  config = pretrain.get_config("runlocal")
  trainer.write_run_config(tmp_path, ModelConfig(), default_env_config(), config)
  run_config = json.loads((tmp_path / converter.CONFIG_FILE).read_text())
  params = {"embedder": {"kernel": np.ones((2, 3), np.float32)}}
  out = converter.save_converted(tmp_path / "converted", ModelConfig(), default_env_config(),
                                 params, {"pth": "a.pth"})
  converted = json.loads((out / converter.CONFIG_FILE).read_text())
  assert run_config["snip_jax_version"] == converted["snip_jax_version"] == snip_jax.__version__


# ------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(the wheel, the bin folder of a fresh virtualenv with it installed).

  The wheel is built from a copy of its sources, so the build leaves no build/ in the checkout.
  """
  root = tmp_path_factory.mktemp("packaging")
  (root / "src").mkdir()
  for name in WHEEL_SOURCES:
    if (REPO / name).is_dir():
      shutil.copytree(REPO / name, root / "src" / name,
                      ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(REPO / name, root / "src" / name)
  _checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "-q", "-w", root / "dist", root / "src"], root)
  wheel, = (root / "dist").glob("*.whl")
  _checked([sys.executable, "-m", "venv", "--without-pip", root / "venv"], root)
  bin_dir = root / "venv" / "bin"
  site = _checked([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path("
                   "'purelib'))"], root).strip()
  pathlib.Path(site, "borrowed_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
  _checked([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index",
            "--force-reinstall", "-q", wheel], root)
  return wheel, bin_dir


@pytest.mark.slow
def test_wheel_holds_the_package_and_the_presets(installed):
  wheel, _ = installed
  assert wheel.name.startswith(f"snip_jax-{snip_jax.__version__}-py3-none-any")
  sources = {f"snip_jax/{p.relative_to(REPO / 'snip_jax')}" for p in
             (REPO / "snip_jax").rglob("*.py")}
  sources |= {f"snip_jax/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
  with zipfile.ZipFile(wheel) as archive:
    assert {n for n in archive.namelist() if n.endswith(".py")} == sources
    assert {n for n in archive.namelist() if n.startswith("snip_jax/srbench/meta/")} == {
        f"snip_jax/srbench/meta/{p.name}" for p in (REPO / "snip_jax/srbench/meta").iterdir()}
    metadata = archive.read(f"snip_jax-{snip_jax.__version__}.dist-info/entry_points.txt")
  assert "snip-jax = snip_jax.cli:main" in metadata.decode()


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
  _, bin_dir = installed
  found = json.loads(_checked([bin_dir / "python", "-c", IMPORT_CHECK], tmp_path))
  assert found["version"] == found["metadata"] == snip_jax.__version__
  assert pathlib.Path(found["file"]).is_relative_to(bin_dir.parent)
  assert found["jobs"] == ["convert", "export", "pretrain", "proppred"]
  assert not found["top_level_configs"]
  help_text = _checked([bin_dir / "snip-jax", "--help"], tmp_path)
  _assert_help(help_text)
  assert _checked([bin_dir / "python", "-m", "snip_jax", "--help"], tmp_path) == help_text

  workdir = tmp_path / "corpus"
  out = _checked([bin_dir / "snip-jax", "--config=export:runlocal", *TINY_EXPORT,
                  f"--workdir={workdir}"], tmp_path)
  assert out.strip() == f"corpus: {workdir / 'data.prefix'}"
  assert len((workdir / "data.prefix").read_text().splitlines()) == 20
  meta = json.loads((workdir / "export_meta.json").read_text())
  assert meta["snip_jax_version"] == snip_jax.__version__
  # proppred loads pretrain and export from the wheel, then stops at its first check
  stopped = _run([bin_dir / "snip-jax", "--config=proppred:ncr,frozen,runlocal",
                  f"--workdir={tmp_path / 'ncr'}"], tmp_path)
  assert stopped.returncode == 2 and stopped.stderr.startswith("error: the frozen variant")
