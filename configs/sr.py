"""Symbolic regression with SNIP: a mapper and an E2E decoder on SNIP's numeric encoder.

  python launch.py --config=configs/sr.py:runlocal --workdir=/tmp/snip_sr
  # the published recipe, stage 1 (mapper only), from a converted SNIP-10dmax:
  python launch.py --config=configs/sr.py:d10 --workdir=STAGE1 \
      --config.train.init_from=CONVERTED_SNIP_10D
  # stage 2 (mapper and decoder), from stage 1's workdir:
  python launch.py --config=configs/sr.py:d10 --workdir=STAGE2 --config.train.init_from=STAGE1 \
      --config.train.init_modules=embedder,encoder_y,decoder,mapper \
      --config.train.trainable=mapper,decoder

  # the fit command: an equation for one CSV column (results.json, pred_vs_true.png)
  python launch.py --config=configs/sr.py:fit --workdir=OUT --config.data.csv=FILE \
      --config.data.target=COLUMN --config.model_path=snip-e2e-sr.pth

Presets: `d10` (run_train.sh: input dimension 1-10, latent 512, a 16-layer decoder of width 512,
batch 64, lr 4e-5, adam_inverse_sqrt with 10k warmup, clip 0.5; embedder and encoder_y from
init_from and frozen), `runlocal` (tiny, a few CPU minutes). Which modules learn is explicit
(`train.trainable`), unlike the original, whose first recipe trained only the mapper because
it built its optimizer before swapping the decoder in. The held-out evaluation reports the
loss, the token accuracy and the share of functions whose greedy decoding (constants as
decoded) reaches R^2 > 0.99 on their points.
"""

import ml_collections

from snip_jax.configs import pretrain

SR_MODULES = ("embedder", "encoder_y", "decoder", "mapper")


def fit_config() -> ml_collections.ConfigDict:
  """The fit command: SNIPRegressor on a CSV (its options: snip_jax.sr.regressor)."""
  config = ml_collections.ConfigDict()
  config.job = "sr_fit"
  config.seed = 0  # train/test split, subsets and sampling
  config.model_path = ""  # an SR .pth, its converted directory or an SR training workdir
  config.data = ml_collections.ConfigDict()
  config.data.csv = ""  # a CSV with a header row; every column numeric
  config.data.target = ""  # the column to predict; all others are features
  config.data.test_fraction = 0.25
  config.fit = ml_collections.ConfigDict()
  config.fit.decoding = "sample"  # or "greedy", "beam"
  config.fit.n_candidates = 10
  config.fit.temperature = 0.1
  config.fit.max_len = 200
  config.fit.refine = True  # BFGS on the constants
  config.fit.lso = False  # latent-space search (Grey Wolf) after direct decoding
  config.fit.lso_iterations = 80
  config.fit.lso_pop_size = 50
  config.fit.lso_samples = 2
  config.fit.stop_r2 = 0.99
  config.fit.time_budget = 0.0  # seconds for the search; 0: none
  config.fit.n_jobs = 1  # processes refining candidates in parallel (same results)
  config.fit.refine_per = "equation"  # or "skeleton": one refinement per skeleton (faster LSO)
  config.lock()
  return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The SR training job; ARG d10 (default) or runlocal; `fit` is the fit command."""
  preset = arg or "d10"
  if preset == "fit":
    return fit_config()
  if preset not in ("d10", "runlocal"):
    raise ValueError(f"unknown preset {preset!r}; use d10, runlocal or fit")
  config = pretrain.get_config(preset)
  config.unlock()
  config.job = "sr"
  config.model.n_dec_layers = 16 if preset == "d10" else 2
  config.model.latent_dim = 512 if preset == "d10" else 32
  config.model.max_src_len = 200
  config.train.batch_size = 64
  config.train.trainable = ("mapper",)
  config.train.init_modules = ("embedder", "encoder_y")  # what init_from provides
  config.train.learnable_temperature = False
  config.train.normalize_latents = False
  config.eval.best_metric = "eval_token_accuracy"  # or eval_loss (min), eval_r2_above_0.99
  config.eval.decode_max_len = 200  # greedy decoding length limit in the evaluation
  if preset == "runlocal":
    config.optim.lr = 2e-3
    config.optim.warmup_updates = 20
    config.train.batch_size = 32
    config.train.num_train_steps = 200
    config.train.eval_every_steps = 100
    config.train.checkpoint_every_steps = 100
    config.train.trainable = SR_MODULES
    config.train.init_modules = SR_MODULES
    config.model.max_src_len = 16
    config.eval.n_samples = 64
    config.eval.batch_size = 64
    config.eval.decode_max_len = 40
  config.lock()
  return config
