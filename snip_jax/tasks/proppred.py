"""Cross-modal property prediction (the original's `--is_proppred`): equation -> numeric property.

The input is an equation's prefix tokens, the label a property of its points (`ncr`, `upward`,
`yavg`, `oscil`, snip_jax.symbolic.properties). As in the original, the symbolic encoder
`encoder_f` feeds the regressor head (Linear(latent,128) -> ReLU -> Linear(128,1)), trained
with MSE by the shared training loop (snip_jax.train.trainer) with the PROPERTY objective.

Variants (`config.task.variant`):
- `supervised`: encoder_f and head from scratch;
- `frozen`: encoder_f from `train.init_from`, left bit-identical; only the head is trained
  (and only it has optimizer state);
- `finetuned`: encoder_f from `train.init_from`, trained together with the head.

`report` evaluates a workdir's latest checkpoint on the test set: R^2, MSE, NMSE, accuracy
within the original's tolerances on min-max normalised targets, the chance baseline (predict
the test mean, as the original's `eval_proppred.py`), `results.json`, a scatter of predicted
against true values and a 2-D PCA map of the test equations' latents coloured by the property.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import grain
import jax
import numpy as np
from absl import logging

from snip_jax import checks
from snip_jax.data import pipeline
from snip_jax.data.batching import collate_equations, trim_equations
from snip_jax.data.corpus import read_corpus, scan_corpus
from snip_jax.errors import UserError
from snip_jax.model import SNIP, ModelConfig
from snip_jax.symbolic.config import PROPERTY_TYPES, EnvConfig, env_config_from
from snip_jax.train import plots, trainer
from snip_jax.train.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from snip_jax.train.train_step import PROPERTY, TrainState

VARIANTS = {"supervised": ("encoder_f", "regressor"), "frozen": ("regressor",),
            "finetuned": ("encoder_f", "regressor")}
SYMBOLIC_ENCODER = ("encoder_f",)  # what init_from loads for numeric properties (original)
TOLERANCES = (0.01, 0.1, 1.0)  # eval_proppred.py's atol on min-max normalised targets
EVAL_METRICS = ("eval_loss", "eval_mse", "eval_nmse", "eval_r2")
REPORT_DIR = "eval"
RESULTS_FILE = "results.json"


# ------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class PropertySet:
  """A labelled set as arrays: equation ids [N, 200], lengths [N], targets [N], prefixes."""

  equations: np.ndarray
  equation_lengths: np.ndarray
  target_property: np.ndarray  # float64, as exported
  prefixes: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.target_property)


def load_jsonl_set(path: str | os.PathLike, env_cfg: EnvConfig, *, use_skeleton: bool = False,
                   limit: int = 0) -> PropertySet:
  """The first `limit` (0: all) samples of a data.prefix with `target_property` on every line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"property data file {path} does not exist; export one with"
                            " launch.py --config=configs/export.py:ncr --workdir=DIR")
  tokens, targets, prefixes = [], [], []
  for lineno, sample in enumerate(read_corpus(path, env_cfg, points=False,
                                                  require_target=True), start=1):
    if limit and lineno > limit:
      break
    tokens.append(sample.skeleton_tree_encoded if use_skeleton else sample.tree_encoded)
    targets.append(sample.target_property)
    prefixes.append(sample.prefix)
  if not targets:
    raise ValueError(f"{path} is empty: it holds no samples")
  arrays = collate_equations(tokens, env_cfg)
  return PropertySet(arrays["equations"], arrays["equation_lengths"],
                     np.asarray(targets, np.float64), tuple(prefixes))


def load_tfds_set(data_dir: str | os.PathLike, split: str, env_cfg: EnvConfig, *,
                  limit: int = 0) -> PropertySet:
  """The first `limit` (0: all) examples of a TFDS split built by build_tfds_corpus."""
  source = _property_source(data_dir, split, env_cfg)
  n = min(limit, len(source)) if limit else len(source)
  rows = source.__getitems__(range(n))
  return PropertySet(np.stack([r["equations"] for r in rows]),
                     np.asarray([r["equation_lengths"] for r in rows], np.int32),
                     np.asarray([r["target_property"] for r in rows], np.float64),
                     tuple(r["tree"] for r in rows))


def _property_source(data_dir: str | os.PathLike, split: str, env_cfg: EnvConfig):
  """The CorpusSource of a non-empty TFDS split whose examples all have a target_property."""
  from snip_jax.data.tfds_corpus import corpus_source  # pylint: disable=g-import-not-at-top

  with checks.as_user_error(FileNotFoundError):
    source = corpus_source(data_dir, split, env_cfg)
  if len(source) == 0:
    raise UserError(f"{data_dir} split {split!r} is empty")
  if not source.has_target_property:
    raise UserError(f"{data_dir} split {split!r} has examples without target_property: build"
                    " it from property data (configs/export.py:ncr with export.tfds=True)")
  return source


def split_location(config, split: str) -> pathlib.Path:
  """Where config.data's `split` (train or test) is: its data.prefix, or the TFDS directory."""
  data = config.data
  if data.source == "jsonl":
    return checks.readable(data[f"{split}_path"], f"data.{split}_path",
                           hint="a property data.prefix (configs/export.py:ncr writes"
                           " split/data.prefix.train and .test)")
  if data.source == "tfds":
    if data.use_skeleton:
      raise UserError("data.use_skeleton needs data.source='jsonl': TFDS corpora store the"
                      " equations with their constants")
    return checks.readable(data.tfds_dir, "data.tfds_dir", "dir",
                           hint="export.tfds=True writes one")
  raise UserError(f"data.source must be 'jsonl' or 'tfds', got {data.source!r}")


def load_split(config, env_cfg: EnvConfig, split: str) -> PropertySet:
  """config.data's `train` (up to data.n_train labels) or `test` set."""
  data = config.data
  limit = data.n_train if split == "train" else 0
  location = split_location(config, split)
  if data.source == "jsonl":
    return load_jsonl_set(location, env_cfg, use_skeleton=data.use_skeleton, limit=limit)
  return load_tfds_set(location, split, env_cfg, limit=limit)


def check_data(config, env_cfg: EnvConfig, splits: tuple[str, ...]) -> None:
  """The `splits` exist and hold property data (JSONL under 100 MB: every line read)."""
  for split in splits:
    location = split_location(config, split)
    if config.data.source == "jsonl":
      scan_corpus(location, env_cfg, points=False, require_target=True)
    else:
      _property_source(location, split, env_cfg)


@dataclasses.dataclass(frozen=True)
class _PropertyBatch:
  """Global batch index -> this process's rows of it (see property_batches); picklable."""

  data: PropertySet
  batch_size: int
  seed: int
  process_index: int
  process_count: int

  def __call__(self, k: int) -> dict:
    n, local = len(self.data), self.batch_size // self.process_count
    first = k * self.batch_size + self.process_index * local
    positions = np.arange(first, first + local)
    epochs = positions // n
    orders = {e: np.random.default_rng([self.seed, e]).permutation(n) for e in set(epochs)}
    indices = np.array([orders[e][p % n] for e, p in zip(epochs, positions)])
    return {"equations": self.data.equations[indices],
            "equation_lengths": self.data.equation_lengths[indices],
            "target_property": self.data.target_property[indices].astype(np.float32)}


def property_batches(data: PropertySet, batch_size: int, seed: int, *, process_index: int = 0,
                     process_count: int = 1) -> grain.MapDataset:
  """This process's rows of every global batch, indexed by batch (endless).

  The sample order is the concatenation of per-epoch permutations seeded by (seed, epoch),
  so global batch k depends only on (data, batch_size, seed, k): resumption is exact.
  """
  if batch_size > len(data):
    raise UserError(f"train.batch_size {batch_size} exceeds the {len(data)} training samples")
  return grain.MapDataset.range(0, pipeline.ENDLESS).map(
      _PropertyBatch(data, batch_size, seed, process_index, process_count))


# ------------------------------------------------------------------------- prediction, metrics


def make_predict(model_cfg: ModelConfig):
  """Jitted (params, equations, lengths) -> (predictions [B], z_f [B, latent])."""
  model = SNIP(model_cfg)

  @jax.jit
  def predict(params, equations, lengths):
    return model.apply({"params": params}, equations, lengths, deterministic=True,
                       method=SNIP.predict_property)

  return predict


def predict_set(predict, params: Any, data: PropertySet, batch_size: int,
                equation_bucket: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(predictions [N], latents [N, latent]) in fixed-size batches (the last one padded)."""
  predictions, latents = [], []
  for start in range(0, len(data), batch_size):
    stop = min(start + batch_size, len(data))
    pad = batch_size - (stop - start)
    batch = {"equations": np.pad(data.equations[start:stop], ((0, pad), (0, 0)), mode="edge"),
             "equation_lengths": np.pad(data.equation_lengths[start:stop], (0, pad),
                                        mode="edge")}
    if equation_bucket:
      batch = trim_equations(batch, equation_bucket)
    prediction, z_f = jax.device_get(predict(params, batch["equations"],
                                             batch["equation_lengths"]))
    predictions.append(prediction[:stop - start])
    latents.append(z_f[:stop - start])
  return (np.concatenate(predictions).astype(np.float64),
          np.concatenate(latents).astype(np.float64))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
  """R^2, MSE, NMSE and accuracy within TOLERANCES after min-max normalising by y_true.

  As the original's eval_proppred.py: NMSE = MSE / (variance of y_true + 1e-12); accuracy at
  tolerance t = fraction with |pred - true| <= t once both are mapped by the true targets'
  (min, max) to [0, 1].
  """
  y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
    raise ValueError(f"need two equal-length 1-D arrays, got {y_true.shape} and {y_pred.shape}")
  residual = np.sum((y_true - y_pred) ** 2)
  total = np.sum((y_true - y_true.mean()) ** 2)
  mse = residual / len(y_true)
  metrics = {"r2": float(1.0 - residual / total) if total > 0 else float("nan"),
             "mse": float(mse), "nmse": float(mse / (total / len(y_true) + 1e-12))}
  low, span = y_true.min(), y_true.max() - y_true.min()
  scaled_true = (y_true - low) / span if span > 0 else np.zeros_like(y_true)
  scaled_pred = (y_pred - low) / span if span > 0 else y_pred - low
  for tolerance in TOLERANCES:
    metrics[f"accuracy_within_{tolerance:g}"] = float(
        np.mean(np.abs(scaled_pred - scaled_true) <= tolerance))
  return metrics


def chance_metrics(y_true: np.ndarray) -> dict[str, float]:
  """The metrics of always predicting the mean of y_true (eval_proppred.py's chance level)."""
  y_true = np.asarray(y_true, np.float64)
  return regression_metrics(y_true, np.full_like(y_true, y_true.mean()))


def _eval_metrics(state: TrainState, predict, data: PropertySet, batch_size: int,
                  equation_bucket: int) -> dict[str, float]:
  """The loop's periodic evaluation on the test set."""
  predictions, _ = predict_set(predict, state.params, data, batch_size, equation_bucket)
  metrics = regression_metrics(data.target_property, predictions)
  return {"eval_loss": metrics["mse"], "eval_mse": metrics["mse"], "eval_nmse": metrics["nmse"],
          "eval_r2": metrics["r2"]}


# ------------------------------------------------------------------------- training


def check_config(config) -> tuple[str, ...]:
  """Validate the property options; returns the trainable modules of the variant."""
  variant, init_from = config.task.variant, config.train.init_from
  if config.env.property_type not in PROPERTY_TYPES:
    raise UserError(f"env.property_type {config.env.property_type!r} is not a property; use"
                    f" one of {', '.join(PROPERTY_TYPES)}")
  if variant not in VARIANTS:
    raise UserError(f"task.variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
  if variant == "supervised" and init_from:
    raise UserError("the supervised variant trains from scratch: leave train.init_from empty,"
                    " or use the finetuned variant to start from a checkpoint")
  if variant != "supervised" and not init_from:
    raise UserError(f"the {variant} variant starts from a pretrained encoder: set"
                    " train.init_from to a converted SNIP checkpoint or a pretraining workdir")
  if tuple(config.train.trainable) != VARIANTS[variant]:
    raise UserError(f"train.trainable {tuple(config.train.trainable)} does not match the"
                    f" {variant} variant's {VARIANTS[variant]}; leave it to the preset")
  return VARIANTS[variant]


def validate_config(config, workdir: str) -> None:
  """Check a proppred run's settings, data and workdir before anything is built (UserError)."""
  env_cfg = trainer.validate_config(config, workdir, EVAL_METRICS)
  check_config(config)
  checks.at_least(0, config.data, "data", "n_train")
  check_data(config, env_cfg, ("train", "test"))
  trainer.check_devices(config)


def validate_report_config(config, workdir: str) -> None:
  """Check what `report` needs: a trained workdir and the test data (UserError if wrong)."""
  checks.workdir(workdir)
  if not (pathlib.Path(workdir) / CHECKPOINT_DIR).is_dir():
    raise UserError(f"--workdir={workdir} holds no {CHECKPOINT_DIR}/: train there first"
                    " (--config.job=proppred)")
  checks.at_least(1, config.eval, "eval", "batch_size")
  with checks.as_user_error():
    env_cfg = env_config_from(config.env)
    trainer.model_config(config, env_cfg)
  check_data(config, env_cfg, ("test",))


def proppred_task(config, env_cfg: EnvConfig, model_cfg: ModelConfig, mesh) -> trainer.Task:
  """The Task for trainer.train_and_evaluate: property batches, MSE, test-set R^2 / NMSE."""
  del mesh
  check_config(config)
  train_set, test_set = load_split(config, env_cfg, "train"), load_split(config, env_cfg, "test")
  logging.info("property %s: %d training labels, %d test samples", env_cfg.property_type,
               len(train_set), len(test_set))
  trainer.local_batch_size(config.train.batch_size)  # checks it splits over the devices
  batches = property_batches(train_set, config.train.batch_size, config.train.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  evaluate = functools.partial(_eval_metrics, predict=make_predict(model_cfg), data=test_set,
                               batch_size=config.eval.batch_size,
                               equation_bucket=config.train.equation_bucket)
  return trainer.Task(objective=PROPERTY, batches=batches,
                      evaluate=evaluate, eval_metrics=EVAL_METRICS,
                      init_modules=SYMBOLIC_ENCODER)


def train_and_report(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Train the property predictor in `workdir` (resuming there), then write the test report."""
  metrics = trainer.train_and_evaluate(config, workdir, make_task=proppred_task)
  if metrics["preempted"]:
    return {"train": metrics}
  return {"train": metrics, "report": report(config, workdir)}


# ------------------------------------------------------------------------- report


def report(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Evaluate the latest checkpoint of `workdir` on the test set; write results and plots."""
  workdir = pathlib.Path(workdir).absolute()
  env_cfg = env_config_from(config.env)
  model_cfg = trainer.model_config(config, env_cfg)
  params, _ = latest_checkpoint(workdir / CHECKPOINT_DIR)
  test_set = load_split(config, env_cfg, "test")
  predictions, latents = predict_set(make_predict(model_cfg), params, test_set,
                                     config.eval.batch_size, config.train.equation_bucket)
  results = {"property": env_cfg.property_type, "variant": config.task.variant,
             "n_test": len(test_set), "init_from": config.train.init_from,
             "test_path": config.data.test_path or config.data.tfds_dir,
             "metrics": regression_metrics(test_set.target_property, predictions),
             "chance": chance_metrics(test_set.target_property)}
  out = workdir / REPORT_DIR
  if jax.process_index() == 0:
    out.mkdir(exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    np.savez(out / "predictions.npz", target=test_set.target_property, prediction=predictions,
             latent=latents)
    title = f"{env_cfg.property_type}, {config.task.variant}"
    metrics = results["metrics"]
    scatter_title = f"{title}: R2 {metrics['r2']:.3f}, NMSE {metrics['nmse']:.3f}"
    results["plots"] = [str(plots.plot_scatter(test_set.target_property, predictions,
                                               out / "scatter.png", scatter_title)),
                        str(plot_latent_map(latents, test_set.target_property,
                                            out / "latents_pca.png", title))]
  logging.info("property %s (%s) on %d test samples: %s | chance: %s", env_cfg.property_type,
               config.task.variant, len(test_set), _fmt(results["metrics"]),
               _fmt(results["chance"]))
  results["results_file"] = str(out / RESULTS_FILE)
  return results


def _fmt(metrics: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def pca_2d(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(latents projected on their top-2 principal axes [N, 2], explained variance ratios [2])."""
  centred = latents - latents.mean(axis=0)
  _, singular, axes = np.linalg.svd(centred, full_matrices=False)
  variance = singular ** 2
  ratio = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
  return centred @ axes[:2].T, ratio


def plot_latent_map(latents: np.ndarray, values: np.ndarray, path: pathlib.Path,
                    title: str) -> pathlib.Path:
  """The latents' 2-D PCA, coloured by the property (the paper's latent-space figures)."""
  plt = plots.pyplot()
  projected, ratio = pca_2d(latents)
  fig, ax = plt.subplots(figsize=(6, 5))
  points = ax.scatter(projected[:, 0], projected[:, 1], c=values, s=6, cmap="viridis")
  fig.colorbar(points, ax=ax, label="property")
  ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var.)")
  ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var.)")
  ax.set_title(f"encoder_f latents, {title}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
