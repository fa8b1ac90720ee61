"""Data options through the job configs: proppred data.n_train / data.use_skeleton /
data.source=tfds (configs/proppred.py) and export.dedup_key=skeleton (configs/export.py)."""

import itertools
import json
import shutil

import numpy as np
import pytest

from configs import export as export_configs
from configs import proppred as proppred_configs
from snip_jax.data import corpus, export, pipeline
from snip_jax.data.batching import collate_equations
from snip_jax.errors import UserError
from snip_jax.symbolic.config import env_config_from
from snip_jax.tasks import proppred
from snip_jax.train import trainer

N_SAMPLES, N_TEST, N_TRAIN = 80, 16, 20


def _proppred_config(export_dir, source, **data):
  """The runlocal NCR supervised config reading `export_dir` from `source`, with `data` set."""
  config = proppred_configs.get_config("ncr,supervised,runlocal")
  config.data.source = source
  if source == "jsonl":
    config.data.train_path = str(export_dir / "split" / "data.prefix.train")
    config.data.test_path = str(export_dir / "split" / "data.prefix.test")
  else:
    config.data.tfds_dir = str(export_dir / "tfds")
  for key, value in data.items():
    config.data[key] = value
  return config


def _export_config(**options):
  """configs/export.py:ncr, small, in the runlocal proppred env; `options` set config.export."""
  config = export_configs.get_config("ncr")
  config.env.update(proppred_configs.get_config("ncr,supervised,runlocal").env.to_dict())
  config.export.n_samples, config.export.n_test = N_SAMPLES, N_TEST
  config.export.num_workers = 0
  for key, value in options.items():
    config.export[key] = value
  return config


@pytest.fixture(scope="module")
def ncr_export(tmp_path_factory):
  """A small NCR export: data.prefix, its train/test split and their TFDS copy."""
  workdir = tmp_path_factory.mktemp("ncr_export")
  export.run_export(_export_config(tfds=True), str(workdir))
  return workdir


def _rows(batch):
  """A batch's (equation, length, label) rows, sorted: what it holds, in any order."""
  return sorted(zip(map(bytes, batch["equations"]), batch["equation_lengths"].tolist(),
                    batch["target_property"].tolist()))


@pytest.mark.parametrize("source, use_skeleton", [("jsonl", False), ("jsonl", True),
                                                  ("tfds", False)])
def test_proppred_trains_on_the_first_n_train_labels_of_the_configured_data(
    ncr_export, tmp_path, source, use_skeleton):
  config = _proppred_config(ncr_export, source, n_train=N_TRAIN, use_skeleton=use_skeleton)
  config.train.batch_size = N_TRAIN  # one batch is one epoch of the label budget
  proppred.validate_config(config, str(tmp_path))
  env_cfg = env_config_from(config.env)
  task = proppred.proppred_task(config, env_cfg, trainer.model_config(config, env_cfg), None)

  train_file = ncr_export / "split" / "data.prefix.train"
  samples = list(itertools.islice(corpus.read_corpus(train_file, env_cfg), N_TRAIN))
  tokens = [s.skeleton_tree_encoded if use_skeleton else s.tree_encoded for s in samples]
  expected = _rows({**collate_equations(tokens, env_cfg),
                    "target_property": np.float32([s.target_property for s in samples])})
  with pipeline.iterate(task.batches, stop=2) as batches:
    first, second = batches
  assert _rows(first) == expected
  assert _rows(second) == expected


def test_proppred_use_skeleton_with_tfds_is_refused(ncr_export, tmp_path):
  config = _proppred_config(ncr_export, "tfds", use_skeleton=True)
  with pytest.raises(UserError, match="use_skeleton needs data.source='jsonl'"):
    proppred.validate_config(config, str(tmp_path))


def test_export_dedup_key_skeleton_keeps_the_first_line_of_each_skeleton(ncr_export, tmp_path):
  for name in (corpus.PREFIX_FILE, export.META_FILE):  # the finished export, split anew
    shutil.copy(ncr_export / name, tmp_path / name)
  config = _export_config(dedup_key="skeleton")
  export.validate_config(config, str(tmp_path))
  export.run_export(config, str(tmp_path))

  lines = (tmp_path / corpus.PREFIX_FILE).read_text().splitlines(keepends=True)
  records = [json.loads(line) for line in lines]
  first_of_skeleton = {}
  for line, record in zip(lines, records):
    first_of_skeleton.setdefault(tuple(record["skeleton_tree_encoded"]), line)
  assert len(records) == N_SAMPLES
  assert len(first_of_skeleton) < len({r["tree"] for r in records})  # skeletons do repeat
  split = {s: (tmp_path / "split" / f"{corpus.PREFIX_FILE}.{s}").open().readlines()
           for s in ("train", "valid", "test")}
  assert len(split["test"]) == N_TEST and not split["valid"]
  assert sorted(split["train"] + split["test"]) == sorted(first_of_skeleton.values())
