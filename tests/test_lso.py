"""Latent-space optimisation against the original's recorded population and GWO steps."""

import json
import pathlib

import numpy as np
import pytest

from snip_jax.sr import lso

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_sr_original"
STEPS = [(case, step) for case, steps in
         json.loads((FIXTURES / "tiny_sr_lso.json").read_text())["gwo"].items()
         for step in steps]


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURES / "tiny_sr_lso.npz") as data:
    return dict(data)


@pytest.fixture(scope="module")
def meta():
  return json.loads((FIXTURES / "tiny_sr_lso.json").read_text())


def recorded_draws(ref):
  return lso.PopulationDraws(ref["sample_indices"], ref["normal_noise"], ref["rand_r"],
                             ref["randn_noise"])


def subset_key(x_batch, y_batch):
  return np.ascontiguousarray(x_batch).tobytes() + np.ascontiguousarray(y_batch).tobytes()


def test_create_population_reproduces_the_recorded_population(ref):
  """Rows 0 and 26–49 are computed; rows 1–25 come from a fake encoder keyed on the subset."""
  x, y, idx = ref["x_scaled"], ref["y_to_fit"], ref["sample_indices"]
  table = {subset_key(x[i], y[i]): ref["pop"][k + 1] for k, i in enumerate(idx)}
  calls = []

  def encode(x_batch, y_batch):
    calls.append(len(x_batch))
    return np.stack([table[subset_key(xb, yb)] for xb, yb in zip(x_batch, y_batch)])

  pop = lso.create_population(encode, x, y, ref["encoded_y"], draws=recorded_draws(ref))
  assert calls == [25]
  assert pop.dtype == np.float32 and pop.shape == (50, 16)
  np.testing.assert_array_equal(pop, ref["pop"])


def test_recorded_data_is_the_standardised_sample(ref):
  scaled = (ref["x_to_fit"] - ref["scaler_mean"]) / ref["scaler_scale"]
  np.testing.assert_allclose(ref["x_scaled"], scaled, rtol=0, atol=1e-12)
  np.testing.assert_allclose(ref["x_scaled"].std(axis=0), 1.0, atol=1e-12)
  np.testing.assert_array_equal(ref["pop"][0], ref["encoded_y"][0])


def test_noisy_members_use_their_noise_only_when_asked(ref):
  x, y, idx, noise = ref["x_scaled"], ref["y_to_fit"], ref["sample_indices"], ref["normal_noise"]
  fed = {}

  def encode(x_batch, y_batch):
    fed["x"], fed["y"] = x_batch, y_batch
    return np.zeros((len(x_batch), 16), np.float32)

  lso.create_population(encode, x, y, ref["encoded_y"], draws=recorded_draws(ref))
  np.testing.assert_array_equal(fed["x"], x[idx])
  np.testing.assert_array_equal(fed["y"], y[idx])
  noisy = lso.LSOOptions(use_noise=True)
  lso.create_population(encode, x, y, ref["encoded_y"], noisy, draws=recorded_draws(ref))
  np.testing.assert_array_equal(fed["y"][:15], y[idx[:15]])
  expected = np.stack([y[i] + n[i] for i, n in zip(idx[15:], noise)])
  np.testing.assert_array_equal(fed["y"][15:], expected)


def test_recorded_noise_has_the_documented_scales(ref):
  ratio = ref["normal_noise"].reshape(10, -1).std(axis=1) / np.std(ref["y_to_fit"])
  np.testing.assert_allclose(ratio, lso.noise_sigmas(10), rtol=0.25)


@pytest.mark.parametrize("case,step", STEPS, ids=[f"{c}{s['t']}" for c, s in STEPS])
def test_gwo_step_reproduces_the_recorded_positions(ref, meta, case, step):
  key = f"gwo{case}_t{step['t']}_"
  previous = f"gwo{case}_t{step['t'] - 1}_"
  elites = lso.Elites.initial(16) if step["t"] == 0 else lso.Elites(
      ref[previous + "scores"],
      np.stack([ref[previous + f"{n}_pos"] for n in ("alpha", "beta", "delta")]))
  positions, new = lso.gwo_step(ref[key + "pop_in"], ref[key + "fitness"], step["t"],
                                meta["max_iteration"], elites, coefficients=ref[key + "draws"],
                                bounds=(step["lb"], step["ub"]))
  assert positions.dtype == np.float64
  np.testing.assert_array_equal(positions, ref[key + "positions_out"])
  np.testing.assert_array_equal(new.scores, ref[key + "scores"])
  np.testing.assert_array_equal(
      new.positions, np.stack([ref[key + f"{n}_pos"] for n in ("alpha", "beta", "delta")]))
  assert new.scores[0] == step["alpha_score"]
  positions_unclipped, _ = lso.gwo_step(ref[key + "pop_in"], ref[key + "fitness"], step["t"],
                                        meta["max_iteration"], elites,
                                        coefficients=ref[key + "draws"])
  np.testing.assert_array_equal(positions_unclipped, positions)


def test_gwo_chains_through_float32_like_the_original(ref, meta):
  elites = lso.Elites.initial(16)
  pop = ref["gwoA_t0_pop_in"]
  for t in range(2):
    key = f"gwoA_t{t}_"
    np.testing.assert_array_equal(pop, ref[key + "pop_in"])
    positions, elites = lso.gwo_step(pop, ref[key + "fitness"], t, meta["max_iteration"],
                                     elites, coefficients=ref[key + "draws"])
    np.testing.assert_array_equal(positions, ref[key + "positions_out"])
    pop = positions.astype(np.float32)


def test_elite_ties_take_the_lowest_index(ref, meta):
  fitness = ref["gwoB_t0_fitness"]
  assert np.sum(fitness == 0) == 48
  elites = lso.select_elites(ref["gwoB_t0_pop_in"], fitness, lso.Elites.initial(16))
  picked = meta["gwo"]["B"][0]["combined_argsort_top3"]
  np.testing.assert_array_equal(elites.positions, ref["gwoB_t0_pop_in"][picked])


def test_gwo_step_formula_against_a_direct_computation():
  rng = np.random.default_rng(3)
  pop, fitness = rng.normal(size=(6, 4)), rng.normal(size=6)
  coefficients = rng.random((6, 6, 4))
  positions, elites = lso.gwo_step(pop, fitness, 5, 20, lso.Elites.initial(4),
                                   coefficients=coefficients)
  leaders = pop[np.argsort(fitness)[:3]]
  a = 1.5
  expected = np.mean([leaders[k] - (2 * a * coefficients[2 * k] - a) *
                      np.abs(2 * coefficients[2 * k + 1] * leaders[k] - pop)
                      for k in range(3)], axis=0)
  np.testing.assert_allclose(positions, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(elites.positions, leaders)


def test_population_split_and_subset_size():
  assert lso.population_split(50) == (15, 10, 24)
  assert lso.population_split(1) == (0, 0, 0)
  assert sum(lso.population_split(20)) == 19
  assert lso.subset_size(200) == 100
  assert lso.subset_size(2001, 200) == 200
  with pytest.raises(ValueError, match="pop_size"):
    lso.population_split(0)


def test_seeded_population_is_reproducible_and_well_formed():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(60, 2)), rng.normal(size=(60, 1))
  z = rng.normal(size=(1, 8)).astype(np.float32)
  encode = lambda xb, yb: np.concatenate([xb.mean(1), xb.std(1), xb.min(1), yb.mean(1),
                                          yb.std(1)], axis=1)
  options = lso.LSOOptions(pop_size=20)
  first = lso.create_population(encode, x, y, z, options, rng=np.random.default_rng(5))
  second = lso.create_population(encode, x, y, z, options, rng=np.random.default_rng(5))
  np.testing.assert_array_equal(first, second)
  assert first.shape == (20, 8) and first.dtype == np.float32
  alone = lso.create_population(None, x, y, z, lso.LSOOptions(pop_size=1), rng=0)
  np.testing.assert_array_equal(alone, z)
  draws = lso.draw_population(np.random.default_rng(5), y, 8, options)
  assert draws.subset_indices.shape == (10, 30) and draws.noise.shape == (4, 60, 1)
  assert all(len(set(row)) == 30 for row in draws.subset_indices)
  expected_rows = encode(x[draws.subset_indices], y[draws.subset_indices])
  np.testing.assert_allclose(first[1:11], expected_rows, rtol=1e-6)
  assert np.all((draws.radius_uniform >= 0) & (draws.radius_uniform < 1))


TARGET = np.linspace(-1.0, 1.0, 8)


def fake_decode_and_score(calls=None):
  """R² = exp(−|z − TARGET|²/8): a smooth score peaking at TARGET; equation = member's z."""

  def decode_and_score(latents, samples_per_member):
    if calls is not None:
      calls.append((latents.shape, samples_per_member))
    r2 = np.exp(-np.sum((latents - TARGET) ** 2, axis=1) / 8.0)
    equations = [tuple(np.round(z, 6)) for z in latents]
    return equations, r2, [[(e, s)] * samples_per_member for e, s in zip(equations, r2)]

  return decode_and_score


def start_population(seed=0):
  return np.random.default_rng(seed).normal(0.0, 1.5, (30, 8)).astype(np.float32)


def test_gwo_search_is_seeded_stops_and_improves():
  calls = []
  options = lso.LSOOptions(max_iterations=60, stop_r2=0.9, samples_per_member=3)
  first = lso.gwo_search(fake_decode_and_score(calls), start_population(), options, rng=11)
  second = lso.gwo_search(fake_decode_and_score(), start_population(), options, rng=11)
  assert (first.equation, first.r2, first.history) == (second.equation, second.r2,
                                                       second.history)
  assert first.r2 > 0.9 and first.history[-2] <= 0.9
  assert 1 < first.iterations < 60 and len(calls) == first.iterations
  assert calls[0] == ((30, 8), 3)
  assert first.r2 > first.history[0] + 0.1
  assert first.evaluations == 30 * first.iterations
  assert len(first.candidates) == 30 * first.iterations
  np.testing.assert_allclose(np.exp(-np.sum((np.array(first.equation) - TARGET) ** 2) / 8),
                             first.r2, atol=1e-5)


def test_random_search_runs_under_the_same_budget():
  options = lso.LSOOptions(max_iterations=15, stop_r2=1.5)
  gwo = lso.gwo_search(fake_decode_and_score(), start_population(), options, rng=2)
  calls = []
  rand = lso.random_search(fake_decode_and_score(calls), start_population(), options, rng=2)
  again = lso.random_search(fake_decode_and_score(), start_population(), options, rng=2)
  assert gwo.iterations == rand.iterations == 15
  assert gwo.evaluations == rand.evaluations == 15 * 30
  assert rand.history == again.history and rand.equation == again.equation
  assert all(shape == (30, 8) for shape, _ in calls)
  assert np.all(np.diff(rand.history) >= 0)
  assert gwo.r2 > rand.r2


def test_failed_members_count_as_zero_fitness():
  np.testing.assert_array_equal(lso.member_fitness([0.5, np.nan, -3.0, 1.0]),
                                [-0.5, 0.0, 0.0, -1.0])

  def decode_and_score(latents, samples_per_member):
    r2 = np.full(len(latents), np.nan)
    r2[1] = -0.5
    return [None, "f"] + [None] * (len(latents) - 2), r2, []

  result = lso.gwo_search(decode_and_score, start_population(), lso.LSOOptions(max_iterations=2))
  assert result.equation == "f" and result.r2 == -0.5 and result.iterations == 2


def test_latent_space_optimisation_end_to_end():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 1))
  encode = lambda xb, yb: np.concatenate([xb.mean(1), yb.mean(1), np.zeros((len(xb), 5))], 1)
  options = lso.LSOOptions(pop_size=12, max_iterations=5, stop_r2=1.5)
  seen = []

  def decode_and_score(latents, samples_per_member):
    seen.append(latents)
    return fake_decode_and_score()(latents, samples_per_member)

  runs = [lso.latent_space_optimisation(encode, decode_and_score, x, y, options=options, rng=4,
                                        method=method) for method in ("gwo", "gwo", "random")]
  assert runs[0].history == runs[1].history and runs[0].evaluations == 60
  assert runs[2].evaluations == 60
  np.testing.assert_allclose(seen[0][0], encode(x[None], y[None])[0])
  np.testing.assert_array_equal(seen[0], seen[5])
  with pytest.raises(ValueError, match="unknown LSO method"):
    lso.latent_space_optimisation(encode, fake_decode_and_score(), x, y, method="cma")
