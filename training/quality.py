"""Warnings about a trained model's holdout evidence: too few positives to judge it, or a baseline that ranks better."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from training.pipeline import BASELINES, TrainResult

# Below this many holdout positives a model's ROC AUC is too uncertain to judge it, or to tell it from a baseline.
# With n1 positives among many negatives the standard error of the AUC is about sqrt((Q2 - A^2) / n1) (Hanley and
# McNeil 1982, Q2 = 2A^2 / (1 + A)): at A = 0.65 it is 0.042 with 50 positives (95 % interval +-0.08) and 0.067
# with 20 (+-0.13), as wide as the gaps between the model and its baselines. Wins are rare: the fit model meets this
# rule first.
MIN_HOLDOUT_POSITIVES = 50
# 95 % normal interval: the half-width printed with a too-few-positives warning.
_Z95 = 1.96

TOO_FEW_POSITIVES = "too_few_positives"
BASELINE_BEATS_MODEL = "baseline_beats_model"
# The tag the registry keeps them under on the model version (JSON list), read by `leadscore promote`.
QUALITY_TAG = "leadscore.quality_warnings"
# The key of LeadScorer.metadata that carries them inside the logged model, read by the service's GET /v1/model.
METADATA_KEY = "quality_warnings"


@dataclass(frozen=True, slots=True)
class QualityWarning:
    """One reason not to trust a model's holdout figures: which model, which rule, and what was found."""

    model: str  # readiness | fit
    rule: str  # TOO_FEW_POSITIVES | BASELINE_BEATS_MODEL
    message: str

    def as_dict(self) -> dict[str, str]:
        """A plain dict, for JSON (registry tag, model metadata)."""
        return asdict(self)


def auc_half_width(auc: float, positives: int) -> float:
    """Half-width of a 95 % interval of a ROC AUC on `positives` positives and many more negatives (Hanley-McNeil).

    The negatives' share of the variance is left out: holdouts here have a hundred negatives per positive or more.
    """
    if positives < 1 or not math.isfinite(auc):
        return math.inf
    q2 = 2 * auc**2 / (1 + auc)
    return _Z95 * math.sqrt(max(q2 - auc**2, 0.0) / positives)


def task_warnings(
    task: str, metrics: Mapping[str, Mapping[str, float]], *, min_positives: int = MIN_HOLDOUT_POSITIVES
) -> list[QualityWarning]:
    """Warnings about one model (`task`) from its holdout metrics per scorer ("model" and each baseline)."""
    model = metrics["model"]
    auc = float(model["roc_auc"])
    positives = int(model["positives"])
    found: list[QualityWarning] = []
    if positives < min_positives:
        width = auc_half_width(auc, positives)
        uncertain = f"its ROC AUC {auc:.3f} is uncertain by about +-{width:.2f}"
        if not math.isfinite(width):
            uncertain = "it has no ROC AUC"
        found.append(
            QualityWarning(
                task,
                TOO_FEW_POSITIVES,
                f"{task} model: {positives} positives in the holdout, fewer than the {min_positives} needed to judge"
                f" it ({uncertain}); train on more or longer history",
            )
        )
    for name in BASELINES:
        baseline = float(metrics[name]["roc_auc"])
        if math.isfinite(auc) and math.isfinite(baseline) and baseline > auc:
            found.append(
                QualityWarning(
                    task,
                    BASELINE_BEATS_MODEL,
                    f"{task} model: the {name.replace('_', ' ')} baseline ranks better on the holdout"
                    f" (ROC AUC {baseline:.3f} vs the model's {auc:.3f})",
                )
            )
    return found


def quality_warnings(result: TrainResult, *, min_positives: int = MIN_HOLDOUT_POSITIVES) -> list[QualityWarning]:
    """Warnings about both models of a training result, readiness first."""
    return [
        *task_warnings("readiness", result.readiness.metrics, min_positives=min_positives),
        *task_warnings("fit", result.fit.metrics, min_positives=min_positives),
    ]
