"""Property prediction from equations (the original's `--is_proppred`), on the training loop.

  python launch.py --config=configs/export.py:ncr --workdir=/tmp/ncr_data    # 10k train, 1k test
  python launch.py --config=configs/proppred.py:ncr,frozen --workdir=/tmp/ncr_frozen \
      --config.train.init_from=/tmp/snip_1d --config.data.train_path=/tmp/ncr_data/split/data.prefix.train \
      --config.data.test_path=/tmp/ncr_data/split/data.prefix.test
  python launch.py --config=configs/proppred.py:ncr,frozen --config.job=proppred_eval ...   # report only

`get_config("PROPERTY,VARIANT[,runlocal]")`: PROPERTY is ncr, upward, yavg or oscil; VARIANT is
supervised (from scratch), frozen (pretrained encoder_f, only the head trains) or finetuned
(pretrained encoder_f trained with the head); runlocal makes the model tiny and the schedule
short (CPU, a minute). Defaults are the original's recipe: 1-D functions with normalize_y, the
published model sizes, batch 16, lr 1e-5 (adam_inverse_sqrt, 10k warmup), MSE. `init_from` is
a converted SNIP checkpoint or a pretraining workdir of ours; its encoder_f is loaded.
"""

import ml_collections

from snip_jax.configs import pretrain
from snip_jax.configs.export import PROPERTY_TYPES

# variant -> the modules it trains (snip_jax.tasks.proppred.VARIANTS; tests/test_presets.py
# checks that they agree, so this file needs no jax).
VARIANTS = {"supervised": ("encoder_f", "regressor"), "frozen": ("regressor",),
            "finetuned": ("encoder_f", "regressor")}


def _parse(arg: str) -> tuple[str, str, bool]:
  """(property, variant, runlocal) from "ncr,frozen[,runlocal]"."""
  parts = [p for p in (arg or "ncr,supervised").split(",") if p]
  runlocal = "runlocal" in parts
  parts = [p for p in parts if p != "runlocal"]
  prop = parts[0] if parts else "ncr"
  variant = parts[1] if len(parts) > 1 else "supervised"
  if prop not in PROPERTY_TYPES or variant not in VARIANTS or len(parts) > 2:
    raise ValueError(f"unknown preset {arg!r}: use PROPERTY,VARIANT[,runlocal] with PROPERTY one"
                     f" of {', '.join(PROPERTY_TYPES)} and VARIANT one of {', '.join(VARIANTS)}")
  return prop, variant, runlocal


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The property-prediction job; ARG PROPERTY,VARIANT[,runlocal] (default ncr,supervised)."""
  prop, variant, runlocal = _parse(arg)
  config = pretrain.get_config("d1")
  config.unlock()
  config.job = "proppred"
  config.env.is_proppred = True
  config.env.property_type = prop

  config.task = ml_collections.ConfigDict()
  config.task.variant = variant

  config.optim.lr = 1e-5
  config.train.batch_size = 16
  config.train.n_steps_per_epoch = 625  # 10k labels / batch 16
  config.train.num_train_steps = 62_500  # 100 epochs
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 6250
  config.train.checkpoint_every_steps = 6250
  config.train.trainable = VARIANTS[variant]
  config.train.num_workers = 0  # unused: the labels are read from files

  config.data = ml_collections.ConfigDict()
  config.data.source = "jsonl"  # "jsonl" (data.prefix files) or "tfds" (export.tfds output)
  config.data.train_path = ""  # e.g. EXPORT_WORKDIR/split/data.prefix.train
  config.data.test_path = ""  # e.g. EXPORT_WORKDIR/split/data.prefix.test
  config.data.tfds_dir = ""  # splits train and test
  config.data.n_train = 0  # label budget: the first n training samples (0: all)
  config.data.use_skeleton = False  # the original's --use_skeleton: equations without constants

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 250
  config.eval.best_metric = "eval_mse"  # or eval_nmse, eval_r2, eval_loss

  if runlocal:
    pretrain.apply_runlocal(config, lr=1e-3, num_train_steps=200, eval_every_steps=50)
    config.eval.batch_size = 50
  config.lock()
  return config
