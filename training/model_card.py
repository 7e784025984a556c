"""A short markdown model card: what the model is for, how it was tested, how it compares, where it is weak."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from training.dataset import TrainingSet
from training.pipeline import BASELINES, TaskResult, TrainResult
from training.quality import MIN_HOLDOUT_POSITIVES, QualityWarning

CARD_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top10", "capture_top10")
# Segments whose AUC trails the overall one by more than this are listed as weak spots.
WEAK_SEGMENT_GAP = 0.05


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def _table(task: TaskResult) -> list[str]:
    lines = ["| scorer | " + " | ".join(CARD_METRICS) + " |", "|---" * (len(CARD_METRICS) + 1) + "|"]
    for scorer in ("model", *BASELINES):
        values = " | ".join(_fmt(task.metrics[scorer][m]) for m in CARD_METRICS)
        lines.append(f"| {scorer} | {values} |")
    return lines


def _weak_segments(task: TaskResult) -> list[str]:
    overall = task.metrics["model"]["roc_auc"]
    seg = task.segments["model"]
    weak = seg[np.isfinite(seg["roc_auc"]) & (seg["roc_auc"] < overall - WEAK_SEGMENT_GAP)]
    if weak.empty:
        return [f"- no segment trails the overall AUC by more than {WEAK_SEGMENT_GAP}"]
    return [
        f"- {r.segment} = {r.value}: AUC {r.roc_auc:.3f} on {int(r.n):,} rows" for r in weak.itertuples(index=False)
    ]


def _top_features(values: np.ndarray, names: list[str], k: int = 8) -> str:
    mean_abs = np.abs(values).mean(axis=0) if len(values) else np.zeros(len(names))
    order = np.argsort(-mean_abs)[:k]
    return ", ".join(f"{names[i]} ({mean_abs[i]:.3f})" for i in order)


def _warnings_section(warned: Sequence[QualityWarning]) -> list[str]:
    if not warned:
        return [
            "## Quality warnings",
            f"None: both holdouts hold at least {MIN_HOLDOUT_POSITIVES} positives, and no baseline ranks better than"
            " the model.",
            "",
        ]
    return [
        "## Quality warnings",
        "**Do not route on these scores before reading this.** Training found:",
        "",
        *(f"- {w.message}" for w in warned),
        "",
        "`leadscore promote` refuses this model unless given `--accept-warnings`.",
        "",
    ]


def write_model_card(
    result: TrainResult,
    training_set: TrainingSet,
    path: Path,
    *,
    oracle_metrics: Mapping[str, float],
    quality_warnings: Sequence[QualityWarning] = (),
) -> Path:
    """Write the card to `path` and return it; quality warnings come first, where a reader cannot miss them."""
    builder = training_set.builder
    ready, fit = result.readiness, result.fit
    n_fit = len(builder.fit_feature_names_)
    horizon = training_set.snapshot_config.horizon_days
    lines = [
        "# lead-scorer model card",
        "",
        *_warnings_section(quality_warnings),
        "## Intended use",
        f"Scores B2B leads twice: **ICP fit** (probability the lead is ever won, from its profile) and **readiness**"
        f" (probability that {training_set.snapshot_config.readiness.meaning}, from its profile, its touches and its"
        " colleagues' touches). Outputs are calibrated probabilities, 0-100 percentile scores among holdout leads, and"
        " the top reasons. Not for: judging individuals outside a sales context, or leads from markets unlike the"
        " training data.",
        "",
        "## Data and evaluation",
        f"- data end: {training_set.data_end}; {len(training_set.readiness):,} readiness snapshots, "
        f"{len(training_set.fit):,} fit examples, {len(builder.feature_names_)} features",
        f"- readiness: trained before {ready.split.valid_start}, early stopping and calibration on the period before"
        f" {ready.split.holdout_start}, evaluated on the later holdout ({int(ready.split.holdout.sum()):,} rows);"
        f" training rows whose {horizon}-day label window reaches into a later period are dropped",
        f"- fit: the same scheme by creation date, holdout from {fit.split.holdout_start}"
        f" ({int(fit.split.holdout.sum()):,} leads)",
        f"- calibration chosen out of time: readiness {result.scorer.readiness_calibrator.kind},"
        f" fit {result.scorer.fit_calibrator.kind}",
        "",
        "## Readiness, out-of-time holdout",
        *_table(ready),
        "",
    ]
    if oracle_metrics:
        lines += [
            f"Simulator oracle (true probabilities) on the {int(oracle_metrics['readiness_oracle_rows_holdout']):,}"
            f" holdout rows it covers: AUC {oracle_metrics['readiness_oracle_roc_auc_holdout']:.3f}; the model reaches"
            f" {oracle_metrics['readiness_roc_auc_holdout_oracle_rows']:.3f} on the same rows"
            f" ({oracle_metrics['readiness_auc_share_of_oracle_holdout']:.1%} of the oracle).",
            "",
        ]
    if ready.unconstrained_roc_auc is not None:
        constrained = ready.metrics["model"]["roc_auc"]
        lines += [
            "Direction constraints (an engaging touch never lowers readiness, an unsubscribe never raises it;"
            f" `features/directions.py`): holdout AUC {constrained:.4f} with them, {ready.unconstrained_roc_auc:.4f}"
            f" for the same booster without ({constrained - ready.unconstrained_roc_auc:+.4f}).",
            "",
        ]
    lines += [
        "## ICP fit, out-of-time holdout",
        *_table(fit),
        "",
        "## What drives the scores (mean |TreeSHAP|, log-odds)",
        f"- readiness: {_top_features(result.shap_values, builder.feature_names_)}",
        f"- fit: {_top_features(result.fit_shap_values[:, :n_fit], builder.fit_feature_names_)}",
        "",
        "## Weak spots (readiness AUC by segment)",
        *_weak_segments(ready),
        "",
        "## Caveats",
        "- Labels come from CRM stage stamps: a team that skips SQL in its CRM teaches the model nothing about it.",
        "- Scores are percentiles among the holdout period's leads; a change in lead mix shifts them.",
        "- Wins are rare: fit metrics on small data sets are noisy (see the holdout row counts above).",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
