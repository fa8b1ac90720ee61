"""SNIPRegressor on the tiny SR checkpoint (tests/fixtures/snip_sr_original/tiny_sr.pth, the
original's model after 800 steps: it decodes crude linear equations of x_0, x_1)."""

import logging

import numpy as np
import pytest
from sklearn.base import clone

import snip_jax
from snip_jax.sr.regressor import top_features
from tests.test_sr_decoding import SR_FIXTURES

SNIPRegressor = snip_jax.SNIPRegressor  # the public name
TINY_SR = str(SR_FIXTURES / "tiny_sr.pth")


def _line(n=300, seed=0):
  """X [n, 2] uniform in [-2, 2], y = 3 - 3.4 x_0 (what the tiny model decodes)."""
  X = np.random.default_rng(seed).uniform(-2, 2, size=(n, 2))
  return X, 3.0 - 3.4 * X[:, 0]


@pytest.fixture(scope="module")
def fitted():
  X, y = _line()
  return SNIPRegressor(TINY_SR, n_candidates=6).fit(X, y), X, y


def test_fit_finds_the_line_and_predicts_on_raw_x(fitted):
  reg, X, y = fitted
  assert reg.train_r2_ > 0.999 and reg.score(X, y) > 0.999
  np.testing.assert_allclose(reg.predict(X), reg.expression_.evaluate(X)[:, 0])
  assert reg.candidates_[0].r2 == pytest.approx(reg.train_r2_)
  assert 1 <= len(reg.candidates_) + reg.n_invalid_ <= 6  # repeated decodings refined once
  assert len({c.equation for c in reg.candidates_}) == len(reg.candidates_)
  assert str(reg.sympy_expr().free_symbols) in ("{x_0, x_1}", "{x_1, x_0}", "{x_0}")


def test_the_standardisation_is_written_back_into_the_equation(fitted):
  reg, X, y = fitted
  shifted = clone(reg).fit(X * 1000.0 + 5.0, y)  # the encoder sees the same standardised data
  np.testing.assert_allclose(shifted.predict(X * 1000.0 + 5.0), reg.predict(X), rtol=1e-6,
                             atol=1e-6)


def test_many_features_keep_the_most_correlated(fitted):
  rng = np.random.default_rng(1)
  X = rng.normal(size=(200, 15))
  y = 3.0 * X[:, 11] - 2.0 * X[:, 4] + 0.1 * X[:, 7]
  np.testing.assert_array_equal(top_features(X, y, 10),
                                np.sort(np.argsort(-np.abs([np.corrcoef(X[:, j], y)[0, 1]
                                                            for j in range(15)]))[:10]))
  reg = clone(fitted[0]).set_params(n_candidates=2).fit(X, y)
  np.testing.assert_array_equal(reg.selected_features_, [4, 11])
  assert reg.predict(X).shape == (200,)


def test_lso_with_a_seed_returns_the_same_equation_twice_and_in_parallel():
  X, y = _line(150)
  y = y + np.sin(X[:, 1])
  make = lambda n_jobs: SNIPRegressor(TINY_SR, n_candidates=2, lso=True, lso_iterations=2,
                                     lso_pop_size=6, stop_r2=1.5, random_state=3,
                                     n_jobs=n_jobs).fit(X, y)
  first, second, parallel = make(1), make(1), make(2)
  assert first.equation_ == second.equation_ == parallel.equation_
  assert [vars(c) for c in parallel.candidates_] == [vars(c) for c in first.candidates_]
  assert len(first.candidates_) > 2  # the search decoded and scored the population too


def test_bad_input_is_one_clear_error(fitted, caplog):
  reg = clone(fitted[0])
  X, y = _line(20)
  cases = [((X, np.ones(20)), "y is constant"), ((X[:1], y[:1]), "at least 2 rows"),
           ((np.array([["a", "b"]] * 3), np.arange(3.0)), "must be numeric"),
           ((X, y[:5]), "X must be"), ((X, y), "decoding must be one of")]
  for (x_arg, y_arg), message in cases:
    model = reg.set_params(decoding="topk") if "decoding" in message else reg
    with pytest.raises(ValueError, match=message):
      model.fit(x_arg, y_arg)
    reg.set_params(decoding="sample")
  with pytest.raises(ValueError, match="refine_per must be one of"):
    clone(reg).set_params(refine_per="tree").fit(X, y)
  with pytest.raises(ValueError, match="not fitted yet"):
    clone(reg).predict(X)
  with pytest.raises(ValueError, match="must have 2 columns"):
    fitted[0].predict(np.ones((3, 5)))
  with pytest.raises(ValueError, match="not a symbolic-regression checkpoint"):
    SNIPRegressor(str(SR_FIXTURES.parent / "snip_original" / "tiny.pth")).fit(X, y)

  X[3, 1], y[7] = np.nan, np.inf
  with caplog.at_level(logging.WARNING):
    clone(reg).set_params(n_candidates=2).fit(X, y)
  assert "dropping 2 of 20 rows" in caplog.text


@pytest.mark.parametrize("refine_per, refinements", [("equation", 2), ("skeleton", 1)])
def test_one_refinement_per_equation_or_per_skeleton(refine_per, refinements):
  from snip_jax.sr.regressor import _Search  # pylint: disable=g-import-not-at-top
  from snip_jax.symbolic.trees import parse_prefix  # pylint: disable=g-import-not-at-top

  x = np.linspace(-2, 2, 50)[:, None]
  search = _Search(SNIPRegressor(refine_per=refine_per), None, x, 2.5 * x[:, 0] + 0.7)
  same_form = [parse_prefix("add,mul,1.9,x_0,0.2"), parse_prefix("add,mul,3.1,x_0,1.5"), None]
  scored = search._score(same_form)  # pylint: disable=protected-access
  assert len(search.tried) == refinements and search.n_invalid == 1 and scored[2] is None
  assert scored[0][1] > 0.999999 and scored[1][1] > 0.999999
  assert (scored[0] is scored[1]) == (refine_per == "skeleton")
