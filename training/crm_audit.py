"""The leakage audit of a flat CRM export: evidence, per column, that it was recorded after the outcome."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from features.export import ColumnMapping, ColumnType, CrmMapping, ExportEncoder
from training.config import BoosterConfig
from training.crm_split import ExportSplit
from training.models import train_booster

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

# ---- review thresholds ---------------------------------------------------------------------------------------
# Below the hard limits a column is kept, but some evidence is worth a human look: what a sales rep records once in
# touch ("lead quality", a call's duration) ranks leads at 0.80-0.89 on its own, under LEAK_AUC, and a model leans on
# it as on nothing else. The review tier lists such columns with their evidence and what dropping them costs.
# A single column ranking the classes this well is at the top of what honest fit or engagement signals reach (see
# LEAK_AUC); X Education's "Lead Quality", a rep's intuition, reaches 0.80, a telemarketing call's duration 0.82-0.89.
REVIEW_AUC = 0.75
# Missing-rate asymmetry or a stage-like value at this fraction of its hard limit (a field filled for 60 % of one
# class and 25 % of the other, a pure value holding 10 % of a class): what sales fills in for some leads only.
REVIEW_LIMIT_FRACTION = 0.5
# One column taking this share of the gain of a model on every kept column: with a dozen honest columns, the
# strongest rarely carries more than a fifth. X Education's "Lead Quality" carried 40 % of its audited model's gain.
REVIEW_GAIN_SHARE = 0.30

# ---- drop-one-column test ------------------------------------------------------------------------------------
# The strongest columns by gain are retrained without, one at a time (besides every review column): the few a
# model leans on, where dropping one could move the AUC at all.
DROP_ONE_TOP_GAIN = 3
# The audit's boosters stop at this many rounds, with at least this learning rate: the figures compare models with
# and without a column, which a quick model shows as well as a tuned one, at a fraction of the cost.
AUDIT_MAX_ROUNDS = 300
AUDIT_MIN_LEARNING_RATE = 0.1
# A drop smaller than this is within the noise of a retrained booster on a validation set of a few thousand leads:
# the column costs nothing to leave out.
DROP_ONE_NEGLIGIBLE = 0.005

Tier = Literal["declared", "leak", "review", "clean"]
# Order of the tiers in the table: what is left out (by evidence, then by declaration), what to review, the rest.
TIER_ORDER: tuple[Tier, ...] = ("leak", "declared", "review", "clean")
EXPORT_AUDIT_COLUMNS: tuple[str, ...] = (*AUDIT_COLUMNS, "known", "tier", "gain_share", "drop_one_auc_change")


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


@dataclass(frozen=True, slots=True)
class _Evidence:
    """One column's evidence, each piece scored as a multiple of its hard limit (>= 1: flagged)."""

    auc: float
    present_positive: float
    present_negative: float
    pure: _PureValue | None

    @property
    def _present_high_low(self) -> tuple[float, float]:
        return max(self.present_positive, self.present_negative), min(self.present_positive, self.present_negative)

    @property
    def auc_score(self) -> float:
        return math.nan if math.isnan(self.auc) else (self.auc - 0.5) / (LEAK_AUC - 0.5)

    @property
    def present_score(self) -> float:
        high, low = self._present_high_low
        ratio = 1.0 if high == 0 else high / low if low > 0 else math.inf
        return min(ratio / PRESENT_RATIO, (high - low) / PRESENT_DIFFERENCE)

    @property
    def stage_score(self) -> float:
        return math.nan if self.pure is None else self.pure.class_share / STAGE_MIN_CLASS_SHARE

    @property
    def suspicion(self) -> float:
        """The strongest piece of evidence as a multiple of its hard limit."""
        return max(s for s in (self.auc_score, self.present_score, self.stage_score) if not math.isnan(s))

    def _present_text(self) -> str:
        high, low = self._present_high_low
        which = "positives" if self.present_positive >= self.present_negative else "negatives"
        return f"filled for {high:.0%} of {which}, {low:.0%} of the others"

    def _pure_text(self) -> str:
        pure = self.pure
        assert pure is not None  # only called when a stage score exists
        return f"{pure.value!r} ({pure.class_share:.0%} of all {pure.label}s, {pure.positive_rate:.0%} positive)"

    def leak_reasons(self) -> list[str]:
        """The pieces of evidence that cross their hard limits."""
        reasons = []
        if self.auc_score >= 1.0:
            reasons.append(f"separates the classes almost perfectly (single-column AUC {self.auc:.2f})")
        if self.present_score >= 1.0:
            reasons.append(f"present almost only for one class ({self._present_text()})")
        if self.stage_score >= 1.0:
            reasons.append(f"stage-like value {self._pure_text()}")
        return reasons

    def review_reasons(self) -> list[str]:
        """The pieces of evidence under their hard limits but past the review thresholds."""
        reasons = []
        if REVIEW_AUC <= self.auc < LEAK_AUC:
            reasons.append(
                f"ranks the classes well on its own (single-column AUC {self.auc:.2f}; review from {REVIEW_AUC:.2f}, "
                f"left out from {LEAK_AUC:.2f})"
            )
        if REVIEW_LIMIT_FRACTION <= self.present_score < 1.0:
            reasons.append(f"filled far more often for one class ({self._present_text()})")
        if REVIEW_LIMIT_FRACTION <= self.stage_score < 1.0:
            reasons.append(f"an almost stage-like value {self._pure_text()}")
        return reasons


def _labels(frame: pd.DataFrame, y: ArrayLike) -> NDArray[np.int64]:
    labels_y = np.asarray(y, dtype=np.int64)
    if labels_y.ndim != 1 or len(labels_y) != len(frame):
        raise ValueError(f"y must hold one 0/1 label per row of the frame; got {labels_y.shape} for {len(frame)} rows")
    positives = int(labels_y.sum())
    if positives == 0 or positives == len(labels_y):
        raise ValueError("y holds a single class: the audit compares positives with negatives and needs both")
    return labels_y


def _column_evidence(values: pd.Series, kind: ColumnType, y: NDArray[np.int64], seed: int) -> _Evidence:
    present = values.notna().to_numpy()
    labels = _level_labels(values, kind)
    auc = _number_auc(values, y) if kind != "category" else _category_auc(labels, y, seed)
    is_positive = y == 1
    return _Evidence(
        auc=auc,
        present_positive=float(present[is_positive].mean()),
        present_negative=float(present[~is_positive].mean()),
        pure=_purest_value(labels, present, y),
    )


def _evidence_row(name: str, col: ColumnMapping, evidence: _Evidence, mapping: CrmMapping) -> dict[str, object]:
    """One row of AUDIT_COLUMNS: the evidence, and whether it crosses the hard limits."""
    reasons = evidence.leak_reasons()
    flagged = bool(reasons)
    pure = evidence.pure
    return {
        "column": name,
        "role": col.role,
        "type": col.type,
        "suspicion": evidence.suspicion,
        "flagged": flagged,
        "kept": flagged and name in mapping.keep,
        "reason": "; ".join(reasons),
        "auc": evidence.auc,
        "missing_rate_positive": 1.0 - evidence.present_positive,
        "missing_rate_negative": 1.0 - evidence.present_negative,
        "purest_value": pure.value if pure else None,
        "purest_value_row_share": pure.row_share if pure else math.nan,
        "purest_value_positive_rate": pure.positive_rate if pure else math.nan,
        "purest_value_class": pure.label if pure else None,
        "purest_value_class_share": pure.class_share if pure else math.nan,
    }


def _all_evidence(
    frame: pd.DataFrame, y: NDArray[np.int64], mapping: CrmMapping, seed: int
) -> dict[str, tuple[ColumnMapping, _Evidence]]:
    evidence: dict[str, tuple[ColumnMapping, _Evidence]] = {}
    for name, col in mapping.features.items():
        if name not in frame.columns:
            raise ValueError(f"column {name!r} is declared in the mapping but not in the frame")
        assert col.type is not None  # guaranteed by ColumnMapping for fit and engagement columns
        evidence[name] = (col, _column_evidence(frame[name], col.type, y, seed))
    return evidence


def audit_leakage(frame: pd.DataFrame, y: ArrayLike, mapping: CrmMapping, *, seed: int = 0) -> pd.DataFrame:
    """Evidence, one row per fit or engagement column (most suspicious first), that it was recorded after the outcome.

    Evidence per column: its single-column ROC AUC (numbers ranked with missing as a level of its own, categories
    scored by out-of-fold target encoding), its missing rate among positives and negatives, and its purest value.
    A column is flagged when it separates the classes almost perfectly (LEAK_AUC), is present almost only for one
    class (PRESENT_RATIO and PRESENT_DIFFERENCE), or has a stage-like value (PURE_RATE, STAGE_MIN_CLASS_SHARE).
    `suspicion` is the strongest of the three pieces of evidence as a multiple of its threshold: flagged means >= 1.
    `kept` marks flagged columns listed under `keep`; the others are left out of training.
    See `audit_export` for the audit both `crm` commands run: declared moments, a review tier, the drop-one test.
    """
    labels_y = _labels(frame, y)
    evidence = _all_evidence(frame, labels_y, mapping, seed)
    rows = [_evidence_row(name, col, ev, mapping) for name, (col, ev) in evidence.items()]
    audit = pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))
    return audit.sort_values(["suspicion", "column"], ascending=[False, True], kind="stable", ignore_index=True)


# ---- the audit of an export's training and validation leads ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportAudit:
    """The audit of an export's training and validation leads, and the columns training must leave out.

    `table` holds one row per fit or engagement column (EXPORT_AUDIT_COLUMNS), left-out and to-review columns first.
    `excluded`: declared known after `known_by`, or crossing the hard limits and not listed under `keep`.
    `review`: kept, but with evidence under the hard limits worth a human look (REVIEW_AUC, REVIEW_LIMIT_FRACTION,
    REVIEW_GAIN_SHARE). `features`: what training uses, in mapping order. `valid_auc`: the validation AUC of a quick
    booster on `features`, the reference of `drop_one_auc_change` (NaN when there was nothing to train on).
    """

    table: pd.DataFrame
    excluded: tuple[str, ...]
    review: tuple[str, ...]
    features: tuple[str, ...]
    valid_auc: float
    rows: int


def _quick(config: BoosterConfig) -> BoosterConfig:
    """The config's threads and seed, with the rounds capped (AUDIT_MAX_ROUNDS, AUDIT_MIN_LEARNING_RATE)."""
    return replace(config, max_rounds=min(config.max_rounds, AUDIT_MAX_ROUNDS),
                   learning_rate=max(config.learning_rate, AUDIT_MIN_LEARNING_RATE))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Reference:
    """A quick booster on the kept columns: its validation AUC and gain shares, and retraining it without a column."""

    columns: list[str]
    x_train: NDArray[np.float64]
    y_train: NDArray[np.int64]
    x_valid: NDArray[np.float64]
    y_valid: NDArray[np.int64]
    names: list[str]
    categorical: list[str]
    config: BoosterConfig
    valid_auc: float
    gain_share: dict[str, float]

    @classmethod
    def train(
        cls, frame: pd.DataFrame, y: NDArray[np.int64], mapping: CrmMapping, columns: list[str], split: ExportSplit,
        config: BoosterConfig,
    ) -> _Reference:  # fmt: skip
        encoder = ExportEncoder(columns={c: mapping.columns[c] for c in columns}).fit(frame.iloc[split.train])
        x_train, x_valid = encoder.transform(frame.iloc[split.train]), encoder.transform(frame.iloc[split.valid])
        y_train, y_valid = y[split.train], y[split.valid]
        names, categorical = encoder.feature_names_, encoder.categorical_features_
        valid_auc, gain = _fit_and_score(x_train, y_train, x_valid, y_valid, names, categorical, config)
        total = float(gain.sum())
        shares = {c: float(g) / total if total > 0 else 0.0 for c, g in zip(columns, gain, strict=True)}
        return cls(columns, x_train, y_train, x_valid, y_valid, names, categorical, config, valid_auc, shares)

    def strongest(self, count: int) -> list[str]:
        """The `count` columns with the largest gain (those with any)."""
        ranked = sorted(self.columns, key=lambda c: (-self.gain_share[c], c))
        return [c for c in ranked if self.gain_share[c] > 0][:count]

    def drop_one_change(self, column: str) -> float:
        """Validation AUC retrained without `column`, minus the reference's (NaN when no column would be left)."""
        if len(self.columns) < 2:
            return math.nan
        j = self.columns.index(column)
        keep = [i for i in range(len(self.columns)) if i != j]
        auc, _ = _fit_and_score(
            self.x_train[:, keep], self.y_train, self.x_valid[:, keep], self.y_valid, [self.names[i] for i in keep],
            [c for c in self.categorical if c != self.names[j]], self.config,
        )  # fmt: skip
        return auc - self.valid_auc


def _fit_and_score(
    x_train: NDArray[np.float64], y_train: NDArray[np.int64], x_valid: NDArray[np.float64],
    y_valid: NDArray[np.int64], names: list[str], categorical: list[str], config: BoosterConfig,
) -> tuple[float, NDArray[np.float64]]:  # fmt: skip
    """Validation AUC and gain per feature of a booster trained on the training rows, stopped early on validation."""
    booster = train_booster(x_train, y_train, x_valid, y_valid, feature_names=names, categorical=categorical,
                            config=config)  # fmt: skip
    p = np.asarray(booster.predict(x_valid), dtype=np.float64)
    gain = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    return float(roc_auc_score(y_valid, p)), gain


def _leaning_text(share: float, change: float, reference_auc: float, *, with_share: bool = True) -> str:
    """What the model on the kept columns makes of a column: its gain share and what dropping it costs."""
    parts = (
        [f"{share:.0%} of the gain of the model on the kept columns"] if with_share and not math.isnan(share) else []
    )
    if math.isnan(change):
        return "; ".join(parts)
    if change <= -DROP_ONE_NEGLIGIBLE:
        parts.append(
            f"dropping it costs {-change:.3f} validation AUC ({reference_auc:.3f} -> {reference_auc + change:.3f})"
        )
    elif share >= REVIEW_GAIN_SHARE:
        parts.append(f"yet dropping it costs nothing (validation AUC {change:+.3f}): other columns hold what it knows")
    else:
        parts.append(f"dropping it costs nothing (validation AUC {change:+.3f})")
    return "; ".join(parts)


def audit_export(
    frame: pd.DataFrame, y: NDArray[np.int64], mapping: CrmMapping, split: ExportSplit, *, config: BoosterConfig,
    seed: int = 0,
) -> ExportAudit:  # fmt: skip
    """Audit the training and validation leads of `split` (never the holdout): what to leave out, what to review.

    Both `crm audit` and `crm train` run it on the same split, so they show the same evidence. Per column:
    - declared: known after the mapping's `known_by` (a rep's rating, with a routing model deciding before contact);
      left out by declaration, with the evidence shown all the same;
    - leak: the evidence of `audit_leakage` crosses a hard limit; left out unless listed under `keep`;
    - review: kept, but a single-column AUC of REVIEW_AUC or more, missing-rate or stage-like evidence past
      REVIEW_LIMIT_FRACTION of its hard limit, or REVIEW_GAIN_SHARE of the gain of a model on the kept columns;
    - clean: the rest.
    A quick booster on the kept columns (train rows, stopped early on validation; AUDIT_MAX_ROUNDS) gives the gain
    shares; it is retrained without each of its DROP_ONE_TOP_GAIN strongest columns and each review column in turn,
    and `drop_one_auc_change` is the validation AUC without the column minus the AUC with every kept column.
    """
    labels_y = np.asarray(y, dtype=np.int64)
    if labels_y.ndim != 1 or len(labels_y) != len(frame):
        raise ValueError(f"y must hold one 0/1 label per row of the frame; got {labels_y.shape} for {len(frame)} rows")
    seen = np.sort(np.concatenate([split.train, split.valid]))
    if len(seen) == 0 or int(seen.max()) >= len(frame) or int(seen.min()) < 0:
        raise ValueError(f"the split's training and validation positions must index the frame's {len(frame)} rows")
    seen_frame = frame.iloc[seen].reset_index(drop=True)
    evidence = _all_evidence(seen_frame, _labels(seen_frame, labels_y[seen]), mapping, seed)
    late = mapping.declared_late
    leaks = {n for n, (_, ev) in evidence.items() if n not in late and ev.leak_reasons()}
    features = [c for c in mapping.usable if c not in leaks or c in mapping.keep]
    review = {c for c in features if c not in leaks and evidence[c][1].review_reasons()}
    reference = _Reference.train(frame, labels_y, mapping, features, split, _quick(config)) if features else None
    shares: dict[str, float] = {}
    drop_one: dict[str, float] = {}
    if reference is not None:
        shares = reference.gain_share
        if len(features) > 1:
            review |= {c for c, share in shares.items() if share >= REVIEW_GAIN_SHARE and c not in leaks}
        tested = [*reference.strongest(DROP_ONE_TOP_GAIN), *sorted(review)]
        drop_one = {c: reference.drop_one_change(c) for c in dict.fromkeys(tested)}
    valid_auc = reference.valid_auc if reference is not None else math.nan

    rows: list[dict[str, object]] = []
    for name, (col, ev) in evidence.items():
        row = _evidence_row(name, col, ev, mapping)
        share, change = shares.get(name, math.nan), drop_one.get(name, math.nan)
        dominant = share >= REVIEW_GAIN_SHARE and name not in leaks
        # A dominant column's share is already in its review reason; the figure is said once.
        leaning = _leaning_text(share, change, valid_auc, with_share=not dominant) if not math.isnan(change) else ""
        tier: Tier
        if name in late:
            tier = "declared"
            agrees = ev.leak_reasons() or ev.review_reasons()
            row["reason"] = f"declared known at {col.known_at}, after known_by ({mapping.known_by}): left out by " + (
                "declaration" + (f"; the evidence agrees: {'; '.join(agrees)}" if agrees else ""))  # fmt: skip
        elif name in leaks:
            tier = "leak"
            row["reason"] = "; ".join(filter(None, [str(row["reason"]), leaning]))
        elif name in review:
            tier = "review"
            reasons = ev.review_reasons()
            if dominant:
                reasons.append(f"carries {share:.0%} of the gain of the model on the kept columns "
                               f"(review from {REVIEW_GAIN_SHARE:.0%})")  # fmt: skip
            row["reason"] = "; ".join(filter(None, [*reasons, leaning]))
        else:
            tier = "clean"
        row.update(known=col.known_at, tier=tier, gain_share=share, drop_one_auc_change=change)
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(EXPORT_AUDIT_COLUMNS))
    table["tier_rank"] = table["tier"].map({t: i for i, t in enumerate(TIER_ORDER)})
    table = table.sort_values(["tier_rank", "suspicion", "column"], ascending=[True, False, True], kind="stable")
    table = table.drop(columns="tier_rank").reset_index(drop=True)
    excluded = tuple(c for c in mapping.features if c in late or (c in leaks and c not in mapping.keep))
    return ExportAudit(
        table=table,
        excluded=excluded,
        review=tuple(c for c in mapping.features if c in review),
        features=tuple(features),
        valid_auc=valid_auc,
        rows=len(seen),
    )
