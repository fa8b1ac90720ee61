"""SRBench-style evaluation: SR methods side by side on Feynman, Strogatz or your CSV problems.

  python launch.py --config=configs/srbench.py:runlocal --workdir=/tmp/srbench
  # the full ground-truth measurement (119 Feynman + 14 Strogatz, noise 0, one seed)
  python launch.py --config=configs/srbench.py:all --workdir=OUT
  # your CSV as a black-box problem
  python launch.py --config=configs/srbench.py:csv --workdir=OUT --config.csv.path=FILE \
      --config.csv.target=COLUMN

Presets: `feynman` (default), `strogatz`, `all` (both), `csv` (config.csv, with the linear and
polynomial baselines), `runlocal` (4 problems, tiny budgets: a minute on 2 cores). Operon's and
gplearn's settings follow SRBench (snip_jax/srbench/methods.py says where they differ); methods
`snip` and `snip_lso` need config.snip.model_path. Results, resume, shards and the report:
docs/SRBENCH.md.
"""

import ml_collections

PRESETS = ("feynman", "strogatz", "all", "csv", "runlocal")


def method_settings() -> dict:
  """Each method's own settings (config.<method>), as SRBench runs them where it does."""
  operon = ml_collections.ConfigDict(dict(
      allowed_symbols="add,sub,mul,div,constant,variable,sin,cos,exp,log,sqrt,square",
      population_size=1000, pool_size=1000, max_length=50, generations=10_000,
      max_evaluations=1_000_000, brood_size=5, epsilon=1e-5, optimizer_iterations=1,
      objectives=("r2", "length"), model_selection_criterion="mean_squared_error",
      offspring_generator="basic", reinserter="keep-best", initialization_method="btc"))
  gplearn = ml_collections.ConfigDict(dict(
      function_set=("add", "sub", "mul", "div", "log", "sqrt", "sin", "cos"),
      population_size=1000, generations=500, tournament_size=20, init_depth=(2, 6),
      init_method="half and half", metric="mean absolute error", parsimony_coefficient=0.001,
      p_crossover=0.9, p_subtree_mutation=0.01, p_hoist_mutation=0.01, p_point_mutation=0.01,
      p_point_replace=0.05, max_samples=1.0))
  polynomial = ml_collections.ConfigDict(dict(degree=2))
  snip = ml_collections.ConfigDict(dict(
      model_path="", decoding="sample", n_candidates=10, temperature=0.1, refine=True,
      stop_r2=0.99))
  return dict(operon=operon, gplearn=gplearn, polynomial=polynomial, snip=snip)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The srbench job; ARG feynman (default), strogatz, all, csv or runlocal."""
  preset = arg or "feynman"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
  config = ml_collections.ConfigDict()
  config.job = "srbench"
  config.problems = preset  # feynman, strogatz, all, csv or names (comma-separated)
  config.methods = "operon,gplearn"  # comma-separated; also linear, polynomial, snip, snip_lso
  config.seeds = (0,)  # one train/test split per seed
  config.noise_levels = (0.0,)  # SRBench: 0, 0.001, 0.01, 0.1 (γ in N(0, γ·RMS(y_train)))
  config.time_budget = 60.0  # seconds per fit, for every method
  config.grace = 30.0  # a fit still running at budget + grace is killed (a timeout)
  config.symbolic_timeout = 60.0  # seconds for simplifying a model and the solution check
  config.n_rows = 10_000  # rows per problem (Strogatz: 400 simulated; CSV: a subset if more)
  config.data_seed = 0  # the regenerated rows; the split and noise follow config.seeds
  config.num_workers = 2  # fits in parallel, one process (and one thread) each
  config.shard_index = 0  # this job's share of the fits: every shard_count-th, from here
  config.shard_count = 1
  config.merge_from = ""  # shard workdirs to merge (comma-separated, globs) instead of running
  config.csv = ml_collections.ConfigDict(dict(path="", target=""))  # the `csv` problem
  config.update(method_settings())
  if preset == "csv":
    config.methods = "linear,polynomial,operon,gplearn"
  if preset == "runlocal":
    config.problems = "feynman_I_12_1,feynman_I_12_11,feynman_II_27_18,strogatz_lv1"
    config.methods = "linear,polynomial,operon,gplearn"
    config.time_budget = 2.0
    config.grace = 10.0
    config.symbolic_timeout = 10.0
    config.n_rows = 1000
    config.gplearn.population_size = 200
  config.lock()
  return config
