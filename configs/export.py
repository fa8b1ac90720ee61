"""Export a generated corpus as `data.prefix` JSONL (the original's `--export_data True`).

  python launch.py --config=configs/export.py:runlocal --workdir=/tmp/snip_export
  python launch.py --config=configs/export.py:d10 --workdir=DIR --config.export.n_samples=1000000

Presets: `d1` (snip-1d-normalized data: max_input_dimension 1, normalize_y), `d10` (snip-10dmax
data), `ncr`/`upward`/`yavg`/`oscil` (1-D property-prediction sets with `target_property`: 10k train and
1k test in workdir/split/data.prefix.{train,test}; export.tfds=True adds a TFDS copy),
`runlocal` (tiny, a few seconds on a laptop CPU). Every `env` field keeps the original's name.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from snip_jax.symbolic.config import PROPERTY_TYPES, EnvConfig


def env_config_dict(**overrides) -> ml_collections.ConfigDict:
  """The environment options (original names and defaults) as a ConfigDict."""
  values = {f.name: f.default for f in dataclasses.fields(EnvConfig)}
  values.update(overrides)
  env = ml_collections.ConfigDict(values)
  if env.extra_constants is None:
    env.extra_constants = config_dict.placeholder(str)
  return env


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The export job; ARG d1 (default), d10, runlocal or a property set (ncr, upward, ...)."""
  preset = arg or "d1"
  config = ml_collections.ConfigDict()
  config.job = "export"
  config.seed = 0
  config.env = env_config_dict()

  config.export = ml_collections.ConfigDict()
  config.export.n_samples = 100_000
  config.export.num_workers = 2
  config.export.chunk_size = 64
  config.export.write_infix = False
  config.export.log_every_s = 10.0
  config.export.chunk_timeout_s = 600.0  # a worker stuck this long on one chunk is replaced
  config.export.n_valid = 0  # > 0 (or n_test > 0): dedup + split into workdir/split/
  config.export.n_test = 0
  config.export.dedup_key = "tree"  # or "skeleton"
  config.export.tfds = False  # also write the split as a TFDS ArrayRecord dataset (workdir/tfds)

  if preset == "d1":
    config.env.normalize_y = True
  elif preset == "d10":
    config.env.max_input_dimension = 10
  elif preset in PROPERTY_TYPES:
    config.env.is_proppred = True
    config.env.property_type = preset
    # The original's property sets: 10k training and 1k test labels. Duplicated equations are
    # dropped before the split, so train holds 10k minus the (few) duplicates.
    config.export.n_samples = 11_000
    config.export.n_test = 1_000
  elif preset == "runlocal":
    config.export.n_samples = 1000
    config.export.chunk_size = 50
    config.export.log_every_s = 0.5
    config.export.write_infix = True
    config.export.n_valid = 50
    config.export.n_test = 50
  else:
    raise ValueError(f"unknown preset {preset!r}; use d1, d10, runlocal or one of {PROPERTY_TYPES}")
  config.lock()
  return config

