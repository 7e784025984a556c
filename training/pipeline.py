"""Train both models out of time, calibrate them, score the holdout with them and the baselines, assemble the scorer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.builder import FeatureBuilder, series_ns
from features.directions import monotone_constraints
from features.fit import SIZE_BAND_LABELS
from features.reasons import ReasonLabeler
from features.scoring import CutOffs, LeadScorer, ScoreScale
from features.spec import LEADS
from training.baselines import OdooNaiveBayes, PointRules, default_rules_path, logistic_baseline
from training.config import MODEL_NAME, BoosterConfig, TrainConfig
from training.dataset import TrainingSet, check_labels
from training.metrics import binary_metrics, segment_metrics
from training.models import TimeSplit, fit_calibrator, time_split, train_booster
from training.snapshots import LabelError

log = logging.getLogger(__name__)

SEGMENTS: tuple[str, ...] = ("source", "region", "size_band")
# Default routing cut-offs: the top 5 % of holdout readiness is SQL-ready, the next 15 % MQL (sales ops tune these).
DEFAULT_SQL_SHARE = 0.05
DEFAULT_MQL_SHARE = 0.20
BASELINES: tuple[str, ...] = ("odoo_naive_bayes", "point_rules", "logistic_regression")
FIT_MEANING = "a lead is ever won (won_at by the end of the data)"


class Classifier(Protocol):
    """What a baseline offers: sklearn's fit / predict_proba."""

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> Any: ...

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray: ...


@dataclass(slots=True)
class TaskResult:
    """One model's out-of-time evaluation: holdout rows with every scorer's probability, and the metrics."""

    task: str
    holdout: pd.DataFrame  # lead_id, as_of, label, segments, model and baseline probabilities
    split: TimeSplit
    metrics: dict[str, dict[str, float]]  # scorer -> metric -> value
    segments: dict[str, pd.DataFrame]  # scorer -> segment metrics
    calibration_losses: dict[str, float]
    best_iteration: int
    # What the domain's direction constraints cost: holdout ROC AUC of the same booster trained without them.
    unconstrained_roc_auc: float | None = None


@dataclass(slots=True)
class TrainResult:
    """The assembled scorer and the evidence about it."""

    scorer: LeadScorer
    readiness: TaskResult
    fit: TaskResult
    shap_values: np.ndarray  # readiness model contributions on a holdout sample
    shap_features: np.ndarray
    fit_shap_values: np.ndarray
    fit_shap_features: np.ndarray


def _segments(frame: pd.DataFrame, builder: FeatureBuilder) -> pd.DataFrame:
    """Segment columns (source, region, size band) named by the model's vocabularies.

    Rare values fall into "other", and spelling variants that differ only by "_" vs " " into one segment.
    """
    out = pd.DataFrame(index=frame.index)
    for column in ("source", "region"):
        vocab = builder.fit_encoder_.vocabularies_[column]
        codes = frame[column].to_numpy()
        out[column] = [
            None if not np.isfinite(c) else vocab[int(c)].replace("_", " ") if int(c) < len(vocab) else "other"
            for c in codes
        ]
    band = frame["size_band"].to_numpy()
    out["size_band"] = [SIZE_BAND_LABELS[int(b)] if np.isfinite(b) else None for b in band]
    return out


def _baseline_frame(frame: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """Model features plus the raw categorical profile columns as `lead.<name>`, which rules and Odoo read."""
    raw_columns = [c.name for c in LEADS.columns if c.role == "fit" and c.dtype in ("category", "string")]
    profile = leads.set_index("lead_id").loc[frame["lead_id"], raw_columns]
    raw = pd.DataFrame({f"lead.{c}": profile[c].astype("object").to_numpy() for c in raw_columns}, index=frame.index)
    return pd.concat([frame, raw], axis=1)


def _baselines(task: str, builder: FeatureBuilder, features: list[str], rules_path: Path) -> dict[str, Classifier]:
    categorical = [c for c in builder.categorical_features_ if c in features]
    numeric = [c for c in features if c not in categorical]
    odoo_fields = [
        f"lead.{c}" for c in ("industry", "country", "region", "seniority", "department", "source", "channel")
    ]
    odoo_fields += ["size_band", "email_free_domain"] + (["stage"] if task == "readiness" else [])
    return {
        "odoo_naive_bayes": OdooNaiveBayes(fields=odoo_fields),
        "point_rules": PointRules.from_yaml(rules_path, section=task),
        "logistic_regression": logistic_baseline(numeric=numeric, categorical=categorical),
    }


def _check_periods(task: str, meaning: str, split: TimeSplit, y: np.ndarray) -> None:
    """Both classes in the training and validation periods, or a LabelError saying where they are missing."""
    periods = (
        ("training", split.train, f"before {split.valid_start:%Y-%m-%d}"),
        ("validation", split.valid, f"{split.valid_start:%Y-%m-%d} to {split.holdout_start:%Y-%m-%d}"),
    )
    for name, mask, when in periods:
        if np.unique(y[mask]).size < 2:
            raise LabelError(
                f"{task} labels ({meaning}) of the {name} period ({when}) are all {int(y[mask][0])} over"
                f" {int(mask.sum()):,} rows; {int(y.sum()):,} of {len(y):,} rows are positive in all. Train on more"
                " history, or declare a label that more leads reach (see `readiness` in the contract file)"
            )


def _train_task(
    task: str,
    meaning: str,
    frame: pd.DataFrame,
    leads: pd.DataFrame,
    builder: FeatureBuilder,
    features: list[str],
    booster_config: BoosterConfig,
    config: TrainConfig,
    purge: pd.Timedelta,
    progress: Callable[[str], None],
) -> tuple[TaskResult, Any, Any]:
    try:
        split = time_split(
            frame["as_of"], holdout_fraction=config.holdout_fraction, valid_fraction=config.valid_fraction, purge=purge
        )
    except ValueError as err:
        if purge <= pd.Timedelta(0) or frame.empty:
            raise
        # A long label window empties a short period: every row's window would reach into the next one.
        first, last = frame["as_of"].min(), frame["as_of"].max()
        raise ValueError(
            f"{task} ({meaning}): {err}; the rows run from {first:%Y-%m-%d} to {last:%Y-%m-%d}, and a row stays in its"
            f" period only if its {purge.days}-day label window ends before the next period begins. Declare a shorter"
            " horizon_days, or train on more history"
        ) from err
    x = frame[features].to_numpy(dtype=np.float64)
    y = frame["label"].to_numpy(dtype=np.int64)
    _check_periods(task, meaning, split, y)
    log.info(
        "%s: %d train, %d validation, %d holdout rows (holdout from %s)",
        task, split.train.sum(), split.valid.sum(), split.holdout.sum(), split.holdout_start,
    )  # fmt: skip
    progress(f"{task}: training LightGBM")
    constraints = monotone_constraints(features, builder.config_) if task == "readiness" else None
    booster = train_booster(
        x[split.train], y[split.train], x[split.valid], y[split.valid],
        feature_names=features, categorical=builder.categorical_features_, config=booster_config,
        monotone=constraints,
    )  # fmt: skip
    valid_times = series_ns(frame["as_of"])[split.valid]
    raw_valid = np.asarray(booster.predict(x[split.valid], raw_score=True), dtype=np.float64)
    calibrator, losses = fit_calibrator(raw_valid, y[split.valid], valid_times)

    holdout_frame = frame.loc[split.holdout].reset_index(drop=True)
    y_holdout = y[split.holdout]
    raw_holdout = np.asarray(booster.predict(x[split.holdout], raw_score=True), dtype=np.float64)
    holdout = holdout_frame[["lead_id", "as_of", "label"]].copy()
    holdout = pd.concat([holdout, _segments(holdout_frame, builder)], axis=1)
    if "stage" in holdout_frame:
        holdout["stage"] = holdout_frame["stage"].to_numpy()
    holdout["model"] = calibrator.apply(raw_holdout)

    # Baselines learn from every pre-holdout row (they need no validation data for early stopping or calibration).
    progress(f"{task}: baselines")
    seen = split.train | split.valid
    if seen.sum() > config.baseline_max_rows:
        rows = np.flatnonzero(seen)
        keep = np.random.default_rng(config.seed).choice(rows, config.baseline_max_rows, replace=False)
        seen = np.zeros_like(seen)
        seen[keep] = True
    fit_rows = _baseline_frame(frame.loc[seen, ["lead_id", *features]].reset_index(drop=True), leads)
    eval_rows = _baseline_frame(holdout_frame[["lead_id", *features]], leads)
    for name, baseline in _baselines(task, builder, features, config.rules_path or default_rules_path()).items():
        baseline.fit(fit_rows, y[seen])
        holdout[name] = baseline.predict_proba(eval_rows)[:, 1]

    metrics: dict[str, dict[str, float]] = {}
    segments: dict[str, pd.DataFrame] = {}
    for scorer in ("model", *BASELINES):
        metrics[scorer] = binary_metrics(y_holdout, holdout[scorer].to_numpy())
        segments[scorer] = segment_metrics(y_holdout, holdout[scorer].to_numpy(), holdout[list(SEGMENTS)])
    log.info("%s holdout ROC AUC: %s", task, {k: round(v["roc_auc"], 4) for k, v in metrics.items()})
    unconstrained = None
    if constraints is not None and any(constraints) and config.measure_constraint_cost:
        progress(f"{task}: the same booster without direction constraints (what they cost)")
        free = train_booster(
            x[split.train], y[split.train], x[split.valid], y[split.valid],
            feature_names=features, categorical=builder.categorical_features_, config=booster_config,
        )  # fmt: skip
        raw_free = np.asarray(free.predict(x[split.holdout], raw_score=True), dtype=np.float64)
        unconstrained = float(roc_auc_score(y_holdout, raw_free))  # AUC reads ranks only: raw scores will do
        log.info("%s holdout ROC AUC without direction constraints: %.4f", task, unconstrained)
    result = TaskResult(
        task=task, holdout=holdout, split=split, metrics=metrics, segments=segments,
        calibration_losses=losses, best_iteration=booster.current_iteration(), unconstrained_roc_auc=unconstrained,
    )  # fmt: skip
    return result, booster, calibrator


def _add_routing_scores(holdout: pd.DataFrame, scorer: LeadScorer, features: np.ndarray) -> None:
    """Fit and readiness scores of each readiness holdout snapshot: what routing reads (threshold tuning replays it)."""
    fit_p, ready_p = scorer.probabilities(features)
    holdout["fit_probability"] = fit_p
    holdout["fit_score"] = scorer.fit_scale.score(fit_p)
    holdout["readiness_probability"] = ready_p
    holdout["readiness_score"] = scorer.readiness_scale.score(ready_p)


def train_models(
    training_set: TrainingSet,
    leads: pd.DataFrame,
    config: TrainConfig | None = None,
    *,
    progress: Callable[[str], None] = lambda _: None,
    shap_rows: int = 5000,
    seed: int = 0,
) -> TrainResult:
    """Train, calibrate and evaluate the readiness and fit models out of time; assemble the LeadScorer.

    Labels of a single class are refused first (LabelError), naming the stamp, how many leads have it, and what to
    declare instead.
    """
    config = config or TrainConfig()
    check_labels(training_set, leads)
    builder = training_set.builder
    label = training_set.snapshot_config.readiness
    horizon = pd.Timedelta(days=label.horizon_days)
    readiness, ready_booster, ready_cal = _train_task(
        "readiness", label.meaning, training_set.readiness, leads, builder, builder.feature_names_, config.readiness,
        config, purge=horizon, progress=progress,
    )  # fmt: skip
    fit, fit_booster, fit_cal = _train_task(
        "fit", FIT_MEANING, training_set.fit, leads, builder, builder.fit_feature_names_, config.fit, config,
        purge=pd.Timedelta(0), progress=progress,
    )  # fmt: skip
    ready_p = readiness.holdout["model"].to_numpy()
    labeler = ReasonLabeler(
        feature_names=builder.feature_names_,
        fit_features=builder.fit_feature_names_,
        vocabularies=builder.fit_encoder_.vocabularies_,
        windows_days=builder.config_.windows_days,
        buying_group_window_days=builder.config_.buying_group_window_days,
        config=builder.config_,
    )
    scorer = LeadScorer(
        builder=builder,
        fit_booster=fit_booster,
        readiness_booster=ready_booster,
        fit_calibrator=fit_cal,
        readiness_calibrator=ready_cal,
        fit_scale=ScoreScale.from_reference(fit.holdout["model"].to_numpy()),
        readiness_scale=ScoreScale.from_reference(ready_p),
        labeler=labeler,
        cutoffs=CutOffs(
            readiness_mql=float(np.quantile(ready_p, 1.0 - DEFAULT_MQL_SHARE)),
            readiness_sql=float(np.quantile(ready_p, 1.0 - DEFAULT_SQL_SHARE)),
        ),
        metadata={
            "model_name": MODEL_NAME,
            "data_end": str(training_set.data_end),
            "readiness_holdout_start": str(readiness.split.holdout_start),
            "fit_holdout_start": str(fit.split.holdout_start),
            "snapshot_config": asdict(training_set.snapshot_config),
            # What each probability means, in words and as the label's definition (the builder's contract holds it).
            "readiness": {
                "stamp": label.stamp,
                "stamps": list(label.stamps),
                "horizon_days": label.horizon_days,
                "meaning": label.meaning,
            },
            "fit": {"meaning": FIT_MEANING},
            "metrics": {"readiness": readiness.metrics["model"], "fit": fit.metrics["model"]},
        },
    )
    ready_holdout = training_set.readiness.loc[readiness.split.holdout, builder.feature_names_].to_numpy(np.float64)
    _add_routing_scores(readiness.holdout, scorer, ready_holdout)
    progress("explaining the holdout (TreeSHAP)")
    rng = np.random.default_rng(seed)
    sample = ready_holdout[rng.permutation(len(ready_holdout))[:shap_rows]]
    fit_holdout = training_set.fit.loc[fit.split.holdout, builder.feature_names_[: scorer.n_fit]]
    fit_sample = fit_holdout.to_numpy(np.float64)[rng.permutation(len(fit_holdout))[:shap_rows]]
    fit_padded = np.zeros((len(fit_sample), len(builder.feature_names_)))
    fit_padded[:, : scorer.n_fit] = fit_sample
    return TrainResult(
        scorer=scorer,
        readiness=readiness,
        fit=fit,
        shap_values=scorer.contributions("readiness", sample),
        shap_features=sample,
        fit_shap_values=scorer.contributions("fit", fit_padded),
        fit_shap_features=fit_sample,
    )
