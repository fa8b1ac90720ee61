"""Latent-space optimisation (LSO): the population, Grey Wolf Optimisation and random search.

A port of the companion repository's `LSO_fit.create_population`, `alg_update.lso_update_pop`
and the GWO loop of `lso_fit`, in NumPy. The model enters only through two callables, so
this module needs neither JAX nor a checkpoint:

* `encode(x_batch, y_batch) -> latents`: (B, m, d) scaled inputs and (B, m, 1) targets of
  equal-sized point sets to (B, latent_dim) latents;
* `decode_and_score(latents, samples_per_member) -> (equations, r2, candidates)`: per member
  the best equation of its decoded (and refined) candidates, that equation's training R²
  and the list of its candidates; the whole population in one call.

Fixes against the original, all documented where they apply: every draw comes from a seeded
`np.random.Generator` (or from recorded draws, for replays); the population size is an
option; the "noisy" members can really use their noise; elite ties are broken by a stable
sort; the whole population is scored per call instead of member by member.
"""

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

FAITHFUL_SPLIT = (15, 10, 24)
Encode = Callable[[np.ndarray, np.ndarray], np.ndarray]
DecodeAndScore = Callable[[np.ndarray, int], Tuple[Sequence[Any], np.ndarray, Sequence[Any]]]


@dataclasses.dataclass(frozen=True)
class PopulationDraws:
  """Every random draw of `create_population`, so a run can be replayed.

  Attributes:
    subset_indices: (n_subsets + n_noisy, m) row indices, in the order the points are fed.
    noise: (n_noisy,) + y.shape additive target noise of the noisy members.
    radius_uniform: (n_perturbed,) U(0, 1) draws; the radius is `max_radius` times these.
    directions: (n_perturbed, latent_dim) standard normal perturbation directions.
  """
  subset_indices: np.ndarray
  noise: np.ndarray
  radius_uniform: np.ndarray
  directions: np.ndarray


@dataclasses.dataclass(frozen=True)
class Elites:
  """The three leaders of GWO (alpha, beta, delta): fitness (lower is better) and position."""
  scores: np.ndarray
  positions: np.ndarray

  @classmethod
  def initial(cls, latent_dim: int) -> "Elites":
    """The original's start: zero positions with score +inf."""
    return cls(np.full(3, np.inf), np.zeros((3, latent_dim)))


@dataclasses.dataclass(frozen=True)
class LSOOptions:
  """Search options; the defaults are those of the original's `run_lso.sh`.

  Attributes:
    pop_size: members (the original ignores `--lso_pop_size` and always uses 50).
    max_iterations: GWO iterations; also the denominator of the `a` schedule.
    samples_per_member: decodings per latent (`--beam_size 2`).
    stop_r2: stop once the best training R² exceeds this.
    use_noise: noisy members encode noisy targets (the original draws the noise and
      discards it: False reproduces that).
    max_radius: latent perturbations are `z + r·N(0, I)` with r ~ U(0, max_radius).
    max_input_points: sub-samples have n // 2 points, or this many when n > 10× it.
    time_limit: (ours) seconds for the search; it stops after the iteration that passes it.
  """
  pop_size: int = 50
  max_iterations: int = 80
  samples_per_member: int = 2
  stop_r2: float = 0.99
  use_noise: bool = False
  max_radius: float = 2.0
  max_input_points: int = 200
  time_limit: Optional[float] = None


@dataclasses.dataclass
class LSOResult:
  """Outcome of a search: the best equation, its R² and the search's trace."""
  equation: Any
  r2: float
  iterations: int
  history: list
  evaluations: int
  candidates: list


def population_split(pop_size: int) -> Tuple[int, int, int]:
  """(sub-sample, noisy, perturbed) member counts; 50 gives the original's (15, 10, 24)."""
  if pop_size < 1:
    raise ValueError(f"pop_size must be at least 1, got {pop_size}")
  others = pop_size - 1
  n_sub = int(round(others * FAITHFUL_SPLIT[0] / sum(FAITHFUL_SPLIT)))
  n_noisy = int(round(others * FAITHFUL_SPLIT[1] / sum(FAITHFUL_SPLIT)))
  return n_sub, n_noisy, others - n_sub - n_noisy


def subset_size(n_points: int, max_input_points: int = 200) -> int:
  """Points per sub-sample: half the data, or `max_input_points` for very large data."""
  return max_input_points if n_points > 10 * max_input_points else n_points // 2


def noise_sigmas(n_noisy: int) -> np.ndarray:
  """Relative noise levels of the noisy members, 0.01·(i/5 + 1) as in the original."""
  return 0.01 * (np.arange(n_noisy) / 5 + 1)


def draw_population(rng: np.random.Generator, y: np.ndarray, latent_dim: int,
                    options: LSOOptions = LSOOptions()) -> PopulationDraws:
  """Draws everything `create_population` needs from one seeded generator."""
  n_sub, n_noisy, n_pert = population_split(options.pop_size)
  m = subset_size(len(y), options.max_input_points)
  indices = np.array([rng.permutation(len(y))[:m] for _ in range(n_sub + n_noisy)], np.int64)
  scale = noise_sigmas(n_noisy) * np.std(y)
  noise = rng.standard_normal((n_noisy,) + y.shape) * scale.reshape((-1,) + (1,) * y.ndim)
  return PopulationDraws(indices.reshape(n_sub + n_noisy, m), noise, rng.random(n_pert),
                         rng.standard_normal((n_pert, latent_dim)))


def create_population(encode: Encode, x_scaled: np.ndarray, y: np.ndarray,
                      encoded_y: np.ndarray, options: LSOOptions = LSOOptions(),
                      rng: Any = None, draws: Optional[PopulationDraws] = None) -> np.ndarray:
  """The initial population: the data's latent, sub-sample latents and perturbed latents.

  Rows: `encoded_y`; latents of random sub-samples of (x_scaled, y); latents of more
  sub-samples (noisy targets if `options.use_noise`, else clean as in the original);
  `encoded_y + r·N(0, I)`. All sub-samples go through `encode` in one batch. The result has
  `encoded_y`'s dtype and the perturbations are computed in it, as the original does.
  """
  z = np.asarray(encoded_y).reshape(-1)
  y = np.asarray(y).reshape(len(y), -1)
  if draws is None:
    draws = draw_population(np.random.default_rng(rng), y, z.size, options)
  n_noisy = len(draws.noise)
  idx = np.asarray(draws.subset_indices)
  targets = np.broadcast_to(y, (len(idx),) + y.shape).copy()
  if options.use_noise and n_noisy:
    targets[len(idx) - n_noisy:] += np.asarray(draws.noise).reshape((n_noisy,) + y.shape)
  x_sub = np.asarray(x_scaled)[idx]
  y_sub = np.take_along_axis(targets, idx[..., None], axis=1)
  latents = np.zeros((0, z.size), z.dtype) if not len(idx) else np.asarray(
      encode(x_sub, y_sub), dtype=z.dtype).reshape(len(idx), z.size)
  radius = np.asarray(options.max_radius, z.dtype) * np.asarray(draws.radius_uniform, z.dtype)
  perturbed = z + radius.reshape(-1, 1) * np.asarray(draws.directions, z.dtype).reshape(-1, z.size)
  return np.concatenate([z[None], latents, perturbed], axis=0)


def select_elites(positions: np.ndarray, fitness: np.ndarray, elites: Elites) -> Elites:
  """The three lowest-fitness points among the population and the previous elites.

  The original uses numpy's default (unstable) argsort; a stable sort is used here, so ties
  (e.g. many members scoring 0) always resolve to the lowest index.
  """
  scores = np.concatenate([np.asarray(fitness, np.float64), elites.scores])
  points = np.concatenate([positions, elites.positions], axis=0)
  best = np.argsort(scores, kind="stable")[:3]
  return Elites(scores[best], points[best])


def gwo_step(population: np.ndarray, fitness: np.ndarray, iteration: int, max_iterations: int,
             elites: Elites, rng: Any = None, coefficients: Optional[np.ndarray] = None,
             bounds: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, Elites]:
  """One Grey Wolf update; returns the new float64 positions and the new elites.

  `coefficients` (6, N, d) are the uniform draws r1, r2 for alpha, then beta, then delta
  (drawn from `rng` if not given); `a = 2 − 2·iteration / max_iterations`. `bounds` clips the
  population first; the original clips to the population's own min/max, which changes
  nothing, so None (no clip) is equivalent.
  """
  positions = np.asarray(population)
  if bounds is not None:
    positions = np.clip(positions, bounds[0], bounds[1])
  elites = select_elites(positions, fitness, elites)
  if coefficients is None:
    coefficients = np.random.default_rng(rng).random((6,) + positions.shape)
  a = 2 - iteration * (2 / max_iterations)
  moved = []
  for leader, (r1, r2) in zip(elites.positions, np.reshape(coefficients, (3, 2) + positions.shape)):
    distance = np.abs(2 * r2 * leader[None] - positions)
    moved.append(leader[None] - (2 * a * r1 - a) * distance)
  return (moved[0] + moved[1] + moved[2]) / 3, elites


def member_fitness(r2: np.ndarray) -> np.ndarray:
  """GWO fitness −R², with failed (NaN) and negative R² counted as 0, as in the original."""
  r2 = np.nan_to_num(np.asarray(r2, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  return -np.maximum(r2, 0.0)


def _search(decode_and_score: DecodeAndScore, population: np.ndarray, options: LSOOptions,
            propose: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> LSOResult:
  """Evaluate, record the best, stop above `stop_r2`, else ask `propose` for the next batch."""
  result = LSOResult(None, -np.inf, 0, [], 0, [])
  pop = np.asarray(population)
  deadline = np.inf if options.time_limit is None else time.perf_counter() + options.time_limit
  for t in range(options.max_iterations):
    equations, r2, candidates = decode_and_score(pop, options.samples_per_member)
    r2 = np.asarray(r2, np.float64)
    clean = np.where(np.isfinite(r2), r2, -np.inf)
    best = int(np.argmax(clean))
    if clean[best] > result.r2:
      result.equation, result.r2 = equations[best], float(clean[best])
    result.iterations, result.evaluations = t + 1, result.evaluations + len(pop)
    result.history.append(result.r2)
    result.candidates.extend(candidates)
    if result.r2 > options.stop_r2 or time.perf_counter() > deadline:
      break
    pop = propose(t, pop, member_fitness(r2))
  return result


def gwo_search(decode_and_score: DecodeAndScore, population: np.ndarray,
               options: LSOOptions = LSOOptions(), rng: Any = None) -> LSOResult:
  """GWO from `population`: positions are cast back to its dtype after each step."""
  rng = np.random.default_rng(rng)
  dtype = np.asarray(population).dtype
  state = {"elites": Elites.initial(np.shape(population)[1])}

  def propose(t, pop, fitness):
    positions, state["elites"] = gwo_step(pop, fitness, t, options.max_iterations,
                                          state["elites"], rng=rng)
    return positions.astype(dtype)

  return _search(decode_and_score, population, options, propose)


def random_search(decode_and_score: DecodeAndScore, population: np.ndarray,
                  options: LSOOptions = LSOOptions(), rng: Any = None) -> LSOResult:
  """Ablation baseline: after the initial population, fresh uniform draws in its box.

  Same budget as `gwo_search` (members per iteration, iterations, stop rule); the box is the
  scalar [min, max] of the initial population, the range GWO's clip refers to.
  """
  rng = np.random.default_rng(rng)
  pop = np.asarray(population)
  low, high = float(pop.min()), float(pop.max())

  def propose(t, current, fitness):
    del t, fitness
    return rng.uniform(low, high, current.shape).astype(current.dtype)

  return _search(decode_and_score, population, options, propose)


def latent_space_optimisation(encode: Encode, decode_and_score: DecodeAndScore,
                              x_scaled: np.ndarray, y: np.ndarray,
                              encoded_y: Optional[np.ndarray] = None,
                              options: LSOOptions = LSOOptions(), rng: Any = None,
                              method: str = "gwo") -> LSOResult:
  """Builds the population from the data and runs GWO (or "random" search) on it."""
  searches = {"gwo": gwo_search, "random": random_search}
  if method not in searches:
    raise ValueError(f"unknown LSO method {method!r}; expected one of {sorted(searches)}")
  rng = np.random.default_rng(rng)
  y = np.asarray(y).reshape(len(y), -1)
  if encoded_y is None:
    encoded_y = encode(np.asarray(x_scaled)[None], y[None])
  population = create_population(encode, x_scaled, y, encoded_y, options, rng=rng)
  return searches[method](decode_and_score, population, options, rng=rng)
