"""Options of the symbolic environment, with the original SNIP names and defaults.

The original reads these from argparse (`parsers.py` + `FunctionEnvironment.register_args`).
Here they live in a frozen dataclass: cheap attribute access in the generator's hot loop,
hashable, and picklable for worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Operators the original generator samples (name -> arity), in the original order.
BASE_OPERATORS = {
    "add": 2, "sub": 2, "mul": 2, "div": 2,
    "abs": 1, "inv": 1, "sqrt": 1, "log": 1, "exp": 1, "sin": 1, "arcsin": 1,
    "cos": 1, "arccos": 1, "tan": 1, "arctan": 1, "pow2": 1, "pow3": 1,
}
# Operators that may be named in `extra_unary_operators` / `extra_binary_operators`.
EXTRA_UNARY_OPERATORS = (
    "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh", "sign", "exp2", "log2",
    "log10", "cbrt", "square", "reciprocal",
)
EXTRA_BINARY_OPERATORS = ("pow", "max", "min")
MATH_CONSTANTS = ("e", "pi", "euler_gamma")
PROPERTY_TYPES = ("ncr", "upward", "yavg", "oscil")
MAX_EQUATION_LEN = 200  # the original's env.batch_equations pads every batch to this width


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Environment options; every name and default is the original's unless marked (ours)."""

  # dimensions
  min_input_dimension: int = 1
  max_input_dimension: int = 1
  min_output_dimension: int = 1
  max_output_dimension: int = 1
  enforce_dim: bool = True
  use_controller: bool = True
  # float tokenisation
  float_precision: int = 3
  mantissa_len: int = 1
  max_exponent: int = 100
  max_exponent_prefactor: int = 1
  # tree sampling
  max_int: int = 10
  min_binary_ops_per_dim: int = 0
  max_binary_ops_per_dim: int = 1
  max_binary_ops_offset: int = 4
  min_unary_ops: int = 0
  max_unary_ops: int = 4
  max_unary_depth: int = 6
  operators_to_downsample: str = "div_0,arcsin_0,arccos_0,tan_0.2,arctan_0.2,sqrt_5,pow2_3,inv_3"
  operators_to_not_repeat: str = ""
  required_operators: str = ""
  extra_unary_operators: str = ""
  extra_binary_operators: str = ""
  extra_constants: Optional[str] = None
  prob_const: float = 0.0
  prob_rand: float = 0.0
  reduce_num_constants: bool = True
  use_abs: bool = False
  # datapoints
  max_len: int = 200
  max_centroids: int = 10
  max_trials: int = 1
  n_prediction_points: int = 200
  prediction_sigmas: str = "1,2,4,8,16"
  normalize_y: bool = False
  train_noise_gamma: float = 0.0
  eval_noise_gamma: float = 0.0
  # property prediction labels
  is_proppred: bool = False
  property_type: str = "ncr"
  # (ours) deterministic work budget replacing the original's 1 s SIGALRM: an attempt whose
  # expression needs more than this many node evaluations over the points is abandoned.
  max_eval_work: int = 2_000_000

  def __post_init__(self):
    _validate(self)

  # ---- derived views (cheap, computed on demand) ----
  @property
  def extra_unaries(self) -> tuple[str, ...]:
    return _split(self.extra_unary_operators)

  @property
  def extra_binaries(self) -> tuple[str, ...]:
    return _split(self.extra_binary_operators)

  @property
  def extra_constant_list(self) -> tuple[str, ...]:
    return () if self.extra_constants is None else _split(self.extra_constants)

  @property
  def tokens_per_float(self) -> int:
    return 2 + self.mantissa_len

  @property
  def max_number(self) -> float:
    """|y| at or above this rejects a sample (original: 10**(max_exponent+float_precision))."""
    return 10.0 ** (self.max_exponent + self.float_precision)

  @property
  def sigmas(self) -> tuple[float, ...]:
    return tuple(float(s) for s in _split(self.prediction_sigmas))

  def replace(self, **overrides) -> "EnvConfig":
    return default_env_config(**{**dataclasses.asdict(self), **overrides})


def _split(text: str) -> tuple[str, ...]:
  return tuple(t for t in text.split(",") if t)


def _validate(cfg: EnvConfig) -> None:
  if cfg.max_input_dimension < 1:
    raise ValueError(f"max_input_dimension must be >= 1, got {cfg.max_input_dimension}")
  if not 1 <= cfg.min_input_dimension <= cfg.max_input_dimension:
    raise ValueError(
        f"min_input_dimension must be in [1, max_input_dimension={cfg.max_input_dimension}],"
        f" got {cfg.min_input_dimension}")
  if not 1 <= cfg.min_output_dimension <= cfg.max_output_dimension:
    raise ValueError("need 1 <= min_output_dimension <= max_output_dimension")
  if cfg.mantissa_len < 1 or (cfg.float_precision + 1) % cfg.mantissa_len != 0:
    raise ValueError(
        f"mantissa_len ({cfg.mantissa_len}) must divide float_precision + 1"
        f" ({cfg.float_precision + 1})")
  known = set(BASE_OPERATORS) | set(EXTRA_UNARY_OPERATORS) | set(EXTRA_BINARY_OPERATORS)
  for name in _split(cfg.extra_unary_operators):
    if name not in EXTRA_UNARY_OPERATORS:
      raise ValueError(
          f"unknown unary operator {name!r} in extra_unary_operators; known: "
          f"{', '.join(EXTRA_UNARY_OPERATORS)}")
  for name in _split(cfg.extra_binary_operators):
    if name not in EXTRA_BINARY_OPERATORS:
      raise ValueError(
          f"unknown binary operator {name!r} in extra_binary_operators; known: "
          f"{', '.join(EXTRA_BINARY_OPERATORS)}")
  for option in ("required_operators", "operators_to_not_repeat"):
    for name in _split(getattr(cfg, option)):
      if name not in known:
        raise ValueError(f"unknown operator {name!r} in {option}")
  for item in _split(cfg.operators_to_downsample):
    name, sep, ratio = item.rpartition("_")
    if not sep or name not in known:
      raise ValueError(
          f"bad operators_to_downsample entry {item!r}: expected <operator>_<ratio> with a"
          " known operator")
    try:
      float(ratio)
    except ValueError:
      raise ValueError(f"bad ratio in operators_to_downsample entry {item!r}") from None
  if cfg.is_proppred and cfg.property_type not in PROPERTY_TYPES:
    raise ValueError(
        f"unknown property_type {cfg.property_type!r}; known: {', '.join(PROPERTY_TYPES)}")
  if cfg.is_proppred and (cfg.max_input_dimension != 1 or cfg.max_output_dimension != 1):
    raise ValueError("property labels (is_proppred) are defined for 1-D functions: set"
                     " max_input_dimension=1 and max_output_dimension=1")
  if cfg.max_centroids < 2:
    raise ValueError("max_centroids must be >= 2 (the original draws randint(1, max_centroids))")
  if cfg.max_len < 1:
    raise ValueError("max_len must be >= 1")


def default_env_config(**overrides) -> EnvConfig:
  """The environment options with the original's names and defaults, plus `overrides`."""
  names = {f.name for f in dataclasses.fields(EnvConfig)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise ValueError(f"unknown environment option(s): {', '.join(unknown)}")
  return EnvConfig(**overrides)


def env_config_from(config_env) -> EnvConfig:
  """An EnvConfig from an ml_collections sub-config (or any mapping) of original names."""
  values = dict(config_env.to_dict() if hasattr(config_env, "to_dict") else config_env)
  return default_env_config(**values)
