"""The CRM export's model: a booster refit on all history before the holdout, its baselines, the registration rule."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.export import ColumnMapping, ExportEncoder
from features.scoring import Calibrator
from training.baselines import OdooNaiveBayes, logistic_baseline
from training.config import BoosterConfig
from training.crm_split import ExportSplit
from training.metrics import binary_metrics
from training.models import fit_calibrator, train_booster
from training.quality import auc_half_width

log = logging.getLogger(__name__)

CalibrationScheme = Literal["cross_fit", "validation"]

# With calibration="cross_fit", the validation period is cut into this many consecutive slices (see
# `_cross_fitted_scores`), each scored by a booster trained on everything before it. More slices bring the boosters'
# history closer to the refit booster's, at one booster fit per extra slice; with 4, the last booster misses a quarter
# of the validation period (4 % of the export with the default split).
CROSS_FIT_PERIODS = 4

# Numbers enter the naive Bayes as deciles of the rows it is fitted on: Odoo's method counts values, and a number has
# too many distinct values to count; ten bins keep ~10 % of the rows in each, enough to estimate a rate from.
NAIVE_BAYES_NUMBER_BINS = 10
# The level a missing value gets in the naive Bayes. Odoo skips empty fields, but in an export a blank often carries
# signal (no phone given, no company size) and the booster sees it too (NaN goes its own way at every split); a
# baseline that cannot use it would be a straw man.
MISSING_LEVEL = "(missing)"

BOOSTER = "booster"
ODOO_NAIVE_BAYES = "odoo_naive_bayes"
LOGISTIC_REGRESSION = "logistic_regression"
COMPARISON_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10")

# Registration rule: never knowingly register a model that ranks leads worse than a baseline, Odoo's method first.
# "Knowingly" means beyond the holdout's sampling noise: a baseline blocks when its holdout ROC AUC exceeds the
# booster's by more than this many 95 % half-widths of the booster's AUC (Hanley-McNeil, `auc_half_width`, on the
# rarer class's count). For two scorers of the same leads, whose errors correlate (r ~ 0.5-0.8 in practice), the
# difference of the AUCs is about as noisy as one AUC or less, so one half-width is a two-sided 5 % test or a little
# stricter. A baseline ahead within that margin is reported in the table and the reason, and does not block.
BASELINE_MARGIN_HALF_WIDTHS = 1.0

# What to try when a baseline wins, in the user's terms (see `baseline_advice`).
_ADVICE: Mapping[str, str] = {
    ODOO_NAIVE_BAYES: (
        "Keep Odoo's own predictive scoring (the same naive Bayes on these columns) for now. It wins when the export "
        "is small or its signal is spread thinly over many category columns: try a longer history, drop columns that "
        "mostly hold rare values, and check the split summary for a change in the positive rate over time"
    ),
    LOGISTIC_REGRESSION: (
        "A logistic regression on the same columns would serve better: the signal looks additive and the booster "
        "does not find more in it at this size. Try a longer history, fewer columns, or score with the logistic "
        "regression"
    ),
}


def baseline_advice(name: str) -> str:
    """What a user can do when the baseline `name` ranks their leads better than the model."""
    return _ADVICE.get(name, "Score with the baseline for now, or try a longer history or fewer columns")


# ---- the booster ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FittedBooster:
    """A calibrated booster for an export and what it scores on the holdout.

    `rounds` were chosen by early stopping on the validation rows; when `refit`, `booster` was then trained with
    exactly that many rounds on training and validation rows together. `calibration` says where the calibrator's
    out-of-sample scores came from (see `fit_export_booster`).
    """

    booster: lgb.Booster
    calibrator: Calibrator
    rounds: int
    refit: bool
    holdout_probability: NDArray[np.float64]
    calibration: CalibrationScheme

    def probability(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated probabilities of encoded rows."""
        raw = np.asarray(self.booster.predict(x, raw_score=True), dtype=np.float64)
        return np.asarray(self.calibrator.apply(raw), dtype=np.float64)


def _train_rounds(
    x: NDArray[np.float64], y: NDArray[np.int64], rounds: int, *, feature_names: list[str], categorical: list[str],
    config: BoosterConfig,
) -> lgb.Booster:  # fmt: skip
    """A booster with exactly `rounds` rounds, no early stopping (the rounds were chosen on other rows)."""
    if len(np.unique(y)) < 2:
        raise ValueError("the rows to refit on hold a single class: cannot train a classifier")
    cats = [c for c in categorical if c in feature_names]
    data = lgb.Dataset(x, label=y, feature_name=feature_names, categorical_feature=cats, free_raw_data=True)
    return lgb.train(config.params(), data, num_boost_round=rounds)


def _cross_fitted_scores(
    x: NDArray[np.float64], y: NDArray[np.int64], split: ExportSplit, first: lgb.Booster, rounds: int, *,
    feature_names: list[str], categorical: list[str], config: BoosterConfig,
) -> NDArray[np.float64]:  # fmt: skip
    """Raw scores of the validation rows, each slice of the period scored by a booster trained on all rows before it.

    The slices follow `split.times`. The first slice's booster is trained on the training rows alone: that is
    `first` (same parameters, rows and rounds; LightGBM is run deterministically), so it is not fitted again.
    """
    raw = np.empty(len(split.valid), dtype=np.float64)
    order = np.argsort(split.times[split.valid], kind="stable")
    seen = split.train
    for k, part in enumerate(np.array_split(order, min(CROSS_FIT_PERIODS, len(order)))):
        rows = split.valid[part]
        booster = first if k == 0 else _train_rounds(
            x[seen], y[seen], rounds, feature_names=feature_names, categorical=categorical, config=config
        )  # fmt: skip
        raw[part] = np.asarray(booster.predict(x[rows], raw_score=True), dtype=np.float64)
        seen = np.concatenate([seen, rows])
    return raw


def fit_export_booster(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    split: ExportSplit,
    *,
    feature_names: list[str],
    categorical: list[str],
    config: BoosterConfig,
    refit: bool = True,
    calibration: CalibrationScheme = "validation",
) -> FittedBooster:
    """Choose the rounds by early stopping on validation, refit on training + validation, calibrate on recent leads.

    Under drift the latest history matters most, and a booster trained on the training rows alone never learns from
    it; refitting with the same parameters and rounds on training and validation rows does. The calibrator is fitted
    on the validation period, the most recent before the holdout in a time split, from out-of-sample raw scores:

    - "validation" (the default): the train-only booster's scores of the validation rows.
    - "cross_fit": each of CROSS_FIT_PERIODS consecutive slices of the validation period scored by a booster with
      the same parameters and rounds trained on every row before the slice, as the refit booster is trained on every
      row before the holdout. Costs CROSS_FIT_PERIODS - 1 extra booster fits.

    `refit=False` keeps the train-only booster and its validation-fitted calibrator (the behaviour before refitting,
    kept for before/after figures); both schemes are then the same thing.
    """
    train, valid = split.train, split.valid
    first = train_booster(
        x[train], y[train], x[valid], y[valid], feature_names=feature_names, categorical=categorical, config=config
    )
    rounds = int(first.current_iteration())
    booster = first
    scheme: CalibrationScheme = calibration if refit else "validation"
    if refit:
        seen = np.sort(np.concatenate([train, valid]))
        booster = _train_rounds(
            x[seen], y[seen], rounds, feature_names=feature_names, categorical=categorical, config=config
        )
    if scheme == "cross_fit":
        raw_valid = _cross_fitted_scores(
            x, y, split, first, rounds, feature_names=feature_names, categorical=categorical, config=config
        )
    else:
        # The refit booster has seen every validation row, so it has no out-of-sample scores of the latest period;
        # the train-only booster's are the latest out-of-sample evidence, and its calibrator is applied to the refit
        # booster. That assumes both boosters' raw scores mean the same: true when the validation period resembles
        # the training period (same parameters and rounds, a little more data). Under drift it is not: the refit
        # booster's scores already carry part of the change in the positive rate, and the calibrator adds it again,
        # which carries the trend one period further. Measured on drifting exports (benchmarks/crm_refit.py, 20,000
        # leads, seeds 0-2), that helped whether the rate rose or fell (holdout ECE 0.005-0.014 lower than with
        # "cross_fit", which does not make the assumption) and cost 0.001-0.006 on a flat rate, at about half the
        # fitting time. It would hurt where a trend reverses right at the holdout.
        raw_valid = np.asarray(first.predict(x[valid], raw_score=True), dtype=np.float64)
    calibrator, _ = fit_calibrator(raw_valid, y[valid], split.times[valid])
    holdout = np.asarray(booster.predict(x[split.holdout], raw_score=True), dtype=np.float64)
    log.info("booster: %d rounds, %s, calibrated on %s scores of %d validation leads", rounds,
             "refit on training + validation" if refit else "trained on training only", scheme, len(valid))  # fmt: skip
    return FittedBooster(
        booster=booster,
        calibrator=calibrator,
        rounds=rounds,
        refit=refit,
        holdout_probability=np.asarray(calibrator.apply(holdout), dtype=np.float64),
        calibration=scheme,
    )


# ---- baselines -----------------------------------------------------------------------------------------------
def _number_levels(values: pd.Series, fit_rows: NDArray[np.intp]) -> pd.Series:
    """Decile bins of a number column (edges from the fitting rows), as text levels; missing is a level."""
    present = values.iloc[fit_rows].dropna().to_numpy(dtype=np.float64)
    quantiles = np.linspace(0.0, 1.0, NAIVE_BAYES_NUMBER_BINS + 1)[1:-1]
    edges = np.unique(np.quantile(present, quantiles)) if present.size else np.zeros(0)
    bins = np.searchsorted(edges, values.to_numpy(dtype=np.float64, na_value=np.nan), side="right")
    levels = pd.Series([f"bin {b}" for b in bins], index=values.index, dtype=object)
    return levels.where(values.notna(), MISSING_LEVEL)


def naive_bayes_frame(
    frame: pd.DataFrame, columns: Mapping[str, ColumnMapping], fit_rows: NDArray[np.intp]
) -> pd.DataFrame:
    """The export's columns as the levels Odoo's naive Bayes counts.

    Categories as they are, numbers as deciles of `fit_rows`, booleans as yes/no, and missing as a level of its own
    in every column.
    """
    levels: dict[str, pd.Series] = {}
    for name, col in columns.items():
        values = frame[name]
        if col.type == "number":
            levels[name] = _number_levels(values, fit_rows)
        elif col.type == "boolean":
            levels[name] = values.map({1.0: "yes", 0.0: "no"}).astype(object).where(values.notna(), MISSING_LEVEL)
        else:
            levels[name] = values.astype(object).where(values.notna(), MISSING_LEVEL)
    return pd.DataFrame(levels, index=frame.index)


def baseline_probabilities(
    frame: pd.DataFrame, y: NDArray[np.int64], split: ExportSplit, columns: Mapping[str, ColumnMapping]
) -> dict[str, NDArray[np.float64]]:
    """Holdout probabilities of the baselines the booster must beat, fitted on training + validation rows.

    "odoo_naive_bayes": Odoo CRM's frequency naive Bayes (0.1 smoothing) on the columns' levels
    (`naive_bayes_frame`). "logistic_regression": one-hot categories (rare ones pooled, missing a level),
    standardised signed-log numbers, booleans, and missing indicators.
    """
    seen = np.sort(np.concatenate([split.train, split.valid]))
    names = list(columns)
    levels = naive_bayes_frame(frame[names], columns, seen)
    odoo = OdooNaiveBayes(fields=names).fit(levels.iloc[seen], y[seen])
    encoder = ExportEncoder(columns=columns).fit(frame.iloc[seen])
    encoded = pd.DataFrame(encoder.transform(frame), columns=encoder.feature_names_)
    by_column = dict(zip(encoder.columns_, encoder.feature_names_, strict=True))
    numbers = [by_column[n] for n, c in columns.items() if c.type == "number"]
    flags = [by_column[n] for n, c in columns.items() if c.type == "boolean"]
    logit = logistic_baseline(numeric=numbers + flags, categorical=encoder.categorical_features_, log_scale=numbers)
    logit.fit(encoded.iloc[seen], y[seen])
    return {
        ODOO_NAIVE_BAYES: np.asarray(odoo.predict_proba(levels.iloc[split.holdout])[:, 1], dtype=np.float64),
        LOGISTIC_REGRESSION: np.asarray(logit.predict_proba(encoded.iloc[split.holdout])[:, 1], dtype=np.float64),
    }


# ---- comparison and the registration rule ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelComparison:
    """The booster against its baselines on the holdout, and whether it may be registered.

    `table` has one row per scorer (booster first) and the columns COMPARISON_METRICS. `margin` is the AUC lead a
    baseline needs to block registration (BASELINE_MARGIN_HALF_WIDTHS half-widths of the booster's holdout AUC).
    """

    table: pd.DataFrame
    best_baseline: str | None
    beaten_by: tuple[str, ...] | None
    margin: float
    register: bool
    reason: str


def _label(name: str) -> str:
    return name.replace("_", " ")


def _versus(first: float, second: float) -> str:
    """Two AUCs as "0.712 vs 0.678": three decimals, or as many more (up to six) as it takes to print them apart."""
    digits = next((d for d in range(3, 6) if f"{first:.{d}f}" != f"{second:.{d}f}"), 6)
    return f"{first:.{digits}f} vs {second:.{digits}f}"


def compare_models(
    y_holdout: NDArray[np.int64], model_probability: NDArray[np.float64], baselines: Mapping[str, NDArray[np.float64]]
) -> ModelComparison:
    """Holdout metrics of the booster and each baseline, and the registration decision with its reason.

    The rule: not registered when a baseline's holdout ROC AUC beats the booster's by more than the margin
    (BASELINE_MARGIN_HALF_WIDTHS), nor when the holdout holds one class and nothing can be compared.
    """
    if BOOSTER in baselines:
        raise ValueError(f"a baseline cannot be called {BOOSTER!r}: that row is the model's")
    scorers = {BOOSTER: model_probability, **baselines}
    rows = [{"model": name, **binary_metrics(y_holdout, p)} for name, p in scorers.items()]
    table = pd.DataFrame(rows, columns=["model", *COMPARISON_METRICS])
    auc = table.set_index("model")["roc_auc"]
    positives, n = int(np.sum(y_holdout)), len(y_holdout)
    booster_auc = float(auc[BOOSTER])
    finite = auc.drop(BOOSTER).dropna()
    best = str(finite.idxmax()) if len(finite) else None
    if not math.isfinite(booster_auc):
        reason = (
            f"not registered: the holdout's {n:,} leads hold {positives:,} positive(s), one class only, so no ROC AUC "
            "can be measured and the model cannot be told from its baselines; use a longer export or a later holdout"
        )
        return ModelComparison(table, best, None, math.inf, register=False, reason=reason)
    margin = BASELINE_MARGIN_HALF_WIDTHS * auc_half_width(booster_auc, min(positives, n - positives))
    ahead = finite[finite > booster_auc + margin].sort_values(ascending=False, kind="stable")
    beaten_by = tuple(str(name) for name in ahead.index) or None
    noise = f"the noise margin of +-{margin:.3f} on {positives:,} positives among {n:,} holdout leads"
    if beaten_by is not None:
        winner = beaten_by[0]
        others = "".join(f"; {_label(b)} too ({float(auc[b]):.3f})" for b in beaten_by[1:])
        reason = (
            f"not registered: the {_label(winner)} baseline ranks the holdout leads better than the model (ROC AUC "
            f"{_versus(float(auc[winner]), booster_auc)}, more than {noise}){others}. "
            f"{baseline_advice(winner)}."
        )
        return ModelComparison(table, best, beaten_by, margin, register=False, reason=reason)
    if best is None:
        reason = f"registered: ROC AUC {booster_auc:.3f} on the holdout; no baseline could be measured against it"
    elif float(auc[best]) > booster_auc:
        reason = (
            f"registered: the {_label(best)} baseline ranks the holdout slightly better (ROC AUC "
            f"{_versus(float(auc[best]), booster_auc)}) but within {noise}; the two are not told apart by this holdout"
        )
    else:
        reason = (
            f"registered: ROC AUC {booster_auc:.3f} on the holdout, ahead of the best baseline, {_label(best)} "
            f"({float(auc[best]):.3f}); {noise.removeprefix('the ')}"
        )
    return ModelComparison(table, best, None, margin, register=True, reason=reason)
