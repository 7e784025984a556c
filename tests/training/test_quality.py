"""Quality warnings: a holdout with too few positives to judge a model, and a baseline that ranks better than it."""

from __future__ import annotations

import math

import pytest

from tests.conftest import Trained
from training.pipeline import BASELINES
from training.quality import (
    BASELINE_BEATS_MODEL,
    MIN_HOLDOUT_POSITIVES,
    TOO_FEW_POSITIVES,
    auc_half_width,
    quality_warnings,
    task_warnings,
)

Metrics = dict[str, dict[str, float]]


def scored(model_auc: float = 0.75, positives: int = 200, **baselines: float) -> Metrics:
    """Holdout metrics per scorer, as TaskResult.metrics holds them (only what the rules read); baselines at 0.5."""
    out = {"model": {"roc_auc": model_auc, "positives": float(positives)}}
    for name in BASELINES:
        out[name] = {"roc_auc": baselines.get(name, 0.5), "positives": float(positives)}
    return out


def test_a_model_with_enough_positives_that_beats_every_baseline_has_no_warnings() -> None:
    assert task_warnings("fit", scored()) == []


def test_too_few_positives_is_a_warning_naming_the_count_the_threshold_and_the_uncertainty() -> None:
    (warning,) = task_warnings("fit", scored(model_auc=0.551, positives=20))
    assert (warning.model, warning.rule) == ("fit", TOO_FEW_POSITIVES)
    assert "20 positives" in warning.message and f"the {MIN_HOLDOUT_POSITIVES} needed" in warning.message
    assert "ROC AUC 0.551 is uncertain by about +-0.1" in warning.message


@pytest.mark.parametrize(("positives", "warned"), [(MIN_HOLDOUT_POSITIVES - 1, True), (MIN_HOLDOUT_POSITIVES, False)])
def test_the_threshold_is_the_first_count_judged(positives: int, warned: bool) -> None:
    assert bool(task_warnings("readiness", scored(positives=positives))) is warned


def test_a_holdout_without_positives_is_warned_about_without_an_auc() -> None:
    (warning,) = task_warnings("fit", scored(model_auc=math.nan, positives=0, point_rules=math.nan))
    assert "0 positives" in warning.message and "it has no ROC AUC" in warning.message


def test_each_baseline_that_ranks_better_is_named_with_both_figures() -> None:
    metrics = scored(model_auc=0.7, point_rules=0.71, logistic_regression=0.8, odoo_naive_bayes=0.7)
    warned = task_warnings("readiness", metrics)
    assert [w.rule for w in warned] == [BASELINE_BEATS_MODEL, BASELINE_BEATS_MODEL]  # a tie is not a warning
    assert [w.message for w in warned] == [
        "readiness model: the point rules baseline ranks better on the holdout (ROC AUC 0.710 vs the model's 0.700)",
        "readiness model: the logistic regression baseline ranks better on the holdout"
        " (ROC AUC 0.800 vs the model's 0.700)",
    ]


def test_both_rules_can_fire_at_once_as_in_the_small_demo() -> None:
    warned = task_warnings("fit", scored(model_auc=0.551, positives=20, point_rules=0.610))
    assert [w.rule for w in warned] == [TOO_FEW_POSITIVES, BASELINE_BEATS_MODEL]


def test_the_interval_narrows_with_more_positives() -> None:
    assert auc_half_width(0.65, 20) == pytest.approx(0.13, abs=0.01)
    assert auc_half_width(0.65, 50) == pytest.approx(0.08, abs=0.01)
    assert auc_half_width(0.65, 0) == math.inf


def test_a_training_result_is_judged_on_both_models_readiness_first(trained: Trained) -> None:
    warned = quality_warnings(trained.result)
    expected = [*task_warnings("readiness", trained.result.readiness.metrics)]
    expected += task_warnings("fit", trained.result.fit.metrics)
    assert warned == expected
    # The small session funnel holds few wins: its fit model cannot be judged, and says so.
    if trained.result.fit.metrics["model"]["positives"] < MIN_HOLDOUT_POSITIVES:
        assert any(w.model == "fit" and w.rule == TOO_FEW_POSITIVES for w in warned)
