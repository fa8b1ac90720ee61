"""SRBench's ground-truth problems (PMLB's Feynman and Strogatz metadata) and users' CSV files.

  problem = load_problem("feynman_I_12_11")
  problem.truth                                    # q*(B*v*sin(theta) + Ef), a sympy expression
  X, y = problem_data(problem, n_rows=10_000, seed=0)

Feynman rows: every variable uniform in its range, the formula evaluated; deterministic per
(problem, seed). Strogatz rows: the problem's 2-state ODE system simulated from 4 initial states
(100 steps of 0.1 time units each), the states as inputs and this state's right-hand side at
them as the target: the function PMLB's rows sample, not the same rows. Formulas are read with
the project's allowlist reader (infix.read_sympy) and evaluated with the environment's tree
evaluator: no sympify, no lambdify (both execute generated text).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import pathlib
import re
import zlib
from typing import Any, Optional, Sequence

import numpy as np

from snip_jax.data.tabular import clean_data, read_csv
from snip_jax.errors import UserError

META_DIR = pathlib.Path(__file__).parent / "meta"
GROUPS = ("feynman", "strogatz")
MIN_ROWS = 10  # a 75/25 split needs a few test rows for a meaningful R²
STROGATZ_STEPS = 100  # samples per trajectory
STROGATZ_DT = 0.1  # time between samples
STROGATZ_DRAWS = 50  # initial states tried per trajectory before giving up
_RANGE = re.compile(r"^\s*(\w+)\s+in\s+\[([^,\]]+),([^\]]+)\]\s*$")
# The 4 initial states of each Strogatz system, after the description of the original MATLAB
# simulation (lacava/ode-strogatz): per state ("normal", mean, sd) or ("uniform", low, high);
# Lotka-Volterra starts from 4 fixed states.
_INITIAL_STATES = {
    "bacres": (("normal", 5.0, 1.0), ("normal", 10.0, 0.1)),
    "barmag": (("uniform", 0.0, 2 * math.pi), ("uniform", 0.0, 2 * math.pi)),
    "glider": (("normal", 5.0, 1.0), ("normal", 0.0, 0.1)),
    "lv": ((1.0, 3.0), (4.0, 1.0), (8.0, 2.0), (3.0, 3.0)),
    "predprey": (("normal", 5.0, 1.0), ("normal", 10.0, 0.1)),
    "shearflow": (("uniform", -math.pi, math.pi), ("uniform", -math.pi / 2, math.pi / 2)),
    "vdp": (("uniform", 0.0, 1.0), ("uniform", 0.0, 1.0)),
}
STROGATZ_TRAJECTORIES = 4


@dataclasses.dataclass(frozen=True)
class Problem:
  """One regression problem: y = truth(variables), or a CSV column (no truth)."""

  name: str
  group: str  # feynman, strogatz or csv
  variables: tuple[str, ...]  # the input columns, in order
  target: str
  formula: str = ""  # as the metadata writes it
  truth: Any = None  # sympy expression over sympy.Symbol(variable); None for CSV problems
  ranges: tuple[tuple[float, float], ...] = ()  # feynman: (low, high) per variable
  system: tuple[Any, ...] = ()  # strogatz: the right-hand side of every state, in state order
  csv_path: str = ""

  @property
  def symbols(self) -> tuple:
    """sympy Symbols named after the variables (what `truth` and models are written in)."""
    import sympy  # pylint: disable=g-import-not-at-top

    return tuple(sympy.Symbol(name) for name in self.variables)


# ------------------------------------------------------------------------- choosing problems


def problem_names(group: Optional[str] = None) -> list[str]:
  """The bundled problems (of `group`: feynman or strogatz), sorted by name."""
  names = sorted(path.stem for path in META_DIR.glob("*.yaml"))
  return [n for n in names if group is None or n.startswith(f"{group}_")]


def group_of(name: str) -> str:
  """The group of a problem name: feynman, strogatz or csv (a user's file)."""
  return next((g for g in GROUPS if name.startswith(f"{g}_")), "csv")


def select_problems(spec: str, csv_path: str = "", csv_target: str = "") -> list[Problem]:
  """The problems a comma-separated spec names: feynman, strogatz, all, csv, or problem names."""
  names = []
  for token in (t.strip() for t in spec.split(",")):
    if token in GROUPS:
      names += problem_names(token)
    elif token == "all":
      names += problem_names()
    elif token and token not in names:
      names.append(token)
  if not names:
    raise UserError("config.problems is empty: name feynman, strogatz, all, csv or problems"
                    " such as feynman_I_12_11 (comma-separated)")
  unique = list(dict.fromkeys(names))
  return [csv_problem(csv_path, csv_target) if n == "csv" else load_problem(n) for n in unique]


def load_problem(name: str) -> Problem:
  """A bundled Feynman or Strogatz problem by its PMLB name (e.g. feynman_I_12_11)."""
  if name not in problem_names():
    close = difflib.get_close_matches(name, problem_names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown problem {name!r}: use feynman, strogatz, all, csv or a name such"
                    f" as feynman_I_12_11 (the files of {META_DIR}){hint}")
  return _strogatz(name) if name.startswith("strogatz_") else _feynman(name)


def csv_problem(path: str, target: str) -> Problem:
  """A user's CSV file as a black-box problem (checked in full: one clear error if unusable)."""
  if not path or not target:
    raise UserError("the csv problem needs config.csv.path (a CSV with a header row) and"
                    " config.csv.target (the column to predict)")
  csv_file = pathlib.Path(path)
  if not csv_file.is_file():
    raise UserError(f"config.csv.path={path} is not a readable file")
  X, y, names = read_csv(csv_file, target)
  try:
    X, y = clean_data(X, y)
  except ValueError as error:
    raise UserError(f"{path}: {error}") from None
  if len(y) < MIN_ROWS:
    raise UserError(f"{path} has {len(y)} rows with finite values; a 75/25 train/test split"
                    f" needs at least {MIN_ROWS}")
  return Problem(name=f"csv_{csv_file.stem}", group="csv", variables=tuple(names),
                 target=target, csv_path=str(csv_file.absolute()))


# ------------------------------------------------------------------------- data


def problem_data(problem: Problem, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(X [n, d], y [n]) of a problem, deterministic per (problem, seed); CSV: at most n_rows.

  The two states of a Strogatz system share their rows (one simulation), as in PMLB.
  """
  key = problem.name[:-1] if problem.group == "strogatz" else problem.name
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  if problem.group == "feynman":
    return _feynman_rows(problem, n_rows, rng)
  if problem.group == "strogatz":
    return _strogatz_rows(problem, rng)
  X, y, _ = read_csv(pathlib.Path(problem.csv_path), problem.target)
  X, y = clean_data(X, y)
  if len(y) > n_rows:
    rows = np.sort(rng.choice(len(y), n_rows, replace=False))
    X, y = X[rows], y[rows]
  return X, y


def evaluate(expr, variables: Sequence[str], X: np.ndarray) -> np.ndarray:
  """A sympy expression over Symbol(variable) at the rows of X [n, d] (NaN where undefined)."""
  return _compiled(expr, tuple(variables)).evaluate(X)[:, 0]


@functools.lru_cache(maxsize=64)
def _compiled(expr, variables: tuple[str, ...]):
  """`expr` as the environment's Expression over x_0, x_1, ... (cot as 1/tan)."""
  import sympy  # pylint: disable=g-import-not-at-top

  from snip_jax.symbolic.infix import from_sympy  # pylint: disable=g-import-not-at-top

  renamed = expr.replace(sympy.cot, lambda a: 1 / sympy.tan(a)).xreplace(
      {sympy.Symbol(v): sympy.Symbol(f"x_{i}") for i, v in enumerate(variables)})
  return from_sympy(renamed)


def _feynman_rows(problem: Problem, n_rows: int, rng: np.random.Generator):
  """n_rows uniform draws in the ranges with finite formula values (redrawn otherwise)."""
  low, high = np.array(problem.ranges).T
  X_parts, y_parts, found = [], [], 0
  for _ in range(100):
    X = low + (high - low) * rng.random((n_rows, len(low)))
    y = evaluate(problem.truth, problem.variables, X)
    finite = np.isfinite(y)
    X_parts.append(X[finite])
    y_parts.append(y[finite])
    found += int(finite.sum())
    if found >= n_rows:
      return np.concatenate(X_parts)[:n_rows], np.concatenate(y_parts)[:n_rows]
  raise ValueError(f"{problem.name}: the formula is undefined almost everywhere in its ranges")


def _strogatz_rows(problem: Problem, rng: np.random.Generator):
  """States along 4 simulated trajectories and this state's right-hand side at them."""
  system = problem.name[len("strogatz_"):-1]
  states = [_trajectory(problem, _initial_states(system, k, rng)) for k in
            range(STROGATZ_TRAJECTORIES)]
  X = np.concatenate(states)
  return X, evaluate(problem.truth, problem.variables, X)


def _initial_states(system: str, k: int, rng: np.random.Generator):
  """Candidate initial states of trajectory k: one fixed state, or seeded draws."""
  spec = _INITIAL_STATES[system]
  if not isinstance(spec[0][0], str):
    yield np.array(spec[k])
    return
  for _ in range(STROGATZ_DRAWS):
    yield np.array([rng.normal(a, b) if kind == "normal" else rng.uniform(a, b)
                    for kind, a, b in spec])


def _trajectory(problem: Problem, starts) -> np.ndarray:
  """The states [STROGATZ_STEPS, 2] of the first start whose simulation stays finite."""
  from scipy.integrate import solve_ivp  # pylint: disable=g-import-not-at-top

  times = np.arange(STROGATZ_STEPS) * STROGATZ_DT
  rhs = lambda t, state: np.array([evaluate(e, problem.variables, state[None])[0]
                                   for e in problem.system])
  for start in starts:
    solution = solve_ivp(rhs, (0.0, times[-1]), start, t_eval=times, method="LSODA",
                         rtol=1e-8, atol=1e-10)
    states = solution.y.T
    if (solution.success and len(states) == STROGATZ_STEPS and np.isfinite(states).all()
        and all(np.isfinite(evaluate(e, problem.variables, states)).all()
                for e in problem.system)):
      return states
  raise ValueError(f"{problem.name}: no initial state gave a finite trajectory")


# ------------------------------------------------------------------------- metadata


def _metadata(name: str) -> dict:
  """The PMLB metadata of a bundled problem (yaml.safe_load: plain data only)."""
  import yaml  # pylint: disable=g-import-not-at-top

  return yaml.safe_load((META_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


def _equation(meta: dict) -> tuple[str, str]:
  """(left side, right side) of the description's formula line, as SRBench reads it."""
  line = next(line for line in meta["description"].splitlines() if "=" in line)
  left, right = line.split("=", 1)
  return left.strip(), right.strip()


def _read(text: str, variables: Sequence[str]):
  """Formula text over `variables` as sympy, through the allowlist reader."""
  import sympy  # pylint: disable=g-import-not-at-top

  from snip_jax.symbolic.infix import read_sympy  # pylint: disable=g-import-not-at-top

  return read_sympy(text, {v: sympy.Symbol(v) for v in variables})


def _feynman(name: str) -> Problem:
  """A Feynman problem: formula, variables (PMLB's column order) and their uniform ranges."""
  meta = _metadata(name)
  variables = tuple(str(f["name"]) for f in meta["features"])
  target, formula = _equation(meta)
  ranges = {}
  for line in meta["description"].splitlines():
    found = _RANGE.match(line)
    if found:
      ranges[found[1]] = (float(found[2]), float(found[3]))
  if set(ranges) != set(variables):
    raise ValueError(f"{name}: the ranges name {sorted(ranges)}, the features {variables}")
  return Problem(name=name, group="feynman", variables=variables, target=target,
                 formula=formula, truth=_read(formula, variables),
                 ranges=tuple(ranges[v] for v in variables))


def _strogatz(name: str) -> Problem:
  """A Strogatz problem: one state's derivative, with both right-hand sides of its system."""
  meta = _metadata(name)
  variables = tuple(str(f["name"]) for f in meta["features"])
  system = {}
  for state_file in (f"{name[:-1]}1", f"{name[:-1]}2"):
    left, right = _equation(_metadata(state_file))
    system[left.rstrip("'").strip()] = (f"{left} = {right}", _read(right, variables))
  if set(system) != set(variables):
    raise ValueError(f"{name}: the system's states {sorted(system)} are not its features")
  target, _ = _equation(meta)
  formula, truth = system[target.rstrip("'").strip()]
  return Problem(name=name, group="strogatz", variables=variables, target=target,
                 formula=formula.split("=", 1)[1].strip(), truth=truth,
                 system=tuple(system[v][1] for v in variables))
