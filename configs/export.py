"""Export a generated corpus as `data.prefix` JSONL (the original's `--export_data True`).

  python launch.py --config=configs/export.py:runlocal --workdir=/tmp/snip_export
  python launch.py --config=configs/export.py:d10 --workdir=DIR --config.export.n_samples=1000000

Presets: `d1` (snip-1d-normalized data: max_input_dimension 1, normalize_y), `d10` (snip-10dmax
data), `ncr`/`upward`/`yavg`/`oscil` (1-D property-prediction sets with `target_property`: 10k train and
1k test in workdir/split/data.prefix.{train,test}; export.tfds=True adds a TFDS copy),
`runlocal` (tiny, a few seconds on a laptop CPU). Every `env` field keeps the original's name.
Config files import only ml_collections and each other (no jax): tests/test_presets.py checks
that ENV_DEFAULTS and PROPERTY_TYPES agree with snip_jax.symbolic.config.
"""

import ml_collections
from ml_collections import config_dict

PROPERTY_TYPES = ("ncr", "upward", "yavg", "oscil")
# Every EnvConfig field (snip_jax/symbolic/config.py) with its default: the original's names.
ENV_DEFAULTS = dict(
    # dimensions
    min_input_dimension=1, max_input_dimension=1, min_output_dimension=1,
    max_output_dimension=1, enforce_dim=True, use_controller=True,
    # float tokenisation
    float_precision=3, mantissa_len=1, max_exponent=100, max_exponent_prefactor=1,
    # tree sampling
    max_int=10, min_binary_ops_per_dim=0, max_binary_ops_per_dim=1, max_binary_ops_offset=4,
    min_unary_ops=0, max_unary_ops=4, max_unary_depth=6,
    operators_to_downsample="div_0,arcsin_0,arccos_0,tan_0.2,arctan_0.2,sqrt_5,pow2_3,inv_3",
    operators_to_not_repeat="", required_operators="", extra_unary_operators="",
    extra_binary_operators="", extra_constants=None, prob_const=0.0, prob_rand=0.0,
    reduce_num_constants=True, use_abs=False,
    # datapoints
    max_len=200, max_centroids=10, max_trials=1, n_prediction_points=200,
    prediction_sigmas="1,2,4,8,16", normalize_y=False, train_noise_gamma=0.0,
    eval_noise_gamma=0.0,
    # property prediction labels
    is_proppred=False, property_type="ncr",
    # (ours) node evaluations an attempt may take before it is abandoned
    max_eval_work=2_000_000,
)


def env_config_dict(**overrides) -> ml_collections.ConfigDict:
  """The environment options (original names and defaults) as a ConfigDict."""
  values = {**ENV_DEFAULTS, **overrides}
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

