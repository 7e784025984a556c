"""Our compiled TreeSHAP gives LightGBM's own contributions, for every kind of split and every awkward value."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from features.treeshap import booster_contributions, tree_tables
from tests.conftest import Trained

N_ROWS = 3000


def _training_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Numbers with missing values, a count where zero means unknown, and two categorical codes."""
    x = np.column_stack(
        [
            rng.normal(size=N_ROWS),
            rng.exponential(size=N_ROWS),
            rng.poisson(2.0, size=N_ROWS).astype(float),
            rng.integers(0, 12, size=N_ROWS).astype(float),
            rng.integers(0, 40, size=N_ROWS).astype(float),
        ]
    )
    x[rng.random(x.shape) < 0.15] = np.nan
    logit = x[:, 0] - np.nan_to_num(x[:, 1]) + 0.5 * np.isin(x[:, 3], [2, 5, 7]) + 0.3 * (x[:, 4] % 3 == 0)
    y = (rng.random(N_ROWS) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(int)
    return x, y


def _booster(params: dict[str, object], seed: int = 0) -> tuple[lgb.Booster, np.ndarray]:
    x, y = _training_data(np.random.default_rng(seed))
    data = lgb.Dataset(x, y, categorical_feature=[3, 4], free_raw_data=False)
    base = {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 20, "seed": seed, "cat_smooth": 1.0}
    booster = lgb.train(base | params, data, num_boost_round=40)
    return booster, x


def _awkward_rows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training-like rows plus what a request can bring: NaN, zeros, negative, unseen and out-of-range codes."""
    rows = x[rng.choice(len(x), 400)].copy()
    rows[rng.random(rows.shape) < 0.2] = np.nan
    rows[:40, 2] = 0.0
    rows[40:80, 3] = rng.choice([-3.0, -1.0, -0.5, 0.0, 11.0, 12.0, 57.0, 1e12], size=40)
    rows[80:120, 4] = rng.choice([-0.5, 39.0, 40.0, 4096.0, np.inf, -np.inf], size=40)
    rows[120:140, 0] = rng.choice([np.inf, -np.inf, 1e300, -0.0], size=20)
    return rows


@pytest.mark.parametrize(
    "params",
    [
        {"num_leaves": 15, "max_depth": 4},
        {"num_leaves": 7, "max_depth": 3, "zero_as_missing": True},
        {"num_leaves": 31, "max_depth": 5, "max_cat_to_onehot": 64},  # one-vs-rest category splits
        {"num_leaves": 15, "max_depth": 4, "use_missing": False},
    ],
)
def test_contributions_equal_lightgbms_on_awkward_rows(params: dict[str, object]) -> None:
    booster, x = _booster(params)
    tables = tree_tables(booster)
    assert tables is not None
    rows = _awkward_rows(x, np.random.default_rng(1))
    expected = booster.predict(rows, pred_contrib=True)
    got = tables.contributions(rows)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # The contributions and the bias add up to the raw score: the probability comes from the same sums.
    np.testing.assert_allclose(got.sum(axis=1), booster.predict(rows, raw_score=True), rtol=0, atol=1e-12)


def test_the_scorers_own_boosters_explain_exactly_as_lightgbm(trained: Trained) -> None:
    scorer = trained.result.scorer
    rows = trained.result.shap_features  # holdout rows of the trained readiness model
    for booster, x in ((scorer.readiness_booster, rows), (scorer.fit_booster, rows[:, : scorer.n_fit])):
        np.testing.assert_allclose(
            booster_contributions(booster, x), booster.predict(x, pred_contrib=True), rtol=0, atol=1e-12
        )


def test_deep_trees_are_left_to_lightgbm() -> None:
    booster, x = _booster({"num_leaves": 255, "max_depth": 12, "min_data_in_leaf": 2})
    assert tree_tables(booster) is None
    rows = _awkward_rows(x, np.random.default_rng(2))[:50]
    np.testing.assert_array_equal(booster_contributions(booster, rows), booster.predict(rows, pred_contrib=True))


def test_rows_of_the_wrong_width_are_refused() -> None:
    booster, x = _booster({"num_leaves": 7, "max_depth": 3})
    tables = tree_tables(booster)
    assert tables is not None
    with pytest.raises(ValueError, match="expected rows of 5 features"):
        tables.contributions(x[:, :4])


def test_large_inputs_split_over_threads_give_the_same_rows() -> None:
    booster, x = _booster({"num_leaves": 15, "max_depth": 4})
    tables = tree_tables(booster)
    assert tables is not None
    rows = np.vstack([_awkward_rows(x, np.random.default_rng(seed)) for seed in range(3)])  # 1,200 rows
    np.testing.assert_array_equal(tables.contributions(rows, threads=0), tables.contributions(rows, threads=1))
    np.testing.assert_array_equal(tables.contributions(rows, threads=3), tables.contributions(rows, threads=1))
