"""The CRM export's booster refit on recent history, its baselines, and the rule that keeps a worse model out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from benchmarks.crm_refit import load_drifting_export
from features.export import ColumnMapping, ExportEncoder
from training import crm_models
from training.config import BoosterConfig
from training.crm_load import CrmExport
from training.crm_models import (
    BOOSTER,
    COMPARISON_METRICS,
    LOGISTIC_REGRESSION,
    ODOO_NAIVE_BAYES,
    CalibrationScheme,
    FittedBooster,
    baseline_probabilities,
    compare_models,
    fit_export_booster,
    naive_bayes_frame,
)
from training.crm_split import ExportSplit, split_export
from training.metrics import binary_metrics
from training.models import fit_calibrator, train_booster

# One thread and a quick learning rate: the suite shares two cores with other work.
FAST = BoosterConfig(num_threads=1, learning_rate=0.1, max_rounds=200)
# Enough leads for a clear refit gain on every seed tried (0.044 to 0.074 AUC on seeds 0-4), a second to train.
DRIFT_LEADS = 5000
# The refit's lead over the train-only booster that the test asks for: half the smallest gain seen on seeds 0-4.
REFIT_GAIN = 0.02


class Encoded:
    """An export encoded for the booster, with its split."""

    def __init__(self, export: CrmExport, columns: dict[str, ColumnMapping], split: ExportSplit) -> None:
        seen = np.sort(np.concatenate([split.train, split.valid]))
        self.encoder = ExportEncoder(columns=columns).fit(export.frame.iloc[seen])
        self.x = self.encoder.transform(export.frame)
        self.export, self.columns, self.split = export, columns, split

    def fit(self, *, refit: bool = True, calibration: CalibrationScheme = "validation") -> FittedBooster:
        return fit_export_booster(
            self.x, self.export.y, self.split, feature_names=self.encoder.feature_names_,
            categorical=self.encoder.categorical_features_, config=FAST, refit=refit, calibration=calibration,
        )  # fmt: skip


@pytest.fixture(scope="module")
def drifting() -> Encoded:
    export, mapping = load_drifting_export(DRIFT_LEADS, seed=0)
    return Encoded(export, mapping.usable, split_export(export))


@pytest.fixture(scope="module")
def today(drifting: Encoded) -> FittedBooster:
    return drifting.fit(refit=False)


@pytest.fixture(scope="module")
def refit(drifting: Encoded) -> FittedBooster:
    return drifting.fit()


def _auc(encoded: Encoded, p: NDArray[np.float64]) -> float:
    return binary_metrics(encoded.export.y[encoded.split.holdout], p)["roc_auc"]


# ---- the booster ---------------------------------------------------------------------------------------------
def test_refit_on_training_and_validation_ranks_a_drifting_holdout_better(
    drifting: Encoded, today: FittedBooster, refit: FittedBooster
) -> None:
    rates = [drifting.export.y[rows].mean() for rows in (drifting.split.train, drifting.split.valid,
                                                           drifting.split.holdout)]  # fmt: skip
    assert rates[0] < rates[1] < rates[2]  # the positive rate rises over time, as in the export
    before, after = _auc(drifting, today.holdout_probability), _auc(drifting, refit.holdout_probability)
    figures = (
        f"holdout ROC AUC on a drifting export of {DRIFT_LEADS:,} leads: train-only {before:.3f}, refit on train + "
        f"valid {after:.3f} (+{after - before:.3f}); positive rate {rates[0]:.1%} / {rates[1]:.1%} / {rates[2]:.1%}"
    )
    print(f"\n{figures}")  # noqa: T201 (the before/after figures for the report, shown with -s)
    assert after > before + REFIT_GAIN
    assert refit.refit and not today.refit
    assert refit.rounds == today.rounds


def test_the_refit_booster_has_exactly_the_rounds_chosen_on_validation(drifting: Encoded, refit: FittedBooster) -> None:
    assert refit.booster.current_iteration() == refit.rounds
    assert refit.calibration == "validation"
    np.testing.assert_allclose(refit.probability(drifting.x[drifting.split.holdout]), refit.holdout_probability)


def test_refit_false_is_the_train_only_booster_calibrated_on_validation(
    drifting: Encoded, today: FittedBooster
) -> None:
    split, x, y = drifting.split, drifting.x, drifting.export.y
    booster = train_booster(
        x[split.train], y[split.train], x[split.valid], y[split.valid], feature_names=drifting.encoder.feature_names_,
        categorical=drifting.encoder.categorical_features_, config=FAST,
    )  # fmt: skip
    calibrator, _ = fit_calibrator(booster.predict(x[split.valid], raw_score=True), y[split.valid],
                                   split.times[split.valid])  # fmt: skip
    expected = calibrator.apply(booster.predict(x[split.holdout], raw_score=True))
    assert today.calibration == "validation"
    assert today.rounds == booster.current_iteration()
    np.testing.assert_allclose(today.holdout_probability, expected)


def test_cross_fitting_over_one_period_is_the_train_only_boosters_validation_scores(
    drifting: Encoded, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a single slice, the booster scoring the validation period is trained on the rows before it: the train-only
    # booster, so both calibration schemes must give the same calibrator.
    monkeypatch.setattr(crm_models, "CROSS_FIT_PERIODS", 1)
    crossed = drifting.fit(calibration="cross_fit")
    plain = drifting.fit(calibration="validation")
    assert crossed.calibrator == plain.calibrator


def test_a_booster_of_the_chosen_rounds_on_training_rows_is_the_early_stopped_one(
    drifting: Encoded, today: FittedBooster
) -> None:
    # Cross-fitting reuses the train-only booster for the first slice of the validation period instead of fitting
    # the same rounds on the same rows again: that holds only if the two are the same booster.
    split, x, y = drifting.split, drifting.x, drifting.export.y
    again = crm_models._train_rounds(
        x[split.train], y[split.train], today.rounds, feature_names=drifting.encoder.feature_names_,
        categorical=drifting.encoder.categorical_features_, config=FAST,
    )  # fmt: skip
    np.testing.assert_array_equal(
        again.predict(x[split.valid], raw_score=True), today.booster.predict(x[split.valid], raw_score=True)
    )


def test_cross_fitted_calibration_ranks_as_the_refit_booster_does(drifting: Encoded, refit: FittedBooster) -> None:
    # The calibrator changes probabilities, never the booster: same rounds, same trees, and (isotonic or sigmoid,
    # both monotone) the same ranking up to ties.
    crossed = drifting.fit(calibration="cross_fit")
    assert crossed.calibration == "cross_fit" and crossed.rounds == refit.rounds
    assert crossed.booster.model_to_string() == refit.booster.model_to_string()
    assert abs(_auc(drifting, crossed.holdout_probability) - _auc(drifting, refit.holdout_probability)) < 0.005
    assert crossed.holdout_probability.min() > 0.0 and crossed.holdout_probability.max() < 1.0


# ---- baselines -----------------------------------------------------------------------------------------------
def naive_bayes_world(
    n_rows: int, *, n_columns: int = 40, levels: int = 6, spread: float = 0.25, seed: int = 0
) -> tuple[pd.DataFrame, NDArray[np.int64], dict[str, ColumnMapping]]:
    """Many category columns, each independently and weakly tied to the outcome: naive Bayes is the true model."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n_rows) < 0.3).astype(np.int64)
    frame: dict[str, NDArray[np.str_]] = {}
    for j in range(n_columns):
        # The level's chances given each class: a little tilted toward the positive class for some levels.
        logits = rng.normal(0.0, spread, size=(2, levels))
        chances = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cumulative = np.cumsum(chances, axis=1)[y][:, :-1]
        picks = (rng.uniform(size=n_rows)[:, None] > cumulative).sum(axis=1)
        frame[f"field {j}"] = np.array([f"v{k}" for k in range(levels)])[picks]
    columns = {name: ColumnMapping(role="fit", type="category") for name in frame}
    return pd.DataFrame(frame), y, columns


def _split(n_train: int, n_valid: int, n_holdout: int) -> ExportSplit:
    positions = np.arange(n_train + n_valid + n_holdout)
    return ExportSplit("time", positions[:n_train], positions[n_train : n_train + n_valid],
                       positions[n_train + n_valid :], positions.astype(np.int64), None)  # fmt: skip


def test_a_naive_bayes_world_with_few_leads_blocks_registration() -> None:
    # 400 leads to learn from, 40 category columns each carrying a little signal: the booster's guards against
    # overfitting (100 leads per leaf and per category) leave it little to learn, while counting is all it takes.
    # On seeds 1-4 naive Bayes leads by 0.027 to 0.048 AUC, against a noise margin of 0.016.
    frame, y, columns = naive_bayes_world(3400, seed=1)
    split = _split(300, 100, 3000)
    encoder = ExportEncoder(columns=columns).fit(frame.iloc[:400])
    x = encoder.transform(frame)
    fitted = fit_export_booster(x, y, split, feature_names=encoder.feature_names_,
                                categorical=encoder.categorical_features_, config=FAST)  # fmt: skip
    baselines = baseline_probabilities(frame, y, split, columns)
    comparison = compare_models(y[split.holdout], fitted.holdout_probability, baselines)
    auc = comparison.table.set_index("model")["roc_auc"]
    figures = (
        f"naive Bayes world: booster {auc[BOOSTER]:.3f}, odoo naive bayes {auc[ODOO_NAIVE_BAYES]:.3f}, logistic "
        f"regression {auc[LOGISTIC_REGRESSION]:.3f}; margin {comparison.margin:.3f}\n{comparison.reason}"
    )
    print(f"\n{figures}")  # noqa: T201 (the figures and the reason a user reads, shown with -s)
    assert comparison.best_baseline == ODOO_NAIVE_BAYES
    assert comparison.beaten_by is not None and comparison.beaten_by[0] == ODOO_NAIVE_BAYES
    assert not comparison.register
    reason = comparison.reason
    assert reason.startswith("not registered: the odoo naive bayes baseline ranks the holdout leads better")
    assert f"{auc[ODOO_NAIVE_BAYES]:.3f} vs {auc[BOOSTER]:.3f}" in reason
    assert "Keep Odoo's own predictive scoring" in reason


def test_baselines_score_every_holdout_lead_with_a_probability(drifting: Encoded) -> None:
    baselines = baseline_probabilities(drifting.export.frame, drifting.export.y, drifting.split, drifting.columns)
    assert set(baselines) == {ODOO_NAIVE_BAYES, LOGISTIC_REGRESSION}
    for name, p in baselines.items():
        assert p.shape == drifting.split.holdout.shape, name
        assert ((p > 0) & (p < 1)).all(), name
        assert _auc(drifting, p) > 0.7, name


def test_naive_bayes_levels_bin_numbers_by_quantiles_of_the_fitting_rows_and_keep_missing() -> None:
    frame = pd.DataFrame({
        "size": [1.0, 2.0, 3.0, 4.0, np.nan, 100.0],
        "opted out": [1.0, 0.0, np.nan, 1.0, 0.0, 0.0],
        "source": ["Web", None, "Ads", "Web", "Ads", "New"],
    })  # fmt: skip
    columns = {
        "size": ColumnMapping(role="fit", type="number"),
        "opted out": ColumnMapping(role="fit", type="boolean"),
        "source": ColumnMapping(role="fit", type="category"),
    }
    levels = naive_bayes_frame(frame, columns, np.arange(4))
    assert levels["size"].tolist()[4] == "(missing)"
    # 100 lies beyond every training row: the top bin, the same as the largest training value.
    assert levels["size"].iloc[5] == levels["size"].iloc[3] != levels["size"].iloc[0]
    assert levels["opted out"].tolist() == ["yes", "no", "(missing)", "yes", "no", "no"]
    assert levels["source"].tolist() == ["Web", "(missing)", "Ads", "Web", "Ads", "New"]


def test_missing_values_carry_signal_into_the_naive_bayes() -> None:
    # Only whether the phone is given tells won from lost; Odoo itself would skip the empty field and see nothing.
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=2000) < 0.3).astype(np.int64)
    given = rng.uniform(size=2000) < np.where(y == 1, 0.8, 0.3)
    frame = pd.DataFrame({"phone": np.where(given, "given", None), "noise": rng.choice(["a", "b"], 2000)})
    columns = {c: ColumnMapping(role="fit", type="category") for c in frame.columns}
    split = _split(1000, 500, 500)
    p = baseline_probabilities(frame, y, split, columns)[ODOO_NAIVE_BAYES]
    assert binary_metrics(y[split.holdout], p)["roc_auc"] > 0.65


# ---- comparison ----------------------------------------------------------------------------------------------
LABELS = (np.random.default_rng(0).uniform(size=4000) < 0.25).astype(np.int64)


def _scores(separation: float, seed: int = 0) -> NDArray[np.float64]:
    """Probabilities that separate LABELS by `separation` log-odds, with seeded noise."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, len(LABELS))
    return np.asarray(1 / (1 + np.exp(-(separation * LABELS + noise))), dtype=np.float64)


def test_the_table_has_a_row_per_scorer_and_the_declared_metrics() -> None:
    p = _scores(1.0)
    comparison = compare_models(LABELS, p, {ODOO_NAIVE_BAYES: p * 0.5, LOGISTIC_REGRESSION: p * 0.9})
    assert comparison.table["model"].tolist() == [BOOSTER, ODOO_NAIVE_BAYES, LOGISTIC_REGRESSION]
    assert comparison.table.columns.tolist() == ["model", *COMPARISON_METRICS]


def test_a_model_ahead_of_its_baselines_is_registered() -> None:
    comparison = compare_models(LABELS, _scores(1.5), {ODOO_NAIVE_BAYES: _scores(0.5, seed=1)})
    assert comparison.register and comparison.beaten_by is None
    assert comparison.reason.startswith("registered: ROC AUC")
    assert "ahead of the best baseline, odoo naive bayes" in comparison.reason


def test_a_baseline_ahead_within_noise_is_reported_but_does_not_block() -> None:
    model = _scores(1.0)
    # The same scores with a little more separation: a lead well inside the noise margin.
    baseline = 1 / (1 + np.exp(-(np.log(model / (1 - model)) + 0.05 * LABELS)))
    comparison = compare_models(LABELS, model, {ODOO_NAIVE_BAYES: baseline})
    auc = comparison.table.set_index("model")["roc_auc"]
    assert auc[BOOSTER] < auc[ODOO_NAIVE_BAYES] < auc[BOOSTER] + comparison.margin
    assert comparison.register and comparison.beaten_by is None
    assert comparison.best_baseline == ODOO_NAIVE_BAYES
    assert "slightly better" in comparison.reason and "within the noise margin" in comparison.reason


def test_a_baseline_far_ahead_blocks_and_the_reason_says_what_to_do() -> None:
    weak = _scores(0.4)
    comparison = compare_models(LABELS, weak, {ODOO_NAIVE_BAYES: weak, LOGISTIC_REGRESSION: _scores(1.6, seed=1)})
    assert comparison.beaten_by == (LOGISTIC_REGRESSION,)
    assert comparison.best_baseline == LOGISTIC_REGRESSION
    assert not comparison.register
    assert "the logistic regression baseline ranks the holdout leads better" in comparison.reason
    assert "score with the logistic regression" in comparison.reason


def test_the_margin_is_the_noise_of_the_boosters_auc_on_the_holdout() -> None:
    small = compare_models(LABELS[:400], _scores(1.0)[:400], {})
    large = compare_models(LABELS, _scores(1.0), {})
    assert large.margin < small.margin < 3.5 * large.margin  # about sqrt(10) times wider on a tenth of the leads
    assert small.register and small.best_baseline is None


def test_a_holdout_of_one_class_cannot_register() -> None:
    y = np.zeros(100, dtype=np.int64)
    p = np.linspace(0.01, 0.5, 100)
    comparison = compare_models(y, p, {ODOO_NAIVE_BAYES: p})
    assert not comparison.register
    assert "one class only" in comparison.reason
