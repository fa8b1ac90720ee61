"""launch.py as a user meets it: a mistake is one `error:` line and status 2 before any model
or workdir exists, corpus errors name file:line, Ctrl-C is status 130 without a crash, and
SIGTERM (preemption) is status 75.

The subprocesses of each group run concurrently (a few at a time) to keep the file short.
"""

import concurrent.futures
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import grain
import pytest

from configs import pretrain
from snip_jax import jobs
from snip_jax.data import corpus, export, pipeline
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import clip
from tests.test_pth import Call, G, write_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
PRETRAIN = f"--config={REPO / 'configs' / 'pretrain.py'}:runlocal"
PROPPRED = f"--config={REPO / 'configs' / 'proppred.py'}:ncr,supervised,runlocal"
CONVERT = f"--config={REPO / 'configs' / 'convert.py'}"
# runlocal with one layer per transformer, in-process data and a 16-sample eval set.
SMALL = ("--config.model.n_enc_layers=1", "--config.model.n_dec_layers=1",
         "--config.train.num_workers=0", "--config.eval.n_samples=16",
         "--config.eval.batch_size=16", "--config.train.log_every_steps=1")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
BAD_LINE = 41  # the corrupted line of each bad corpus


def _launch(cwd, *args, **popen):
  """launch.py in `cwd` (an empty directory) with `args`; stdout/stderr piped as text."""
  return subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _corrupt(lines, path, change):
  """Write `lines` to `path` with line BAD_LINE changed by `change(record)` (or replaced)."""
  lines = list(lines)
  if callable(change):
    record = json.loads(lines[BAD_LINE - 1])
    change(record)
    lines[BAD_LINE - 1] = json.dumps(record)
  else:
    lines[BAD_LINE - 1] = change
  path.write_text("\n".join(lines) + "\n")
  return path


BAD_CORPORA = {
    "unknown_variable": (lambda r: r.update(tree="add,x_0,x_3"), "'x_3' is not in the vocabulary"),
    "inf": (lambda r: r["x_to_fit"][3].__setitem__(0, "inf"), "NaN or inf"),
    "too_many_columns": (lambda r: r.update(x_to_fit=[row * 2 for row in r["x_to_fit"]]),
                         "2 input / 1 output columns"),
    "bad_json": ('{"tree": "add,x_0', "cannot read this data.prefix line"),
}


@pytest.fixture(scope="module")
def bad_corpora(tmp_path_factory):
  """{name: (corpus with a bad line BAD_LINE, expected text)} for pretrain runlocal's env."""
  root = tmp_path_factory.mktemp("corpora")
  env_cfg = env_config_from(pretrain.get_config("runlocal").env)
  good = export.export_corpus(root / "good", env_cfg, n_samples=60, chunk_size=20)
  lines = good.read_text().splitlines()
  return {name: (_corrupt(lines, root / f"{name}.prefix", change), text)
          for name, (change, text) in BAD_CORPORA.items()}


BAD_CONFIGS = ("batch_size_0", "log_every_steps_0", "num_train_steps_0", "typo_override",
               "missing_train_path", "workdir_is_a_file", "empty_workdir", "malicious_pth",
               *(f"corpus_{name}" for name in BAD_CORPORA))


def _bad_config_cases(tmp, bad_corpora):
  """(name, args, expected message part) of each mistake; `tmp` holds their inputs."""
  (tmp / "a_file").write_text("not a directory\n")
  marker = tmp / "MARKER"
  evil = write_checkpoint(tmp / "evil.pth", {"w": Call(G("os.system"), f"touch {marker}")})
  run = lambda name: f"--workdir={tmp / 'runs' / name}"
  cases = [
      ("batch_size_0", [PRETRAIN, run("b"), "--config.train.batch_size=0"],
       "train.batch_size must be an integer >= 1, got 0"),
      ("log_every_steps_0", [PRETRAIN, run("l"), "--config.train.log_every_steps=0"],
       "train.log_every_steps must be an integer >= 1"),
      ("num_train_steps_0", [PRETRAIN, run("n"), "--config.train.num_train_steps=0"],
       "train.num_train_steps must be an integer >= 1"),
      ("typo_override", [PRETRAIN, run("t"), "--config.train.batch_sze=3"],
       '--config.train.batch_sze: no config field \'batch_sze\'; Did you mean "batch_size"'),
      ("missing_train_path", [PROPPRED, run("m"), f"--config.data.train_path={tmp}/no.prefix",
                              f"--config.data.test_path={tmp}/no.prefix"],
       f"data.train_path={tmp}/no.prefix does not exist"),
      ("workdir_is_a_file", [PRETRAIN, f"--workdir={tmp / 'a_file'}"],
       "is an existing file, not a directory"),
      ("empty_workdir", [PRETRAIN, "--workdir="], "--workdir is empty"),
      ("malicious_pth", [CONVERT, run("c"), f"--config.pth={evil}"],
       f"refusing to load {evil}: it references os.system"),
  ]
  cases += [(f"corpus_{name}", [PRETRAIN, run(name), "--config.data.source=jsonl",
                                f"--config.data.jsonl_path={path}"],
             f"{path}:{BAD_LINE}: cannot read this data.prefix line")
            for name, (path, _) in bad_corpora.items()]
  return cases


def _timed_run(cwd, args):
  """(return code, stdout, stderr, seconds) of launch.py with `args`."""
  start = time.monotonic()
  process = _launch(cwd, *args)
  stdout, stderr = process.communicate(timeout=120)
  return process.returncode, stdout, stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory, bad_corpora):
  """{name: (expected, cwd, (rc, stdout, stderr, seconds))} for every mistake, 4 at a time."""
  tmp = tmp_path_factory.mktemp("bad_configs")
  cases = _bad_config_cases(tmp, bad_corpora)
  assert tuple(name for name, _, _ in cases) == BAD_CONFIGS
  cwds = {name: tmp / "cwd" / name for name, _, _ in cases}
  for cwd in cwds.values():
    cwd.mkdir(parents=True)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = {name: pool.submit(_timed_run, cwds[name], args) for name, args, _ in cases}
  return {name: (expected, cwds[name], futures[name].result()) for name, _, expected in cases}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_mistake_is_one_error_line_status_2_and_leaves_nothing(bad_config_runs, name):
  expected, cwd, (rc, stdout, stderr, seconds) = bad_config_runs[name]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert rc == 2, stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  assert expected in lines[0]
  assert seconds < 30, f"took {seconds:.1f} s: validation must come before the model"
  assert not list(cwd.iterdir()), "the empty workdir case wrote into the current directory"
  runs = cwd.parents[1] / "runs"
  assert not runs.exists() or not list(runs.iterdir()), "a workdir was left behind"
  assert (cwd.parents[1] / "a_file").read_text() == "not a directory\n"
  assert not (cwd.parents[1] / "MARKER").exists()
  assert not stdout


def test_bad_corpus_lines_name_file_and_line_when_training_loads_them(bad_corpora):
  """Corpora over the scan limit are checked line by line as training loads them (before its
  first step); raised inside the input pipeline, the error is still the user's (status 2)."""
  config = pretrain.get_config("runlocal")
  config.data.source = "jsonl"
  env_cfg = env_config_from(config.env)
  for path, text in bad_corpora.values():
    assert corpus.scan_corpus(path, env_cfg, limit_bytes=0) is None  # too big to pre-scan
    config.data.jsonl_path = str(path)
    with pytest.raises(corpus.CorpusError) as error:
      clip.training_batches(config, env_cfg)
    assert str(error.value).startswith(f"{path}:{BAD_LINE}: ") and text in str(error.value)
    load = lambda _, path=path: pipeline.corpus_samples(path, env_cfg)  # in a reader thread
    with pytest.raises(Exception) as raised:  # whatever the pipeline raises it as
      with pipeline.iterate(grain.MapDataset.range(0, 1).map(load)) as batches:
        next(batches)
    user_error = jobs._user_error(raised.value)  # pylint: disable=protected-access
    assert isinstance(user_error, corpus.CorpusError) and str(user_error) == str(error.value)


def _signal_run(workdir, signum, after_marker, delay):
  """A long runlocal run sent `signum` `delay` s after launch (or after `after_marker` exists).

  Returns (rc, stdout, stderr, whether a train step had finished when the signal was sent).
  """
  workdir.parent.mkdir(parents=True)
  process = _launch(workdir.parent, PRETRAIN, f"--workdir={workdir}", *SMALL,
                    "--config.train.num_train_steps=100000",
                    "--config.train.checkpoint_every_steps=100000",
                    "--config.train.eval_every_steps=100000")
  deadline = time.monotonic() + 240
  while after_marker and not (workdir / after_marker).exists():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, f"no {after_marker} within 240 s"
    time.sleep(0.02)
  time.sleep(delay)
  stepped = (workdir / "metrics.jsonl").exists()
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=120)
  return process.returncode, stdout, stderr, stepped


# (signal, marker file the delay counts from (None: launch), delay s). tensorboard/ appears
# just before the first train step compiles.
SIGNAL_RUNS = {
    "sigint_while_starting": (signal.SIGINT, None, 0.5),
    "sigint_compiling_0s": (signal.SIGINT, "tensorboard", 0.0),
    "sigint_compiling_1s": (signal.SIGINT, "tensorboard", 1.0),
    "sigint_compiling_2.5s": (signal.SIGINT, "tensorboard", 2.5),
    "sigterm_compiling": (signal.SIGTERM, "tensorboard", 0.5),
}


@pytest.fixture(scope="module")
def signal_runs(tmp_path_factory):
  """{name: _signal_run(...)} of SIGNAL_RUNS, run concurrently."""
  tmp = tmp_path_factory.mktemp("signals")
  with concurrent.futures.ThreadPoolExecutor(len(SIGNAL_RUNS)) as pool:
    futures = {name: pool.submit(_signal_run, tmp / name / "run", *spec)
               for name, spec in SIGNAL_RUNS.items()}
  return {name: (tmp / name / "run", future.result()) for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SIGNAL_RUNS if n.startswith("sigint")])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(signal_runs, name):
  _, (rc, _, stderr, stepped) = signal_runs[name]
  assert rc == jobs.EXIT_INTERRUPTED, stderr[-3000:]
  assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr[-3000:]
  assert stderr.splitlines()[-1].startswith("interrupted (SIGINT): stopped at once")
  assert not stepped, "the signal came after the first step: raise the run's size"


@pytest.mark.slow
def test_sigterm_while_compiling_saves_the_first_step_and_exits_75(signal_runs):
  workdir, (rc, stdout, stderr, stepped) = signal_runs["sigterm_compiling"]
  assert rc == jobs.EXIT_PREEMPTED, stderr[-3000:]
  assert not stepped and "pretrain preempted at step 1" in stdout, stdout
  assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]


# An absl INFO (or DEBUG) line: `I0102 03:04:05.678901 123 source_file.py:42] message`.
ABSL_INFO_LINE = re.compile(r"^I\d{4} [\d:.]+ +\d+ (?P<source>[^:\s]+):\d+\]")
OUR_SOURCES = {p.name for p in (REPO / "snip_jax").rglob("*.py")}


def _third_party_info_lines(workdir, *args):
  """The absl INFO/DEBUG lines not from snip_jax of the README's first command, at tiny size.

  The runs share a compilation cache beside `workdir`, so the second one compiles nothing.
  """
  workdir.mkdir()
  env = {**ENV, "JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  done = subprocess.run([sys.executable, str(REPO / "launch.py"), PRETRAIN,
                         f"--workdir={workdir / 'run'}", *SMALL,
                         "--config.train.num_train_steps=2", *args],
                        cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "pretrain finished at step 2" in done.stdout, done.stdout
  return [line for line in done.stderr.splitlines()
          if (m := ABSL_INFO_LINE.match(line)) and m["source"] not in OUR_SOURCES]


@pytest.mark.slow
def test_library_logs_show_only_with_verbosity_1(tmp_path):
  """By default the command shows its own lines; --verbosity=1 adds Orbax's and jax's."""
  quiet = _third_party_info_lines(tmp_path / "quiet")
  verbose = _third_party_info_lines(tmp_path / "verbose", "--verbosity=1")
  assert not quiet, quiet[:10]
  assert any("orbax" in line or "checkpoint" in line for line in verbose), verbose[:10]
  assert len(verbose) < 1000, "--verbosity=1 showed DEBUG lines too (absl's 1)"
