"""CLIP pretraining of SNIP (the original's `--loss_type CLIP` run), with resumable checkpoints.

  python launch.py --config=configs/pretrain.py:runlocal --workdir=/tmp/snip_pretrain
  python launch.py --config=configs/pretrain.py:d10 --workdir=DIR --config.train.num_workers=16

Presets: `d1` (snip-1d-normalized: max_input_dimension 1, normalize_y), `d10` (snip-10dmax:
max_input_dimension 10), `runlocal` (tiny model and data, about a minute on a laptop CPU; it learns:
held-out retrieval well above chance).
Defaults are the published recipe: batch 256, lr 4e-5, adam_inverse_sqrt with 10000 warmup
updates from 1e-7, clip_grad_norm 0.5, latent 512, 8 layers of width 512, 16 heads.
`env` and `model` fields keep the original's names. Rerunning with the same workdir resumes.
"""

import ml_collections

from snip_jax.configs.export import env_config_dict


def model_config_dict(**overrides) -> ml_collections.ConfigDict:
  """The model sizes and options (original names, published values) as a ConfigDict."""
  values = dict(enc_emb_dim=512, dec_emb_dim=512, n_enc_layers=8, n_dec_layers=8,
                n_enc_heads=16, n_dec_heads=16, n_enc_hidden_layers=1, n_dec_hidden_layers=1,
                emb_emb_dim=64, n_emb_layers=1, emb_expansion_factor=1, latent_dim=512,
                dropout=0.0, attention_dropout=0.0, share_inout_emb=True, clip_temperature=1.0,
                pool_over_padding=True,
                attention="auto")  # (ours) "kernel" / "dot_product"; auto: kernel on CPU only
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def apply_runlocal(config: ml_collections.ConfigDict, *, lr: float, num_train_steps: int,
                   eval_every_steps: int) -> None:
  """The tiny CPU model and data shared by the runlocal presets (1-D, 100 points, width 32)."""
  config.env.max_input_dimension = 1
  config.env.max_len = 100
  config.model = model_config_dict(enc_emb_dim=32, dec_emb_dim=32, n_enc_layers=2,
                                   n_dec_layers=2, n_enc_heads=4, n_dec_heads=4,
                                   emb_emb_dim=16, latent_dim=32)
  config.optim.lr = lr
  config.optim.warmup_updates = 20
  config.train.batch_size = 32
  config.train.num_train_steps = num_train_steps
  config.train.log_every_steps = 20
  config.train.eval_every_steps = eval_every_steps
  config.train.checkpoint_every_steps = eval_every_steps


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The pretraining job; ARG d1 (default), d10 or runlocal."""
  preset = arg or "d1"
  config = ml_collections.ConfigDict()
  config.job = "pretrain"
  config.env = env_config_dict()
  config.model = model_config_dict()

  config.optim = ml_collections.ConfigDict()
  config.optim.optimizer = "adam_inverse_sqrt"  # the only one the original's CLIP runs use
  config.optim.lr = 4e-5
  config.optim.warmup_updates = 10_000
  config.optim.warmup_init_lr = 1e-7
  config.optim.clip_grad_norm = 0.5  # 0 disables clipping
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.train = ml_collections.ConfigDict()
  config.train.seed = 0  # model init, dropout and the generated training stream
  config.train.batch_size = 256  # global, over all devices and processes
  config.train.n_steps_per_epoch = 1000  # the original's epoch, for logging only
  config.train.num_train_steps = 1_000_000
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 10_000
  config.train.checkpoint_every_steps = 10_000  # the original's save_periodic 10 epochs
  config.train.keep_checkpoints = 3  # the latest K; the best by eval.best_metric is kept too
  config.train.init_from = ""  # a converted directory (launch.py convert job) to start from
  config.train.trainable = ("embedder", "encoder_y", "encoder_f")  # the original's CLIP step
  config.train.num_workers = 8  # generator processes (0: generate in the training process)
  config.train.prefetch_batches = 2  # batches kept ready on the devices
  # "disallow": any device-to-host transfer in the steps between log steps is an error
  config.train.transfer_guard = "allow"
  config.train.learnable_temperature = False  # (ours) train log(T) instead of a fixed T
  config.train.normalize_latents = False  # (ours) L2-normalise latents before the logits
  config.train.compute_dtype = "float32"  # (ours) "bfloat16": compute in bf16, params f32
  config.train.grad_accum_steps = 1  # (ours) micro-batches per update (negatives within each)
  # (ours) cut equation padding to the batch's longest equation rounded up to a multiple of
  # this: the same latents (pooling counts the cut padding), 2-3x less encoder_f work, one
  # compilation per width (at most 7). 0: always the original's 200 columns.
  config.train.equation_bucket = 32

  config.data = ml_collections.ConfigDict()
  config.data.source = "generate"  # "generate" (on the fly), "jsonl" or "tfds"
  config.data.jsonl_path = ""  # data.prefix (.gz) for source "jsonl"
  config.data.tfds_dir = ""  # build_tfds_corpus output for source "tfds"
  config.data.tfds_split = "train"
  config.data.shuffle = True  # corpora (jsonl, tfds): a new order every epoch, from (seed, epoch)

  config.eval = ml_collections.ConfigDict()
  config.eval.n_samples = 1024  # held-out generated set; retrieval among all of them
  config.eval.batch_size = 256
  config.eval.seed_offset = 1_000_003  # eval stream seed = train.seed + this
  config.eval.best_metric = "eval_accuracy_f2y"  # or eval_accuracy_y2f, eval_loss (min)

  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""  # "host:port"; empty: auto-detect or single
  config.distributed.num_processes = 0  # 0: auto
  config.distributed.process_id = -1  # -1: auto

  if preset == "d1":
    config.env.normalize_y = True
  elif preset == "d10":
    config.env.max_input_dimension = 10
  elif preset == "runlocal":
    # Tiny and CPU-fast (about a minute). Two departures from the faithful loss, because with
    # raw latents and T=1 a model this small collapses within a minute: L2-normalised latents
    # and a learnable temperature from 0.1 (both options of this project, off elsewhere).
    apply_runlocal(config, lr=3e-3, num_train_steps=120, eval_every_steps=40)
    config.model.clip_temperature = 0.1
    config.train.normalize_latents = True
    config.train.learnable_temperature = True
    config.train.num_workers = 1
    config.eval.n_samples = 64
    config.eval.batch_size = 64
  else:
    raise ValueError(f"unknown preset {preset!r}; use d1, d10 or runlocal")
  config.lock()
  return config
