"""The leakage audit of a flat CRM export: evidence, per column, that it was recorded after the outcome."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from features.export import ColumnType, CrmMapping

# ---- leakage audit thresholds --------------------------------------------------------------------------------
# A single honest column rarely ranks leads this well on its own: even strong fit or engagement signals sit around
# 0.65-0.80. At 0.90 a column almost sorts won from lost, which is what a field filled in after the outcome does.
LEAK_AUC = 0.90
# A field that is filled in for most of one class and rarely for the other is typically entered by sales during or
# after qualification ("lead quality", "deal size"). Both a ratio and a difference are required: 2 % vs 0.4 % is a
# large ratio of two rates that are both rare, 90 % vs 40 % a large difference of two rates that are both common.
PRESENT_RATIO = 4.0
PRESENT_DIFFERENCE = 0.5
# A value (or missing-ness) is "pure" when at least this share of its rows is of one class ...
PURE_RATE = 0.97
# ... and it covers at least this share of all rows: a smaller value is too rare to say much either way.
PURE_MIN_ROW_SHARE = 0.05
# ... and the other class is at most this fraction as common in it as overall. With 38 % positives this is looser
# than PURE_RATE and changes nothing; with 2 % positives (typical of B2B) it stops every value with < 3 % positives
# from counting as "pure": there, 1 - PURE_RATE alone would be barely below the base rate.
PURE_MAX_RATE_RATIO = 0.1
# A pure value holding this share of one class looks like a pipeline stage ("Closed won", "Lost to competitor")
# rather than a property of the lead.
STAGE_MIN_CLASS_SHARE = 0.20
# Out-of-fold target encoding: a category's rate on the other folds scores it, so a column with a value per lead
# (an id, an email) learns nothing and cannot fake separation. Rates are shrunk toward the fold's base rate with the
# weight of this many rows, so a value seen twice does not get a rate of 0 or 1.
TARGET_ENCODING_FOLDS = 5
TARGET_ENCODING_PRIOR_ROWS = 20.0
MISSING_LEVEL = "(missing)"
PRESENT_LEVEL = "(present)"
AUDIT_COLUMNS: tuple[str, ...] = (
    "column",
    "role",
    "type",
    "suspicion",
    "flagged",
    "kept",
    "reason",
    "auc",
    "missing_rate_positive",
    "missing_rate_negative",
    "purest_value",
    "purest_value_row_share",
    "purest_value_positive_rate",
    "purest_value_class",
    "purest_value_class_share",
)


def _oriented(auc: float) -> float:
    """AUC folded onto [0.5, 1]: a column that ranks the classes backwards separates them just as well."""
    return max(auc, 1.0 - auc)


def _number_auc(values: pd.Series, y: NDArray[np.int64]) -> float:
    """Single-column AUC of a number, with missing as its own level ranked below and then above every value."""
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(x)
    if missing.all():
        return 0.5
    low, high = float(np.nanmin(x)) - 1.0, float(np.nanmax(x)) + 1.0
    return max(_oriented(float(roc_auc_score(y, np.where(missing, level, x)))) for level in (low, high))


def _category_auc(labels: NDArray[np.object_], y: NDArray[np.int64], seed: int) -> float:
    """Single-column AUC of a category scored by its out-of-fold positive rate (see TARGET_ENCODING_FOLDS)."""
    folds = min(TARGET_ENCODING_FOLDS, int(y.sum()), int(len(y) - y.sum()))
    if folds < 2:
        return math.nan
    encoded = np.empty(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, y):
        prior = float(y[train].mean())
        stats = pd.DataFrame({"value": labels[train], "y": y[train]}).groupby("value")["y"].agg(["sum", "count"])
        rate = (stats["sum"] + TARGET_ENCODING_PRIOR_ROWS * prior) / (stats["count"] + TARGET_ENCODING_PRIOR_ROWS)
        encoded[test] = pd.Series(labels[test]).map(rate).fillna(prior).to_numpy(dtype=np.float64)
    return _oriented(float(roc_auc_score(y, encoded)))


def _level_labels(values: pd.Series, kind: ColumnType) -> NDArray[np.object_]:
    """The levels a column's purest value is sought among: its values, or for a number only whether it is present."""
    if kind == "number":
        return np.where(values.notna().to_numpy(), PRESENT_LEVEL, MISSING_LEVEL).astype(object)
    text = values.map({1.0: "yes", 0.0: "no"}) if kind == "boolean" else values.astype(object)
    return text.where(values.notna(), MISSING_LEVEL).to_numpy(dtype=object)


@dataclass(frozen=True, slots=True)
class _PureValue:
    value: str
    row_share: float
    positive_rate: float
    label: Literal["positive", "negative"]
    class_share: float


def _purest_value(labels: NDArray[np.object_], present: NDArray[np.bool_], y: NDArray[np.int64]) -> _PureValue | None:
    """The level (value, missing or present) holding most of one class at PURE_RATE purity, among large enough ones."""
    n, positives = len(y), int(y.sum())
    negatives = n - positives
    base_rate = positives / n
    levels = pd.DataFrame({"value": labels, "y": y}).groupby("value")["y"].agg(["sum", "count"])
    if PRESENT_LEVEL not in levels.index and present.any():
        # Present at all is a level too: a field filled in only once a deal is won may hold a different value each time.
        levels.loc[PRESENT_LEVEL] = [int(y[present].sum()), int(present.sum())]
    # Caps on the other class's rate inside a pure value: see PURE_RATE and PURE_MAX_RATE_RATIO.
    max_positive_rate = min(1.0 - PURE_RATE, PURE_MAX_RATE_RATIO * base_rate)
    max_negative_rate = min(1.0 - PURE_RATE, PURE_MAX_RATE_RATIO * (1.0 - base_rate))
    best: _PureValue | None = None
    for value, row in levels.iterrows():
        count, hits = int(row["count"]), int(row["sum"])
        if count < PURE_MIN_ROW_SHARE * n:
            continue
        rate = hits / count
        if 1.0 - rate <= max_negative_rate:
            candidate = _PureValue(str(value), count / n, rate, "positive", hits / positives)
        elif rate <= max_positive_rate:
            candidate = _PureValue(str(value), count / n, rate, "negative", (count - hits) / negatives)
        else:
            continue
        if best is None or candidate.class_share > best.class_share:
            best = candidate
    return best


def audit_leakage(frame: pd.DataFrame, y: ArrayLike, mapping: CrmMapping, *, seed: int = 0) -> pd.DataFrame:
    """Evidence, one row per fit or engagement column (most suspicious first), that it was recorded after the outcome.

    Evidence per column: its single-column ROC AUC (numbers ranked with missing as a level of its own, categories
    scored by out-of-fold target encoding), its missing rate among positives and negatives, and its purest value.
    A column is flagged when it separates the classes almost perfectly (LEAK_AUC), is present almost only for one
    class (PRESENT_RATIO and PRESENT_DIFFERENCE), or has a stage-like value (PURE_RATE, STAGE_MIN_CLASS_SHARE).
    `suspicion` is the strongest of the three pieces of evidence as a multiple of its threshold: flagged means >= 1.
    `kept` marks flagged columns listed under `keep`; the others are left out of training.
    """
    labels_y = np.asarray(y, dtype=np.int64)
    if labels_y.ndim != 1 or len(labels_y) != len(frame):
        raise ValueError(f"y must hold one 0/1 label per row of the frame; got {labels_y.shape} for {len(frame)} rows")
    positives = int(labels_y.sum())
    if positives == 0 or positives == len(labels_y):
        raise ValueError("y holds a single class: the audit compares positives with negatives and needs both")
    is_positive = labels_y == 1
    rows: list[dict[str, object]] = []
    for name, col in mapping.features.items():
        if name not in frame.columns:
            raise ValueError(f"column {name!r} is declared in the mapping but not in the frame")
        assert col.type is not None  # guaranteed by ColumnMapping for fit and engagement columns
        values = frame[name]
        present = values.notna().to_numpy()
        labels = _level_labels(values, col.type)
        auc = _number_auc(values, labels_y) if col.type != "category" else _category_auc(labels, labels_y, seed)
        present_pos, present_neg = float(present[is_positive].mean()), float(present[~is_positive].mean())
        high, low = max(present_pos, present_neg), min(present_pos, present_neg)
        ratio = 1.0 if high == 0 else high / low if low > 0 else math.inf
        pure = _purest_value(labels, present, labels_y)

        evidence: list[tuple[float, str]] = []
        if not math.isnan(auc):
            evidence.append(((auc - 0.5) / (LEAK_AUC - 0.5),
                             f"separates the classes almost perfectly (single-column AUC {auc:.2f})"))  # fmt: skip
        which = "positives" if present_pos >= present_neg else "negatives"
        evidence.append((
            min(ratio / PRESENT_RATIO, (high - low) / PRESENT_DIFFERENCE),
            f"present almost only for one class (filled for {high:.0%} of {which}, {low:.0%} of the others)",
        ))  # fmt: skip
        if pure is not None:
            evidence.append((
                pure.class_share / STAGE_MIN_CLASS_SHARE,
                f"stage-like value {pure.value!r} ({pure.class_share:.0%} of all {pure.label}s, "
                f"{pure.positive_rate:.0%} positive)",
            ))  # fmt: skip
        suspicion = max(score for score, _ in evidence)
        reasons = [text for score, text in evidence if score >= 1.0]
        flagged = bool(reasons)
        rows.append(
            {
                "column": name,
                "role": col.role,
                "type": col.type,
                "suspicion": suspicion,
                "flagged": flagged,
                "kept": flagged and name in mapping.keep,
                "reason": "; ".join(reasons),
                "auc": auc,
                "missing_rate_positive": 1.0 - present_pos,
                "missing_rate_negative": 1.0 - present_neg,
                "purest_value": pure.value if pure else None,
                "purest_value_row_share": pure.row_share if pure else math.nan,
                "purest_value_positive_rate": pure.positive_rate if pure else math.nan,
                "purest_value_class": pure.label if pure else None,
                "purest_value_class_share": pure.class_share if pure else math.nan,
            }
        )
    audit = pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))
    return audit.sort_values(["suspicion", "column"], ascending=[False, True], kind="stable", ignore_index=True)
