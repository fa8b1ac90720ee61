"""The fit command (configs/sr.py:fit): a CSV in, the equation, R², results.json and a plot out;
every bad input is one clear line and leaves nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import sr as sr_configs
from snip_jax.errors import UserError
from snip_jax.tasks import sr_fit
from tests.test_sr_decoding import SR_FIXTURES

REPO = SR_FIXTURES.parents[2]
TINY_SR = str(SR_FIXTURES / "tiny_sr.pth")


def _csv(path, rows=60, target=lambda a, b: 3.0 - 3.4 * a, extra=""):
  """A CSV with columns a, b, y (= target(a, b)) and `extra` appended to its text."""
  rng = np.random.default_rng(0)
  a, b = rng.uniform(-2, 2, rows), rng.uniform(-2, 2, rows)
  lines = ["a,b,y"] + [f"{x},{z},{target(x, z)}" for x, z in zip(a, b)]
  path.write_text("\n".join(lines) + "\n" + extra)
  return path


def _config(csv_path, target="y", model_path=TINY_SR):
  config = sr_configs.get_config("fit")
  config.data.csv, config.data.target, config.model_path = str(csv_path), target, model_path
  config.fit.n_candidates = 4
  return config


def test_fit_command_prints_the_equation_and_writes_results_and_plot(tmp_path):
  csv_path = _csv(tmp_path / "data.csv", rows=200)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "launch.py", "--config=configs/sr.py:fit",
                         f"--workdir={tmp_path / 'out'}", f"--config.data.csv={csv_path}",
                         "--config.data.target=y", f"--config.model_path={TINY_SR}",
                         "--config.fit.n_candidates=8"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert f"equation: {results['equation']}" in done.stdout
  assert f"test R2 {results['test_r2']:.4f} (50 rows)" in done.stdout
  assert results["test_r2"] > 0.999 and results["variables"] == {"x_0": "a", "x_1": "b"}
  assert results["n_train"] == 150 and results["candidates"]
  assert (tmp_path / "out" / "pred_vs_true.png").stat().st_size > 1000


def test_a_missing_target_column_is_one_line_and_nothing_is_written(tmp_path):
  csv_path = _csv(tmp_path / "data.csv")
  done = subprocess.run([sys.executable, "launch.py", "--config=configs/sr.py:fit",
                         f"--workdir={tmp_path / 'out'}", f"--config.data.csv={csv_path}",
                         "--config.data.target=z", f"--config.model_path={TINY_SR}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      f"error: {csv_path} has no column 'z'; its columns: a, b, y"]
  assert not (tmp_path / "out").exists()


def test_bad_inputs_are_clear_errors(tmp_path, caplog):
  cases = [
      (_config(_csv(tmp_path / "text.csv", extra="1,x,2\n")), r"text.csv:62: column 'b' holds"),
      (_config(_csv(tmp_path / "ok.csv"), model_path=str(tmp_path / "none.pth")),
       "config.model_path=.* does not exist"),
      (_config(tmp_path / "absent.csv"), "absent.csv does not exist"),
  ]
  for config, message in cases:
    with pytest.raises(UserError, match=message):
      sr_fit.validate_config(config, str(tmp_path / "out"))
  constant = _config(_csv(tmp_path / "const.csv", target=lambda a, b: 1.0))
  with pytest.raises(UserError, match="y is constant"):
    sr_fit.run_fit(constant, str(tmp_path / "out"))
  tiny = _config(_csv(tmp_path / "one.csv", rows=1, extra=",1,2\n,3,4\n"))
  with pytest.raises(UserError, match="at least 2 rows"):
    sr_fit.run_fit(tiny, str(tmp_path / "out"))
  assert "rows with NaN/inf values" in caplog.text
  assert not (tmp_path / "out" / "results.json").exists()
