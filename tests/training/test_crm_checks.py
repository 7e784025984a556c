"""Checks of a CRM export: the split's periods, column drift (PSI), and the warnings that fire above their limits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from features.export import ColumnMapping
from training.crm_checks import (
    COLUMN_DRIFT,
    ECE_LIMIT,
    MISSING_BIN,
    OTHER_BIN,
    POOR_CALIBRATION,
    POSITIVE_RATE_RATIO_LIMIT,
    POSITIVE_RATE_SHIFT,
    PSI_LIMIT,
    column_drift,
    export_warnings,
    population_stability,
    split_summary,
)
from training.crm_models import BOOSTER, ODOO_NAIVE_BAYES, ModelComparison, compare_models
from training.crm_split import ExportSplit
from training.quality import BASELINE_BEATS_MODEL, TOO_FEW_POSITIVES

N_TRAIN, N_VALID, N_HOLDOUT = 4000, 1000, 2000
NUMBER = ColumnMapping(role="fit", type="number")
CATEGORY = ColumnMapping(role="fit", type="category")
BOOLEAN = ColumnMapping(role="engagement", type="boolean")


def time_split(n_train: int = N_TRAIN, n_valid: int = N_VALID, n_holdout: int = N_HOLDOUT) -> ExportSplit:
    """Rows in time order: the first are training, then validation, then the holdout."""
    positions = np.arange(n_train + n_valid + n_holdout)
    return ExportSplit("time", positions[:n_train], positions[n_train : n_train + n_valid],
                       positions[n_train + n_valid :], positions.astype(np.int64), None)  # fmt: skip


def labels(rates: tuple[float, float, float], split: ExportSplit, seed: int = 0) -> NDArray[np.int64]:
    """Exactly `rate` positives in each period (the first rows of each), so the summary's rates are known."""
    y = np.zeros(len(split.times), dtype=np.int64)
    for rows, rate in zip((split.train, split.valid, split.holdout), rates, strict=True):
        y[rows[: round(rate * len(rows))]] = 1
    return y


def drifting_frame(seed: int = 0) -> pd.DataFrame:
    """Columns whose training and holdout rows share a distribution, and columns whose holdout rows moved."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VALID + N_HOLDOUT
    late = np.arange(n) >= N_TRAIN + N_VALID
    stable_number = rng.lognormal(3.0, 1.0, n)
    stable_number[rng.uniform(size=n) < 0.1] = np.nan
    shifted_number = rng.normal(0.0, 1.0, n) + np.where(late, 1.0, 0.0)
    mix_early, mix_late = [0.5, 0.3, 0.2, 0.0], [0.2, 0.2, 0.2, 0.4]
    draw = rng.uniform(size=n)
    cumulative = np.cumsum(np.where(late[:, None], mix_late, mix_early), axis=1)[:, :-1]
    shifted_category = np.array(["Google", "Direct", "Events", "Partner"])[(draw[:, None] > cumulative).sum(axis=1)]
    return pd.DataFrame({
        "stable number": stable_number,
        "shifted number": shifted_number,
        "stable category": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "shifted category": shifted_category,
        "stable flag": np.where(rng.uniform(size=n) < 0.2, 1.0, 0.0),
        "newly missing": np.where(late & (rng.uniform(size=n) < 0.5), np.nan, rng.normal(size=n)),
    })  # fmt: skip


COLUMNS = {
    "stable number": NUMBER,
    "shifted number": NUMBER,
    "stable category": CATEGORY,
    "shifted category": CATEGORY,
    "stable flag": BOOLEAN,
    "newly missing": NUMBER,
}


@pytest.fixture(scope="module")
def drift() -> pd.DataFrame:
    return column_drift(drifting_frame(), time_split(), COLUMNS)


# ---- split summary -------------------------------------------------------------------------------------------
def test_split_summary_counts_rows_positives_and_rates_per_period() -> None:
    split = time_split()
    dates = pd.Series(pd.date_range("2024-01-01", periods=len(split.times), freq="h", tz="UTC"))
    summary = split_summary(labels((0.05, 0.1, 0.3), split), split, dates)
    assert summary["split"].tolist() == ["train", "valid", "holdout"]
    assert summary["rows"].tolist() == [N_TRAIN, N_VALID, N_HOLDOUT]
    assert summary["positives"].tolist() == [200, 100, 600]
    assert summary["positive_rate"].tolist() == pytest.approx([0.05, 0.1, 0.3])
    assert summary["first"].tolist() == [dates.iloc[0], dates.iloc[N_TRAIN], dates.iloc[N_TRAIN + N_VALID]]
    assert summary["last"].iloc[-1] == dates.iloc[-1]


def test_split_summary_without_dates_leaves_first_and_last_empty() -> None:
    split = time_split()
    summary = split_summary(labels((0.1, 0.1, 0.1), split), split, None)
    assert summary["first"].isna().all() and summary["last"].isna().all()


def test_split_summary_reports_an_order_column_as_it_is() -> None:
    split = time_split(10, 5, 5)
    order = pd.Series(np.arange(1000, 1020))
    summary = split_summary(np.r_[np.ones(10), np.zeros(10)].astype(np.int64), split, order)
    assert summary[["first", "last"]].to_numpy().tolist() == [[1000, 1009], [1010, 1014], [1015, 1019]]


# ---- column drift --------------------------------------------------------------------------------------------
def test_stable_columns_have_a_psi_near_zero(drift: pd.DataFrame) -> None:
    psi = drift.set_index("column")["psi"]
    for column in ("stable number", "stable category", "stable flag"):
        assert psi[column] < 0.02, column


def test_shifted_columns_have_a_large_psi(drift: pd.DataFrame) -> None:
    psi = drift.set_index("column")["psi"]
    for column in ("shifted number", "shifted category", "newly missing"):
        assert psi[column] > PSI_LIMIT, column


def test_drift_is_sorted_largest_first_and_names_the_bin_that_moved(drift: pd.DataFrame) -> None:
    assert drift["psi"].is_monotonic_decreasing
    rows = drift.set_index("column")
    # A value never seen in training lands in the pooled bin, with a large but finite contribution.
    assert rows.loc["shifted category", "top_bin"] == OTHER_BIN
    assert rows.loc["shifted category", "train_share"] == 0.0
    assert rows.loc["shifted category", "holdout_share"] == pytest.approx(0.4, abs=0.03)
    assert rows.loc["newly missing", "top_bin"] == MISSING_BIN
    assert rows.loc["stable flag", "top_bin"] in {"yes", "no"}  # booleans read as the user's yes and no
    assert math.isfinite(rows.loc["shifted category", "psi"])


def test_psi_of_an_empty_bin_is_finite() -> None:
    terms = population_stability(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]))
    assert np.isfinite(terms).all()
    assert terms[1] == 0.0 and terms[0] > 0 and terms[2] > 0


def test_rare_category_values_are_pooled() -> None:
    # 30 values of 0.5 % each: alone, each would add noise; pooled, they are one stable bin.
    rng = np.random.default_rng(4)
    n = 10_000
    rare = [f"r{k}" for k in range(30)]
    values = np.where(rng.uniform(size=n) < 0.85, "common", rng.choice(rare, n))
    split = time_split(5000, 1000, 4000)
    drift = column_drift(pd.DataFrame({"source": values}), split, {"source": CATEGORY})
    assert drift.loc[0, "bins"] == 2
    assert drift.loc[0, "psi"] < 0.01


# ---- warnings ------------------------------------------------------------------------------------------------
def _summary(rates: tuple[float, float, float]) -> pd.DataFrame:
    split = time_split()
    return split_summary(labels(rates, split), split, None)


def _drift(psi: float) -> pd.DataFrame:
    return pd.DataFrame([{"column": "Lead Source", "type": "category", "psi": psi, "bins": 5, "top_bin": "Partner",
                          "train_share": 0.1, "holdout_share": 0.4}])  # fmt: skip


def _comparison(baseline_gap: float) -> ModelComparison:
    """The booster against one baseline whose scores separate the classes `baseline_gap` log-odds more."""
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=3000) < 0.3).astype(np.int64)
    noise = rng.normal(0.0, 1.0, 3000)
    model = 1 / (1 + np.exp(-(1.0 * y + noise)))
    baseline = 1 / (1 + np.exp(-((1.0 + baseline_gap) * y + noise)))
    return compare_models(y, model, {ODOO_NAIVE_BAYES: baseline})


def _rules(
    summary: tuple[float, float, float] = (0.2, 0.2, 0.2), psi: float = 0.05, ece: float = 0.01, gap: float = 0.0
) -> list[str]:
    """The rules that fire on an export that is stable and well calibrated, but for the one figure changed."""
    return [w.rule for w in export_warnings(_summary(summary), _drift(psi), ece, _comparison(gap))]


def test_nothing_fires_on_a_stable_well_calibrated_export() -> None:
    assert _rules() == []


@pytest.mark.parametrize(
    ("rates", "fires"),
    [
        ((0.1, 0.15, 0.1 * POSITIVE_RATE_RATIO_LIMIT + 0.01), True),
        ((0.1, 0.15, 0.1 * POSITIVE_RATE_RATIO_LIMIT - 0.01), False),
        ((0.2, 0.15, 0.2 / POSITIVE_RATE_RATIO_LIMIT - 0.01), True),
        ((0.2, 0.15, 0.2 / POSITIVE_RATE_RATIO_LIMIT + 0.01), False),
    ],
)
def test_a_shift_of_the_positive_rate_warns_beyond_the_ratio_limit(
    rates: tuple[float, float, float], fires: bool
) -> None:
    assert (POSITIVE_RATE_SHIFT in _rules(summary=rates)) is fires


def test_the_positive_rate_warning_says_what_moved_and_what_to_do() -> None:
    warnings = export_warnings(_summary((0.048, 0.127, 0.308)), _drift(0.0), 0.01, None)
    [message] = [w.message for w in warnings if w.rule == POSITIVE_RATE_SHIFT]
    assert "from 4.8% in training (12.7% in validation) to 30.8% in the holdout, 6.4x (limit: 2x either way)" in message
    assert "rank leads by the score" in message


@pytest.mark.parametrize(("psi", "fires"), [(PSI_LIMIT + 0.01, True), (PSI_LIMIT - 0.01, False)])
def test_column_drift_warns_above_the_psi_limit(psi: float, fires: bool) -> None:
    assert (COLUMN_DRIFT in _rules(psi=psi)) is fires


def test_the_drift_warning_names_the_column_and_the_bin() -> None:
    [warning] = export_warnings(_summary((0.2, 0.2, 0.2)), _drift(0.6), 0.0, None)
    assert warning.model == "crm_export"
    assert warning.message.startswith("column 'Lead Source' (category) shifted between training and holdout leads")
    assert "index 0.60 (limit 0.25); most in 'Partner', 10.0% of training leads and 40.0% of holdout leads" in (
        warning.message)  # fmt: skip


@pytest.mark.parametrize(
    ("rate", "ece", "fires"),
    [
        (0.3, ECE_LIMIT + 0.005, True),  # common positives: the absolute limit
        (0.3, ECE_LIMIT - 0.005, False),
        (0.04, 0.025, True),  # rare positives: half the rate, 0.02, is the tighter limit
        (0.04, 0.015, False),
    ],
)
def test_poor_calibration_warns_above_the_smaller_limit(rate: float, ece: float, fires: bool) -> None:
    assert (POOR_CALIBRATION in _rules(summary=(rate, rate, rate), ece=ece)) is fires


def test_the_calibration_warning_gives_the_error_in_points() -> None:
    warnings = export_warnings(_summary((0.3, 0.3, 0.3)), _drift(0.0), 0.19, None)
    [message] = [w.message for w in warnings if w.rule == POOR_CALIBRATION]
    assert message.startswith("holdout calibration error (ECE) 0.190, above the limit 0.050")
    assert "off by about 19 percentage points" in message


def test_a_baseline_beating_the_model_beyond_noise_warns_and_within_noise_does_not() -> None:
    far, near = _comparison(0.6), _comparison(0.02)
    assert far.beaten_by == (ODOO_NAIVE_BAYES,) and near.beaten_by is None
    auc = near.table.set_index("model")["roc_auc"]
    assert auc[ODOO_NAIVE_BAYES] > auc[BOOSTER]  # ahead, but within the margin
    assert BASELINE_BEATS_MODEL in _rules(gap=0.6)
    assert BASELINE_BEATS_MODEL not in _rules(gap=0.02)
    [warning] = [w for w in export_warnings(_summary((0.2, 0.2, 0.2)), _drift(0.0), 0.0, far)
                 if w.rule == BASELINE_BEATS_MODEL]  # fmt: skip
    assert "the odoo naive bayes baseline ranks the holdout leads better than the model" in warning.message
    assert "Keep Odoo's own predictive scoring" in warning.message


def test_too_few_holdout_positives_warns() -> None:
    split = time_split(2000, 500, 400)
    summary = split_summary(labels((0.1, 0.1, 0.1), split), split, None)  # 40 holdout positives
    rules = [w.rule for w in export_warnings(summary, _drift(0.0), 0.0, None)]
    assert rules == [TOO_FEW_POSITIVES]
