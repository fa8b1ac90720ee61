"""Property prediction: exported labels, frozen/finetuned training, learning, metrics, plots, errors."""

import copy
import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import export as export_configs
from configs import proppred as proppred_configs
from snip_jax.convert.converter import load_converted
from snip_jax.data import export, pipeline
from snip_jax.data.corpus import read_corpus
from snip_jax.data.pipeline import generate_chunk
from snip_jax.symbolic import generator, properties
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import proppred
from snip_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 240, 60


pytestmark = pytest.mark.usefixtures("compilation_cache")


def _export_config(prop, n_samples, n_test, **export_options):
  config = export_configs.get_config(prop)
  config.export.n_samples = n_samples
  config.export.n_test = n_test
  config.export.num_workers = 0
  config.export.chunk_size = 20
  for key, value in export_options.items():
    config.export[key] = value
  return config


@pytest.fixture(scope="module")
def ncr_data(tmp_path_factory):
  """A tiny exported NCR set (the launch.py export job's function), train and test files."""
  workdir = tmp_path_factory.mktemp("ncr_data")
  export.run_export(_export_config("ncr", N_TRAIN + N_TEST, N_TEST), workdir)
  return workdir / "split" / "data.prefix.train", workdir / "split" / "data.prefix.test"


def _proppred_config(variant, train_path, test_path, **train):
  config = proppred_configs.get_config(f"ncr,{variant},runlocal")
  config.data.train_path, config.data.test_path = str(train_path), str(test_path)
  config.model.n_enc_layers = config.model.n_dec_layers = 1
  for key, value in train.items():
    config.train[key] = value
  return config


@pytest.fixture(scope="module")
def supervised_run(ncr_data, tmp_path_factory):
  """runlocal supervised NCR, 100 steps from scratch, then the test report."""
  workdir = tmp_path_factory.mktemp("supervised")
  config = _proppred_config("supervised", *ncr_data, num_train_steps=100, eval_every_steps=25,
                            checkpoint_every_steps=100)
  return workdir, config, proppred.train_and_report(config, workdir)


# ------------------------------------------------------------------------- data


@pytest.mark.parametrize("prop", ["ncr", "upward", "yavg", "oscil"])
def test_exported_labels_equal_the_property_functions_on_the_same_points(prop, tmp_path,
                                                                          monkeypatch):
  config = _export_config(prop, 40, 0)
  path = export.run_export(config, tmp_path)
  exported = list(read_corpus(path, env_config_from(config.env)))

  recorded = []  # (x, y, the rng as the generator passed it) of each label computed
  compute_property = properties.compute_property

  def recording(name, x, y, rng=None):
    recorded.append((x.copy(), y.copy(), copy.deepcopy(rng)))
    return compute_property(name, x, y, rng)

  monkeypatch.setattr(generator.properties, "compute_property", recording)
  env_cfg = env_config_from(config.env)
  regenerated = [s for c in range(2) for s in generate_chunk(
      c, env_cfg=env_cfg, seed=config.seed, chunk_size=config.export.chunk_size)[0]]
  assert [s.prefix for s in regenerated] == [s.prefix for s in exported]
  assert len(recorded) == len(exported) == 40  # one label computed per sample
  for sample, (x, y, rng) in zip(exported, recorded):
    assert np.allclose(sample.x, x, rtol=1e-3) and np.allclose(sample.y, y, rtol=1e-3)
    label = compute_property(prop, x, y, rng)
    assert sample.target_property == label  # exact: JSON keeps every bit of a float
  assert len({s.target_property for s in exported}) > 5


def test_export_writes_train_test_split_and_tfds_copy(tmp_path):
  config = _export_config("yavg", 60, 20, tfds=True)
  export.run_export(config, tmp_path)
  env_cfg = env_config_from(config.env)
  lines = {s: (tmp_path / "split" / f"data.prefix.{s}").read_text().splitlines()
           for s in ("train", "test")}
  assert len(lines["test"]) == 20 and 35 <= len(lines["train"]) <= 40
  assert all("target_property" in json.loads(line) for line in lines["train"] + lines["test"])
  jsonl = proppred.load_jsonl_set(tmp_path / "split" / "data.prefix.test", env_cfg)
  tfds_set = proppred.load_tfds_set(tmp_path / "tfds", "test", env_cfg)
  np.testing.assert_array_equal(tfds_set.equations, jsonl.equations)
  np.testing.assert_allclose(tfds_set.target_property, jsonl.target_property, rtol=1e-7)


def test_label_budget_takes_the_first_n_training_samples(ncr_data):
  env_cfg = env_config_from(proppred_configs.get_config("ncr,supervised").env)
  full = proppred.load_jsonl_set(ncr_data[0], env_cfg)
  first = proppred.load_jsonl_set(ncr_data[0], env_cfg, limit=50)
  assert len(full) >= N_TRAIN - 5 and len(first) == 50
  assert first.prefixes == full.prefixes[:50]
  skeleton = proppred.load_jsonl_set(ncr_data[0], env_cfg, use_skeleton=True, limit=50)
  assert (skeleton.equation_lengths <= first.equation_lengths).all()
  assert (skeleton.equations != first.equations).any()


def test_property_batches_resume_exactly_and_cover_each_epoch(ncr_data):
  env_cfg = env_config_from(proppred_configs.get_config("ncr,supervised").env)
  data = proppred.load_jsonl_set(ncr_data[0], env_cfg, limit=40)
  with pipeline.iterate(proppred.property_batches(data, 8, seed=3)) as stream:
    first = [next(stream) for _ in range(10)]
  epoch = np.concatenate([b["target_property"] for b in first[:5]])
  np.testing.assert_array_equal(np.sort(epoch), np.sort(data.target_property.astype(np.float32)))
  with pipeline.iterate(proppred.property_batches(data, 8, seed=3), start=7) as resumed:
    for expected in first[7:]:
      got = next(resumed)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
  halves = [proppred.property_batches(data, 8, seed=3, process_index=p, process_count=2)[7]
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["equations"] for h in halves]),
                                first[7]["equations"])


# ------------------------------------------------------------------------- training


def test_training_reduces_test_mse_below_chance_and_writes_the_report(supervised_run):
  workdir, config, outcome = supervised_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  evals = [r for r in records if "eval_mse" in r]
  assert [r["step"] for r in evals] == [25, 50, 75, 100]
  results = json.loads((workdir / "eval" / "results.json").read_text())
  initial = _initial_test_mse(config)
  assert evals[-1]["eval_mse"] < 0.6 * initial, (initial, evals)
  assert results["metrics"]["mse"] < 0.75 * results["chance"]["mse"], results
  assert results["metrics"]["r2"] > 0.2 and results["chance"]["r2"] == 0.0
  assert results["metrics"]["mse"] == pytest.approx(evals[-1]["eval_mse"], rel=1e-5)
  assert outcome["report"]["metrics"] == results["metrics"]
  saved = np.load(workdir / "eval" / "predictions.npz")
  assert len(saved["target"]) == results["n_test"] == N_TEST
  assert results["metrics"] == proppred.regression_metrics(saved["target"], saved["prediction"])


def _initial_test_mse(config):
  """Test MSE of the run's step-0 params (same seed), predicted outside the training loop."""
  env_cfg = env_config_from(config.env)
  model_cfg = trainer.model_config(config, env_cfg)
  init_rng = jax.random.split(jax.random.key(config.train.seed))[0]
  params = trainer.initial_params(config, model_cfg, init_rng)
  test = proppred.load_jsonl_set(config.data.test_path, env_cfg)
  predictions, _ = proppred.predict_set(proppred.make_predict(model_cfg), params, test, 50)
  return float(np.mean((predictions - test.target_property) ** 2))


def _png_size(path):
  """(width, height) from a PNG header; raises if the file is not a PNG."""
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n", path
  return struct.unpack(">II", data[16:24])


def test_scatter_and_latent_maps_are_non_trivial_pngs(supervised_run):
  workdir, _, outcome = supervised_run
  for name in ("scatter.png", "latents_pca.png"):
    path = workdir / "eval" / name
    width, height = _png_size(path)
    assert width >= 300 and height >= 300 and path.stat().st_size > 10_000
    import matplotlib.image  # pylint: disable=g-import-not-at-top

    pixels = matplotlib.image.imread(path)[..., :3]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # points, colours, text
  assert {pathlib.Path(p).name for p in outcome["train"]["plots"]} >= {"loss.png",
                                                                     "regression.png"}


def _size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree))


def _moment_sizes(opt_state):
  """Elements in the optimizer state's arrays (its scalars, step counts, are left out)."""
  return sum(np.size(x) for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)


def test_frozen_keeps_the_encoder_bit_identical_and_finetuned_changes_it(supervised_run,
                                                                        tmp_path):
  pretrained_dir, config, _ = supervised_run
  train_path, test_path = config.data.train_path, config.data.test_path
  pretrained = load_converted(pretrained_dir)[2]
  finals = {}
  for variant in ("frozen", "finetuned"):
    workdir = tmp_path / variant
    run_config = _proppred_config(variant, train_path, test_path, num_train_steps=5,
                                  eval_every_steps=5, checkpoint_every_steps=5,
                                  init_from=str(pretrained_dir))
    trainer.train_and_evaluate(run_config, workdir, make_task=proppred.proppred_task)
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "5" / "state")
    finals[variant] = state
  frozen, finetuned = finals["frozen"], finals["finetuned"]
  for a, b in zip(jax.tree.leaves(frozen["params"]["encoder_f"]),
                  jax.tree.leaves(pretrained["encoder_f"])):
    assert np.array_equal(a, b)
  assert _moment_sizes(frozen["opt_state"]) == 2 * _size(pretrained["regressor"])
  changed = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(finetuned["params"]["encoder_f"]), jax.tree.leaves(pretrained["encoder_f"]))]
  assert sum(changed) > len(changed) // 2
  assert _moment_sizes(finetuned["opt_state"]) == 2 * (_size(pretrained["regressor"])
                                                        + _size(pretrained["encoder_f"]))
  for variant in ("frozen", "finetuned"):
    assert not np.array_equal(finals[variant]["params"]["regressor"]["fc2"]["kernel"],
                              pretrained["regressor"]["fc2"]["kernel"])


def test_launch_eval_job_reports_a_trained_workdir(supervised_run):
  workdir, config, outcome = supervised_run
  (workdir / "eval" / "results.json").unlink()
  command = [sys.executable, "launch.py", "--config=configs/proppred.py:ncr,supervised,runlocal",
             f"--workdir={workdir}", "--config.job=proppred_eval",
             "--config.model.n_enc_layers=1", "--config.model.n_dec_layers=1",
             f"--config.data.train_path={config.data.train_path}",
             f"--config.data.test_path={config.data.test_path}"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((workdir / "eval" / "results.json").read_text())
  assert results["metrics"] == outcome["report"]["metrics"]
  r2 = results["metrics"]["r2"]
  assert f"{'r2':24s} {r2:10.4f}   chance {0.0:10.4f}" in done.stdout
  assert f"results: {workdir / 'eval' / 'results.json'}" in done.stdout


# ------------------------------------------------------------------------- metrics


def test_metrics_equal_a_hand_computation():
  y_true = np.array([0.0, 1.0, 2.0, 3.0])
  y_pred = np.array([0.0, 1.0, 2.0, 4.0])
  metrics = proppred.regression_metrics(y_true, y_pred)
  # mse = 1/4; variance of y_true = 1.25; normalised by (0, 3): errors 0, 0, 0, 1/3.
  assert metrics == pytest.approx({"r2": 0.8, "mse": 0.25, "nmse": 0.25 / (1.25 + 1e-12),
                                   "accuracy_within_0.01": 0.75, "accuracy_within_0.1": 0.75,
                                   "accuracy_within_1": 1.0})
  chance = proppred.chance_metrics(y_true)
  assert chance["r2"] == 0.0 and chance["nmse"] == pytest.approx(1.0)
  assert chance["accuracy_within_0.1"] == 0.0 and chance["accuracy_within_1"] == 1.0


def test_metrics_equal_an_independent_numpy_computation():
  rng = np.random.default_rng(0)
  y_true = rng.normal(size=500)
  y_pred = y_true + rng.normal(scale=0.5, size=500)
  metrics = proppred.regression_metrics(y_true, y_pred)
  slope_r = np.corrcoef(y_true, y_pred)[0, 1]
  # R^2 of the prediction = 1 - mse/var; with the least-squares line it would be corr^2.
  assert metrics["r2"] == pytest.approx(1 - np.mean((y_true - y_pred) ** 2) / np.var(y_true))
  assert metrics["r2"] < slope_r ** 2
  scaled = (y_true - y_true.min()) / np.ptp(y_true)
  scaled_pred = (y_pred - y_true.min()) / np.ptp(y_true)
  for tol in proppred.TOLERANCES:
    expected = np.isclose(scaled_pred, scaled, rtol=0.0, atol=tol).mean()  # the original's test
    assert metrics[f"accuracy_within_{tol:g}"] == pytest.approx(expected, abs=1 / 500)


def test_pca_map_recovers_the_dominant_directions():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(300, 2)) * [5.0, 2.0]
  basis = np.linalg.qr(rng.normal(size=(16, 16)))[0][:, :2]
  latents = hidden @ basis.T + 0.01 * rng.normal(size=(300, 16))
  projected, ratio = proppred.pca_2d(latents)
  assert ratio.sum() > 0.99 and ratio[0] > ratio[1]
  assert abs(np.corrcoef(projected[:, 0], hidden[:, 0])[0, 1]) > 0.999


# ------------------------------------------------------------------------- bad input


def test_empty_data_file_is_a_clear_error(ncr_data, tmp_path):
  empty = tmp_path / "empty.prefix"
  empty.write_text("")
  config = _proppred_config("supervised", empty, ncr_data[1])
  with pytest.raises(ValueError, match="empty.prefix is empty"):
    trainer.train_and_evaluate(config, tmp_path / "run", make_task=proppred.proppred_task)


def test_line_without_target_property_is_a_clear_error(ncr_data, tmp_path):
  lines = ncr_data[0].read_text().splitlines()[:5]
  record = json.loads(lines[2])
  del record["target_property"]
  lines[2] = json.dumps(record)
  broken = tmp_path / "broken.prefix"
  broken.write_text("\n".join(lines) + "\n")
  env_cfg = env_config_from(proppred_configs.get_config("ncr,supervised").env)
  with pytest.raises(ValueError, match=r"broken.prefix:3 has no target_property"):
    proppred.load_jsonl_set(broken, env_cfg)


def test_unknown_property_or_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown preset 'curvature,frozen'.*ncr, upward"):
    proppred_configs.get_config("curvature,frozen")
  with pytest.raises(ValueError, match="unknown preset 'ncr,melted'.*supervised, frozen"):
    proppred_configs.get_config("ncr,melted")
  config = proppred_configs.get_config("ncr,supervised,runlocal")
  config.env.property_type = "curvature"
  with pytest.raises(ValueError, match="property_type 'curvature' is not a property"):
    proppred.check_config(config)


def test_variants_check_init_from(ncr_data):
  with pytest.raises(ValueError, match="frozen variant starts from a pretrained encoder"):
    proppred.check_config(_proppred_config("frozen", *ncr_data))
  with pytest.raises(ValueError, match="supervised variant trains from scratch"):
    proppred.check_config(_proppred_config("supervised", *ncr_data, init_from="/x"))


@pytest.mark.parametrize("override, problem", [
    (("model", "latent_dim", 16), "latent_dim: config 16 vs checkpoint 32"),
    (("env", "max_int", 5), "another vocabulary"),
])
def test_init_from_with_another_vocabulary_or_latent_size_is_a_clear_error(
    supervised_run, tmp_path, override, problem):
  pretrained_dir, config, _ = supervised_run
  config = _proppred_config("frozen", config.data.train_path, config.data.test_path,
                            init_from=str(pretrained_dir), num_train_steps=1)
  section, key, value = override
  config[section][key] = value
  with pytest.raises(ValueError, match=problem):
    trainer.train_and_evaluate(config, tmp_path, make_task=proppred.proppred_task)
