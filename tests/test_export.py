"""data.prefix export/reload: compatibility with the original, determinism, resume, split."""

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from snip_jax.data import corpus, export
from snip_jax.data.batching import collate
from snip_jax.symbolic import default_env_config, parse_prefix
from snip_jax.symbolic.config import env_config_from

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_original"
ROOT = pathlib.Path(__file__).parent.parent
ORIGINAL_FILES = [("original_export_d1.prefix.gz", 1), ("original_export_d10.prefix.gz", 10),
                  ("original_export_ncr.prefix.gz", 1)]


def _lines(path):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return f.readlines()


def _original_reader(line):
  """The original `EnvDataset.read_sample`'s parsing, restated: what it needs from a line."""
  record = json.loads(line)
  x = np.array([[float(v) for v in row] for row in record["x_to_fit"]])
  y = np.array([[float(v) for v in row] for row in record["y_to_fit"]])
  skip = {"x_to_fit", "y_to_fit", "x_to_predict", "y_to_predict", "tree", "tree_encoded",
          "skeleton_tree_encoded", "target_property"}
  infos = {k: int(v) for k, v in record.items() if k not in skip}
  return x, y, record["tree"].split(","), infos


@pytest.mark.parametrize("name, dim", ORIGINAL_FILES)
def test_original_files_load_and_rewrite_byte_identically(name, dim):
  cfg = default_env_config(max_input_dimension=dim)
  lines = _lines(FIXTURES / name)
  samples = list(corpus.read_corpus(FIXTURES / name, cfg))
  assert len(samples) == len(lines) >= 100
  for line, sample in zip(lines, samples):
    assert json.dumps(corpus.sample_to_record(sample, cfg)) + "\n" == line
    assert sample.x.shape == (200, sample.infos["d_in"])
  if "ncr" in name:
    assert all(s.target_property is not None for s in samples)
  batch = collate(samples[:16], cfg)
  assert batch["points"].shape[0] == 16


def test_our_export_reads_with_the_original_parsing(tmp_path):
  cfg = default_env_config(is_proppred=True, property_type="ncr")
  path = export.export_corpus(tmp_path, cfg, n_samples=40, chunk_size=16)
  lines, samples = _lines(path), list(corpus.read_corpus(path, cfg))
  assert len(lines) == len(samples) == 40
  for line, sample in zip(lines, samples):
    x, y, prefix, infos = _original_reader(line)
    assert set(infos) == set(corpus.INFO_FIELDS)
    assert parse_prefix(prefix).prefix() == sample.tree.prefix()
    np.testing.assert_array_equal(x, sample.x)
    record = json.loads(line)
    assert list(record)[:7] == list(corpus.INFO_FIELDS) and 0.0 <= record["target_property"] <= 1


def test_export_is_deterministic_across_runs_and_worker_counts(tmp_path):
  cfg = default_env_config(max_input_dimension=2)
  a = export.export_corpus(tmp_path / "a", cfg, n_samples=70, seed=3, chunk_size=16)
  b = export.export_corpus(tmp_path / "b", cfg, n_samples=70, seed=3, chunk_size=16, num_workers=2)
  c = export.export_corpus(tmp_path / "c", cfg, n_samples=70, seed=4, chunk_size=16)
  assert a.read_bytes() == b.read_bytes()
  assert a.read_bytes() != c.read_bytes()


def test_resume_after_a_torn_write_and_append(tmp_path):
  cfg = default_env_config()
  full = export.export_corpus(tmp_path / "full", cfg, n_samples=90, chunk_size=16, write_infix=True)
  part = tmp_path / "part"
  export.export_corpus(part, cfg, n_samples=37, chunk_size=16, write_infix=True)
  with open(part / corpus.PREFIX_FILE, "a") as f:
    f.write('{"n_input_points": "20')  # killed mid-line
  with open(part / corpus.INFIX_FILE, "a") as f:
    f.write("(x_0 add")
  export.export_corpus(part, cfg, n_samples=90, chunk_size=16, write_infix=True)
  assert (part / corpus.PREFIX_FILE).read_bytes() == full.read_bytes()
  assert (part / corpus.INFIX_FILE).read_bytes() == (full.parent / corpus.INFIX_FILE).read_bytes()
  infix_lines = (part / corpus.INFIX_FILE).read_text().splitlines()
  assert infix_lines[5] == parse_prefix(json.loads(_lines(full)[5])["tree"]).infix()


def test_resume_with_other_settings_is_refused(tmp_path):
  export.export_corpus(tmp_path, default_env_config(), n_samples=5, chunk_size=4)
  with pytest.raises(ValueError, match="different settings \\(seed\\)"):
    export.export_corpus(tmp_path, default_env_config(), n_samples=9, seed=1, chunk_size=4)


def test_reload_errors_name_the_line(tmp_path):
  cfg = default_env_config()
  path = export.export_corpus(tmp_path, cfg, n_samples=3, chunk_size=4)
  lines = _lines(path)
  bad = tmp_path / "bad.prefix"
  bad.write_text(lines[0] + "{not json\n" + lines[2])
  with pytest.raises(corpus.CorpusError, match="bad.prefix:2: cannot read"):
    list(corpus.read_corpus(bad, cfg))
  bad.write_text(lines[0] + lines[1].replace('"tree"', '"tre"'))
  with pytest.raises(corpus.CorpusError, match="bad.prefix:2: .*missing field 'tree'"):
    list(corpus.read_corpus(bad, cfg))
  bad.write_text(lines[0] + lines[1][:50])
  with pytest.raises(corpus.CorpusError, match="bad.prefix:2: truncated last line"):
    list(corpus.read_corpus(bad, cfg))


def test_split_dedups_and_keeps_valid_test_out_of_train(tmp_path):
  cfg = default_env_config()
  path = export.export_corpus(tmp_path, cfg, n_samples=60, chunk_size=16)
  lines = _lines(path)
  dup = tmp_path / "dup.prefix"
  dup.write_text("".join(lines + lines[:20] + lines[10:30]))
  counts = export.split_corpus(dup, tmp_path / "split", n_valid=10, n_test=10, seed=0)
  assert counts == {"train": 40, "valid": 10, "test": 10}
  trees = {name: [json.loads(l)["tree"] for l in _lines(tmp_path / "split" / f"data.prefix.{name}")]
           for name in counts}
  assert not set(trees["train"]) & (set(trees["valid"]) | set(trees["test"]))
  assert sorted(sum(trees.values(), [])) == sorted({json.loads(l)["tree"] for l in lines})
  with pytest.raises(ValueError, match="60 distinct equations; cannot take"):
    export.split_corpus(dup, tmp_path / "s2", n_valid=50, n_test=20)


@pytest.mark.slow
def test_launch_runs_the_export_job_and_resumes(tmp_path):
  cmd = [sys.executable, str(ROOT / "launch.py"), "--config=configs/export.py:runlocal",
         f"--workdir={tmp_path}", "--config.export.n_samples=60", "--config.export.n_valid=5",
         "--config.export.n_test=5", "--config.export.num_workers=2"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "samples/s" in out.stderr and "ETA" in out.stderr
  assert len(_lines(tmp_path / "data.prefix")) == 60
  assert len(_lines(tmp_path / "split" / "data.prefix.valid")) == 5
  again = subprocess.run(cmd[:4] + ["--config.export.n_samples=80"] + cmd[5:], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr
  assert "exporting samples 60..80" in again.stderr
  typo = subprocess.run(cmd[:3] + ["--config.export.n_sample=3"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert typo.returncode != 0 and "n_sample" in typo.stderr


@pytest.mark.slow
def test_sigterm_stops_between_whole_lines_and_resume_completes(tmp_path):
  work = tmp_path / "work"
  cmd = [sys.executable, str(ROOT / "launch.py"), "--config=configs/export.py:runlocal",
         f"--workdir={work}", "--config.export.n_samples=3000", "--config.export.num_workers=1",
         "--config.export.n_valid=0", "--config.export.n_test=0", "--config.export.chunk_size=20"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  prefix = work / corpus.PREFIX_FILE
  deadline = time.monotonic() + 120
  while not (prefix.exists() and prefix.stat().st_size > 0) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err  # preempted: rerun to resume
  assert "rerun the same command to resume" in err
  data = prefix.read_bytes()
  assert data.endswith(b"\n") and 0 < data.count(b"\n") < 3000
  assert data.count(b"\n") == len((work / corpus.INFIX_FILE).read_text().splitlines())
  cfg = env_config_from(_runlocal_env())
  export.export_corpus(work, cfg, n_samples=100, chunk_size=20, write_infix=True)
  reference = export.export_corpus(tmp_path / "ref", cfg, n_samples=100, chunk_size=20,
                                   write_infix=True)
  if data.count(b"\n") <= 100:
    assert prefix.read_bytes() == reference.read_bytes()
  else:
    assert prefix.read_bytes()[:len(reference.read_bytes())] == reference.read_bytes()


def _runlocal_env():
  sys.path.insert(0, str(ROOT))
  from configs import export as export_config  # pylint: disable=g-import-not-at-top
  return export_config.get_config("runlocal").env
