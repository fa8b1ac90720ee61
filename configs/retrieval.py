"""Equation retrieval: an index of equations embedded by encoder_f, queried with datasets.

  # build (or resume, or extend) an index of 1M generated functions
  python launch.py --config=configs/retrieval.py:build --workdir=INDEX \
      --config.model_path=ckpt/snip-10dmax --config.data.n_equations=1000000
  # ... or of a corpus: --config.data.source=jsonl --config.data.jsonl_path=data.prefix
  #                     --config.data.source=tfds --config.data.tfds_dir=DIR
  # the nearest equations of a CSV column, constants fitted: a table and OUT/results.json
  python launch.py --config=configs/retrieval.py:query --workdir=OUT --config.index=INDEX \
      --config.model_path=ckpt/snip-10dmax --config.data.csv=data.csv --config.data.target=y
  # tiny and in seconds, with a randomly initialised (untrained) model: the commands only
  python launch.py --config=configs/retrieval.py:runlocal --workdir=/tmp/snip_index
  python launch.py --config=configs/retrieval.py:query,runlocal --workdir=/tmp/snip_query \
      --config.index=/tmp/snip_index --config.data.csv=data.csv --config.data.target=y

Presets: `build`, `query`, `runlocal` (build) and `query,runlocal`. The model is
`model_path` (a converted directory, a `.pth` or a pretraining workdir of ours); `untrained`
instead uses a randomly initialised tiny model (the runlocal one, seeded), which retrieves
nothing meaningful and is labelled so in the index and the output.
"""

import ml_collections

from snip_jax.configs import pretrain

PRESETS = ("build", "query", "runlocal", "build,runlocal", "query,runlocal")


def _untrained_model() -> ml_collections.ConfigDict:
  """The runlocal pretraining model's environment and sizes, for `untrained=True`."""
  runlocal = pretrain.get_config("runlocal")
  section = ml_collections.ConfigDict()
  section.env = runlocal.env
  section.model = runlocal.model
  section.normalize_latents = runlocal.train.normalize_latents
  return section


def _common(job: str) -> ml_collections.ConfigDict:
  """The fields both jobs share: the model (a path, or untrained) and the seed."""
  config = ml_collections.ConfigDict()
  config.job = job
  config.seed = 0  # generated functions, subsampling of large datasets, the untrained model
  config.model_path = ""  # converted directory, .pth or pretraining workdir of a SNIP model
  config.untrained = False  # True: a random tiny model (config.untrained_model), no checkpoint
  config.untrained_model = _untrained_model()
  config.batch_size = 256  # equations or datasets per encoder call
  return config


def build_config(runlocal: bool) -> ml_collections.ConfigDict:
  """The build job: the workdir is the index (created, resumed or appended to)."""
  config = _common("retrieval_build")
  config.data = ml_collections.ConfigDict()
  config.data.source = "generate"  # "generate", "jsonl" (a data.prefix file) or "tfds"
  config.data.n_equations = 100_000  # generate: how many functions; corpora: at most (0: all)
  config.data.input_dimension = 0  # generate: at most this many variables (0: the model's)
  config.data.jsonl_path = ""  # data.prefix (.gz) for source "jsonl"
  config.data.tfds_dir = ""  # build_tfds_corpus output for source "tfds"
  config.data.tfds_split = "train"
  config.build = ml_collections.ConfigDict()
  config.build.chunk_size = 1024  # equations read, deduplicated and embedded per step
  config.build.shard_size = 65_536  # entries per shard file (a new index only)
  config.build.num_workers = 0  # generator processes (source "generate")
  config.build.commit_every_s = 30.0  # the most work an interruption can lose
  config.build.log_every_s = 5.0
  if runlocal:
    config.untrained = True
    config.data.n_equations = 2_000
    config.batch_size = 64
    config.build.chunk_size = 256
    config.build.shard_size = 1024
  config.lock()
  return config


def query_config(runlocal: bool) -> ml_collections.ConfigDict:
  """The query job: one or more CSVs against an index; the workdir gets results.json."""
  config = _common("retrieval_query")
  config.index = ""  # the index directory (a build's --workdir)
  config.data = ml_collections.ConfigDict()
  config.data.csv = ""  # a CSV with a header row, or several, comma-separated: one dataset each
  config.data.target = ""  # the column to explain; the others are the inputs x_0, x_1, ...
  config.query = ml_collections.ConfigDict()
  config.query.k = 20  # hits per dataset, by the model's similarity
  config.query.n_fit = 20  # of those, how many get their constants fitted (BFGS) and R²
  config.query.approximate = False  # jax.lax.approx_max_k per shard (for TPU; exact elsewhere)
  config.query.latent_dtype = "float32"  # or "bfloat16": half the memory, ~3-digit scores
  config.query.fit_time_limit = 1.0  # seconds per hit
  config.query.fit_max_iter = 200  # BFGS iterations per hit
  if runlocal:
    config.untrained = True
    config.query.k = 10
    config.query.n_fit = 10
  config.lock()
  return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """ARG: build (default), query, runlocal (a tiny build) or query,runlocal."""
  preset = arg or "build"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
  runlocal = "runlocal" in preset
  return query_config(runlocal) if preset.startswith("query") else build_config(runlocal)
