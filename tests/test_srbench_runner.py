"""The benchmark run: protocol, failures and timeouts, resume, shards and merge, the report,
and `launch.py --config=configs/srbench.py:runlocal` end to end."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import srbench as srbench_configs
from snip_jax.errors import UserError
from snip_jax.srbench import report, runner, worker

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**changes):
  """The runlocal preset with some fields changed."""
  config = srbench_configs.get_config("runlocal")
  with config.unlocked():
    for name, value in changes.items():
      section, _, field = name.rpartition("__")
      (config[section] if section else config)[field] = value
  return config


def test_noise_goes_to_the_training_targets_only_as_srbench_adds_it():
  task = runner.task_message(runner.Task("linear", "feynman_I_12_1", 4, 0.1), _config(n_rows=4000))
  problem = worker._problem("feynman_I_12_1", "", "")  # pylint: disable=protected-access
  clean = worker._fit_data(problem, {**task, "noise": 0.0})  # pylint: disable=protected-access
  noisy = worker._fit_data(problem, task)  # pylint: disable=protected-access
  assert len(clean["y_train"]) == 3000 and len(clean["y_test"]) == 1000  # 75/25
  np.testing.assert_array_equal(noisy["y_test"], clean["y_test"])
  np.testing.assert_array_equal(noisy["X_train"], clean["X_train"])
  rms = np.sqrt(np.mean(clean["y_train"] ** 2))
  assert np.std(noisy["y_train"] - clean["y_train"]) == pytest.approx(0.1 * rms, rel=0.05)
  other_seed = worker._fit_data(problem, {**task, "seed": 5})  # pylint: disable=protected-access
  assert not np.array_equal(other_seed["X_test"], clean["X_test"])


def test_failures_and_timeouts_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "ASSESS_SLACK", 0.0)
  config = _config(problems="feynman_I_12_11", methods="gplearn,operon,polynomial,linear",
                   time_budget=0.3, grace=0.4, symbolic_timeout=0.05,
                   gplearn__function_set=("add", "nope"))
  runner.validate_config(config, str(tmp_path))
  outcome = runner.run(config, str(tmp_path))
  records = {r["method"]: r for r in runner.read_results(tmp_path / runner.RESULTS_FILE)}
  assert records["gplearn"]["status"] == "failed" and "nope" in records["gplearn"]["error"]
  # Operon's clock counts whole seconds (at least 1): past budget + grace, it is killed
  assert records["operon"]["status"] == "timeout"
  assert "budget + grace (0.7 s)" in records["operon"]["error"]
  slow_sympy = records["polynomial"]  # 20 monomials do not simplify in 0.05 s
  assert slow_sympy["status"] == "ok" and slow_sympy["r2_test"] > 0.8
  assert slow_sympy["assess_status"] == "timeout" and slow_sympy.get("model_size") is None
  assert records["linear"]["status"] == "ok" and records["linear"]["r2_test"] > 0.5
  assert outcome["n_failed"] == 2 and outcome["n_run"] == 4
  summary = (tmp_path / report.SUMMARY_FILE).read_text()
  assert "| feynman | 0 | operon | 1 | 1 | fail | 0.0% |" in summary


def test_results_resume_and_refuse_other_settings_or_damaged_lines(tmp_path, caplog):
  path = tmp_path / runner.RESULTS_FILE
  line = {"method": "linear", "problem": "p", "seed": 0, "noise": 0.0, "status": "ok"}
  path.write_text(json.dumps(line) + "\n" + '{"method": "lin')  # killed while writing
  assert runner.read_results(path) == [line] and "incomplete" in caplog.text
  path.write_text('{"method": "lin\n' + json.dumps(line) + "\n")
  with pytest.raises(UserError, match="results.jsonl:1 is not a JSON line"):
    runner.read_results(path)
  (tmp_path / runner.CONFIG_FILE).write_text(json.dumps(
      {"protocol": runner.protocol(_config(time_budget=5.0))}))
  with pytest.raises(UserError, match="other settings of time_budget"):
    runner.validate_config(_config(), str(tmp_path))


def test_shards_split_the_fits_and_the_merge_joins_them(tmp_path):
  config = _config(methods="linear,polynomial", seeds=(0, 1))
  every = runner.plan(config)
  shards = [runner.plan(_config(methods="linear,polynomial", seeds=(0, 1), shard_index=i,
                                shard_count=3)) for i in range(3)]
  assert sorted(t.key for s in shards for t in s) == sorted(t.key for t in every)
  assert len(every) == 16 and [len(s) for s in shards] == [6, 5, 5]
  for i, tasks in enumerate(shards[:2]):  # the third shard "did not run"
    shard_dir = tmp_path / f"shard_{i}"
    shard_dir.mkdir()
    (shard_dir / runner.CONFIG_FILE).write_text(json.dumps({"protocol": runner.protocol(config)}))
    runner.write_results(shard_dir / runner.RESULTS_FILE, [
        {"method": t.method, "problem": t.problem, "seed": t.seed, "noise": t.noise,
         "group": t.problem.split("_")[0], "status": "ok", "r2_test": 1.0} for t in tasks])
  with config.unlocked():
    config.merge_from = f"{tmp_path}/shard_*"
  runner.validate_config(config, str(tmp_path / "all"))
  outcome = runner.run(config, str(tmp_path / "all"))
  merged = runner.read_results(tmp_path / "all" / runner.RESULTS_FILE)
  assert sorted(runner.record_key(r) for r in merged) == sorted(
      t.key for t in shards[0] + shards[1])
  assert outcome["n_missing"] == 5 and outcome["n_run"] == 0


def test_the_summary_equals_hand_computed_metrics():
  def fit(problem, r2, solved, size, seconds, status="ok"):
    return {"method": "m", "problem": problem, "group": "feynman", "seed": 0, "noise": 0.0,
            "status": status, "r2_test": r2, "symbolic_solution": solved,
            "model_size": size, "fit_seconds": seconds}

  records = [fit("a", 0.9995, True, 5, 10.0), fit("b", 0.995, False, 9, 20.0),
             fit("c", 0.5, False, 30, 60.0), fit("d", None, None, None, None, "timeout")]
  row, = report.summarise(records)
  # R² sorted: -inf (the timeout), 0.5, 0.995, 0.9995 -> median (0.5 + 0.995) / 2
  assert row["median_r2"] == pytest.approx(0.7475)
  assert (row["acc_0.99"], row["acc_0.999"], row["solution_rate"]) == (0.5, 0.25, 0.25)
  assert (row["median_size"], row["median_seconds"], row["timeouts"]) == (9, 20.0, 1)
  text = report.summary_markdown([row], records, 60.0)
  assert "| feynman | 0 | m | 4 | 1 | 0.7475 | 50.0% | 25.0% | 25.0% | 9 | 20 |" in text
  assert "| feynman | 0 | SNIP (published)* | – | – | 0.9950 | 88.2% |" in text
  assert "| a | 0 | 0.9995 ✓1/1 |" in text and "| d | 0 | fail |" in text


@pytest.mark.slow
def test_runlocal_end_to_end_then_resumes_without_refitting(tmp_path):
  command = [sys.executable, REPO / "launch.py", "--config=configs/srbench.py:runlocal",
             f"--workdir={tmp_path}"]
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  lines = (tmp_path / runner.RESULTS_FILE).read_text().splitlines()
  assert len(lines) == 16 and "fits: 16 run now, 16 recorded" in first.stdout
  records = [json.loads(line) for line in lines]
  assert all(r["status"] == "ok" for r in records), records
  operon_easy, = [r for r in records if r["method"] == "operon"
                  and r["problem"] == "feynman_I_12_1"]
  assert operon_easy["r2_test"] > 0.999 and operon_easy["symbolic_solution"] is True
  for name in (report.SUMMARY_FILE, *report.PLOT_FILES):
    assert (tmp_path / name).stat().st_size > 500
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and "fits: 0 run now, 16 recorded" in again.stdout
  assert (tmp_path / runner.RESULTS_FILE).read_text().splitlines() == lines
