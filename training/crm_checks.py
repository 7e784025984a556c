"""Checks of a CRM export's evidence: the periods of its split, how its columns drift, and what deserves a warning."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.export import ColumnMapping
from training.crm_models import BOOSTER, ModelComparison, baseline_advice
from training.crm_split import ExportSplit
from training.quality import (
    BASELINE_BEATS_MODEL,
    MIN_HOLDOUT_POSITIVES,
    TOO_FEW_POSITIVES,
    QualityWarning,
    auc_half_width,
)

# ---- limits ---------------------------------------------------------------------------------------------------
# Population stability index above which a column's distribution counts as significantly shifted: the usual reading
# in credit scoring (below 0.1 stable, 0.1-0.25 a moderate shift worth watching, above 0.25 a shift that changes what
# the model sees). Under no shift the PSI of ten bins is about 9 * (1/n_train + 1/n_holdout), 0.01 at 2,000 leads
# each, so the limit is far above noise for any export worth training on.
PSI_LIMIT = 0.25
# The holdout's positive rate against training's: beyond 2x either way the leads being scored convert at a different
# rate than those the model learned from, and its probabilities carry the old rate (calibration on validation catches
# only the part of the change that happened by then).
POSITIVE_RATE_RATIO_LIMIT = 2.0
# Holdout calibration error limit: the smaller of an absolute 5 points (a probability read off the model is off by
# more than 5 points on average) and half the holdout positive rate (at a 4 % rate, an error of 5 points would be
# larger than the rate itself: probabilities wrong by half are already useless as probabilities).
ECE_LIMIT = 0.05
ECE_LIMIT_OF_RATE = 0.5

# ---- drift measure --------------------------------------------------------------------------------------------
# Numbers are binned by deciles of the training rows, with missing as a bin of its own.
DRIFT_NUMBER_BINS = 10
# Category values below this share of the training rows are pooled into one bin, with values never seen in training:
# a value held by a handful of rows swings the PSI by noise alone, and a new value that grows large still shows,
# through the pooled bin.
RARE_CATEGORY_SHARE = 0.01
# Shares are floored here before the logarithm, so an empty bin on one side gives a large, finite contribution
# (a bin of 20 % appearing from nothing adds 0.2 * ln(0.2 / 1e-4) = 1.5) instead of infinity.
PSI_FLOOR = 1e-4
MISSING_BIN = "(missing)"
OTHER_BIN = "(other)"

# The `model` of the warnings (QualityWarning), and the rules these checks add to those of training/quality.py.
EXPORT_MODEL = "crm_export"
POSITIVE_RATE_SHIFT = "positive_rate_shift"
COLUMN_DRIFT = "column_drift"
POOR_CALIBRATION = "poor_calibration"

SPLITS: tuple[str, ...] = ("train", "valid", "holdout")


# ---- the periods of a split ------------------------------------------------------------------------------------
def split_summary(y: NDArray[np.int64], split: ExportSplit, dates_or_order: pd.Series | None) -> pd.DataFrame:
    """Rows, positives and positive rate of the training, validation and holdout leads: outcome drift shows here.

    With dates (or an order column) also the first and last value of each period; else those columns are empty.
    """
    rows: list[dict[str, object]] = []
    for name in SPLITS:
        positions: NDArray[np.intp] = getattr(split, name)
        positives = int(y[positions].sum())
        row: dict[str, object] = {
            "split": name,
            "rows": len(positions),
            "positives": positives,
            "positive_rate": positives / len(positions) if len(positions) else math.nan,
            "first": None,
            "last": None,
        }
        if dates_or_order is not None and len(positions):
            values = dates_or_order.iloc[positions]
            row.update(first=values.min(), last=values.max())
        rows.append(row)
    return pd.DataFrame(rows)


# ---- column drift ---------------------------------------------------------------------------------------------
def _number_bins(values: pd.Series, train: NDArray[np.intp]) -> tuple[NDArray[np.int64], list[str]]:
    """Decile bin of every row (edges from the training rows), the last bin for missing values, and bin labels."""
    present = values.iloc[train].dropna().to_numpy(dtype=np.float64)
    quantiles = np.linspace(0.0, 1.0, DRIFT_NUMBER_BINS + 1)[1:-1]
    edges = np.unique(np.quantile(present, quantiles)) if present.size else np.zeros(0)
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bins = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right")).astype(np.int64)
    bounds = [-math.inf, *edges.tolist(), math.inf]
    labels = [_interval(lo, hi) for lo, hi in itertools.pairwise(bounds)]
    return bins, [*labels, MISSING_BIN]


def _interval(lo: float, hi: float) -> str:
    if math.isinf(lo) and math.isinf(hi):
        return "any value"
    if math.isinf(lo):
        return f"< {hi:g}"
    return f">= {lo:g}" if math.isinf(hi) else f"{lo:g} to < {hi:g}"


def _category_bins(values: pd.Series, train: NDArray[np.intp]) -> tuple[NDArray[np.int64], list[str]]:
    """A bin per training value of at least RARE_CATEGORY_SHARE, one for the rest and unseen values, one for missing."""
    text = values.astype(object).where(values.notna(), None)
    shares = text.iloc[train].dropna().astype(str).value_counts() / max(len(train), 1)
    kept = sorted(str(v) for v in shares[shares >= RARE_CATEGORY_SHARE].index)
    codes = pd.Series(np.arange(len(kept), dtype=np.int64), index=kept)
    mapped = text.astype(str).map(codes).to_numpy(dtype=np.float64, na_value=np.nan)
    bins = np.where(text.isna().to_numpy(), len(kept) + 1, np.where(np.isnan(mapped), len(kept), mapped))
    return bins.astype(np.int64), [*kept, OTHER_BIN, MISSING_BIN]


def population_stability(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each bin's term of the PSI, (actual - expected) * ln(actual / expected), shares floored at PSI_FLOOR."""
    e, a = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return np.asarray((a - e) * np.log(a / e), dtype=np.float64)


def column_drift(frame: pd.DataFrame, split: ExportSplit, columns: Mapping[str, ColumnMapping]) -> pd.DataFrame:
    """Population stability index of every column between the training and the holdout leads, largest first.

    Numbers are binned by training deciles, categories and booleans by value (rare values pooled), missing values in
    a bin of their own. Also names the bin whose share moved the PSI most, with its two shares.
    """
    rows: list[dict[str, object]] = []
    for name, col in columns.items():
        values = frame[name]
        if col.type == "number":
            bins, labels = _number_bins(values, split.train)
        elif col.type == "boolean":
            bins, labels = _category_bins(values.map({1.0: "yes", 0.0: "no"}), split.train)
        else:
            bins, labels = _category_bins(values, split.train)
        shares = []
        for rows_of in (split.train, split.holdout):
            counts = np.bincount(bins[rows_of], minlength=len(labels)).astype(np.float64)
            shares.append(counts / max(len(rows_of), 1))
        terms = population_stability(shares[0], shares[1])
        top = int(np.argmax(terms))
        occupied = int(((shares[0] + shares[1]) > 0).sum())
        rows.append({
            "column": name, "type": col.type, "psi": float(terms.sum()), "bins": occupied, "top_bin": labels[top],
            "train_share": float(shares[0][top]), "holdout_share": float(shares[1][top]),
        })  # fmt: skip
    drift = pd.DataFrame(rows, columns=["column", "type", "psi", "bins", "top_bin", "train_share", "holdout_share"])
    return drift.sort_values(["psi", "column"], ascending=[False, True], kind="stable", ignore_index=True)


# ---- warnings -------------------------------------------------------------------------------------------------
def _value(summary: pd.DataFrame, split: str, column: str = "positive_rate") -> float:
    return float(summary.loc[summary["split"] == split, column].to_numpy(dtype=np.float64)[0])


def _booster_auc(comparison: ModelComparison | None) -> float:
    if comparison is None:
        return math.nan
    table = comparison.table
    return float(table.loc[table["model"] == BOOSTER, "roc_auc"].to_numpy(dtype=np.float64)[0])


def export_warnings(
    summary: pd.DataFrame,
    drift: pd.DataFrame,
    holdout_ece: float,
    comparison: ModelComparison | None,
    *,
    model: str = EXPORT_MODEL,
) -> list[QualityWarning]:
    """Warnings where the export's evidence passes a declared limit.

    The rules: too few holdout positives, a shift of the positive rate, drifting columns, poor holdout calibration, a
    baseline that beats the model beyond noise. Each message says what was measured, the limit, and what it means
    for the user.
    """
    found: list[QualityWarning] = []
    holdout_positives = int(_value(summary, "holdout", "positives"))
    if holdout_positives < MIN_HOLDOUT_POSITIVES:
        auc = _booster_auc(comparison)
        width = auc_half_width(auc, holdout_positives)
        uncertain = f"its ROC AUC {auc:.3f} is uncertain by about +-{width:.2f}" if math.isfinite(width) else (
            "it has no ROC AUC")  # fmt: skip
        found.append(QualityWarning(model, TOO_FEW_POSITIVES, (
            f"{holdout_positives} positives in the holdout, fewer than the {MIN_HOLDOUT_POSITIVES} needed to judge the "
            f"model ({uncertain}); export a longer history"
        )))  # fmt: skip

    train_rate, valid_rate, holdout_rate = (_value(summary, s) for s in SPLITS)
    if train_rate > 0 and math.isfinite(holdout_rate):
        ratio = holdout_rate / train_rate
        if ratio > POSITIVE_RATE_RATIO_LIMIT or ratio < 1 / POSITIVE_RATE_RATIO_LIMIT:
            found.append(QualityWarning(model, POSITIVE_RATE_SHIFT, (
                f"the positive rate moved from {train_rate:.1%} in training ({valid_rate:.1%} in validation) to "
                f"{holdout_rate:.1%} in the holdout, {ratio:.2g}x (limit: {POSITIVE_RATE_RATIO_LIMIT:g}x either way): "
                "recent leads convert at a different rate than those the model learned from, so its probabilities "
                "lag behind; rank leads by the score rather than read it as a probability, and retrain often"
            )))  # fmt: skip

    for row in drift.loc[drift["psi"] > PSI_LIMIT].itertuples(index=False):
        found.append(QualityWarning(model, COLUMN_DRIFT, (
            f"column {row.column!r} ({row.type}) shifted between training and holdout leads: population stability "
            f"index {row.psi:.2f} (limit {PSI_LIMIT:g}); most in {row.top_bin!r}, {row.train_share:.1%} of training "
            f"leads and {row.holdout_share:.1%} of holdout leads. The model now meets values it learned little about; "
            "if the change is real (a new campaign, a changed form), judge the model by the holdout figures and "
            "retrain as the new values accumulate"
        )))  # fmt: skip

    if math.isfinite(holdout_ece) and holdout_rate > 0:
        limit = min(ECE_LIMIT, ECE_LIMIT_OF_RATE * holdout_rate)
        if holdout_ece > limit:
            found.append(QualityWarning(model, POOR_CALIBRATION, (
                f"holdout calibration error (ECE) {holdout_ece:.3f}, above the limit {limit:.3f} (the smaller of "
                f"{ECE_LIMIT:g} and {ECE_LIMIT_OF_RATE:g} x the holdout positive rate {holdout_rate:.1%}): a "
                f"probability read off the model is off by about {holdout_ece * 100:.0f} percentage points on "
                "average; use the score to rank leads, not as a probability, until the model is retrained on recent "
                "leads"
            )))  # fmt: skip

    if comparison is not None and comparison.beaten_by:
        aucs = dict(zip(comparison.table["model"], comparison.table["roc_auc"].to_numpy(dtype=np.float64), strict=True))
        for name in comparison.beaten_by:
            found.append(QualityWarning(model, BASELINE_BEATS_MODEL, (
                f"the {name.replace('_', ' ')} baseline ranks the holdout leads better than the model: ROC AUC "
                f"{aucs[name]:.3f} vs {aucs[BOOSTER]:.3f}, a lead larger than the noise margin "
                f"+-{comparison.margin:.3f}, so the model is not registered. {baseline_advice(name)}."
            )))  # fmt: skip
    return found
