"""Evaluate registered models on one holdout and move the `champion` alias only through a gate."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from features.builder import IncompatibleModelError
from features.scoring import LeadScorer
from training.config import CHALLENGER, CHAMPION, MODEL_NAME, SnapshotConfig
from training.metrics import binary_metrics
from training.quality import QUALITY_TAG
from training.snapshots import build_fit_examples, build_readiness_snapshots
from training.tracking import load_scorer, version_by_alias

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Holdout:
    """An out-of-time holdout definition: data end, where each model's holdout starts, and the label rules."""

    data_end: pd.Timestamp
    readiness_start: pd.Timestamp
    fit_start: pd.Timestamp
    snapshot_config: SnapshotConfig

    @classmethod
    def of_scorer(cls, scorer: LeadScorer) -> Holdout:
        """The holdout a scorer was evaluated on at training (kept in its metadata)."""
        meta = scorer.metadata
        return cls(
            data_end=pd.Timestamp(meta["data_end"]),
            readiness_start=pd.Timestamp(meta["readiness_holdout_start"]),
            fit_start=pd.Timestamp(meta["fit_holdout_start"]),
            snapshot_config=SnapshotConfig(**meta["snapshot_config"]),
        )


def evaluate_scorer(
    scorer: LeadScorer, leads: pd.DataFrame, activities: pd.DataFrame, holdout: Holdout
) -> dict[str, dict[str, float]]:
    """Readiness and fit metrics of a scorer on a holdout, its features computed with its own feature code."""
    snapshots = build_readiness_snapshots(leads, holdout.data_end, holdout.snapshot_config)
    snapshots = snapshots[snapshots["as_of"] >= holdout.readiness_start].reset_index(drop=True)
    fit_examples = build_fit_examples(leads, holdout.data_end, holdout.snapshot_config)
    fit_examples = fit_examples[fit_examples["as_of"] >= holdout.fit_start].reset_index(drop=True)
    if snapshots.empty or fit_examples.empty:
        raise ValueError("the holdout period holds no examples in these data")
    ready = scorer.score_frame(leads, activities, snapshots[["lead_id", "as_of"]])
    fit = scorer.score_frame(leads, activities, fit_examples[["lead_id", "as_of"]])
    return {
        "readiness": binary_metrics(snapshots["label"].to_numpy(), ready["readiness_probability"].to_numpy()),
        "fit": binary_metrics(fit_examples["label"].to_numpy(), fit["fit_probability"].to_numpy()),
    }


# Metrics per task ("readiness", "fit") of the challenger and the champion, on the challenger's holdout.
Evaluation = Callable[[LeadScorer, LeadScorer], tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]]


@dataclass(frozen=True, slots=True)
class GateRule:
    """One comparison of the gate: the challenger may be worse than the champion by at most `tolerance`."""

    task: str
    metric: str
    higher_is_better: bool
    tolerance: float


def default_gate(auc_tolerance: float = 0.005, ece_tolerance: float = 0.01) -> tuple[GateRule, ...]:
    """Ranking must not drop on either model, and readiness must stay calibrated."""
    return (
        GateRule("readiness", "roc_auc", True, auc_tolerance),
        GateRule("fit", "roc_auc", True, auc_tolerance),
        GateRule("readiness", "ece", False, ece_tolerance),
    )


@dataclass(slots=True)
class Decision:
    """What promote decided and why, with both figures per rule."""

    promoted: bool
    challenger: str | None
    champion_before: str | None
    lines: list[str] = field(default_factory=list)
    quality_warnings: list[str] = field(default_factory=list)  # the challenger's, as training logged them
    refused_for_warnings: bool = False  # refused before any comparison: warnings, and not accepted


def _compare(
    rules: tuple[GateRule, ...], new: dict[str, dict[str, float]], old: dict[str, dict[str, float]]
) -> tuple[bool, list[str]]:
    ok = True
    lines = []
    for rule in rules:
        a, b = new[rule.task][rule.metric], old[rule.task][rule.metric]
        worse_by = (b - a) if rule.higher_is_better else (a - b)
        passed = not worse_by > rule.tolerance
        ok &= passed
        verdict = "ok" if passed else "WORSE"
        lines.append(
            f"{rule.task} {rule.metric}: challenger {a:.4f} vs champion {b:.4f} "
            f"(tolerance {rule.tolerance:g}) {verdict}"
        )
    return ok, lines


def logged_warnings(version: Any) -> list[str]:
    """The quality warnings training tagged a model version with (none for a version logged before the tag existed)."""
    raw = (getattr(version, "tags", None) or {}).get(QUALITY_TAG)
    if not raw:
        return []
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return [f"unreadable {QUALITY_TAG} tag: {raw[:200]}"]
    return [str(item.get("message", item)) if isinstance(item, dict) else str(item) for item in parsed]


def promote(
    client: MlflowClient,
    leads: pd.DataFrame | None,
    activities: pd.DataFrame | None,
    *,
    rules: tuple[GateRule, ...] | None = None,
    name: str = MODEL_NAME,
    accept_warnings: bool = False,
    evaluate: Evaluation | None = None,
) -> Decision:
    """Point `champion` at the challenger if it is not worse than the champion on the challenger's holdout.

    A challenger that training tagged with quality warnings (too few holdout positives, a baseline ranking better) is
    refused before any comparison, first model included, unless `accept_warnings`. Both models are re-scored on the
    same rows with their own feature code; the first model becomes champion. `evaluate` scores both on the
    challenger's holdout (default: the lead contract's snapshots of `leads` and `activities`).
    """
    rules = rules or default_gate()
    challenger = version_by_alias(client, CHALLENGER, name)
    if challenger is None:
        return Decision(False, None, None, [f"no model has the alias @{CHALLENGER}: train one first"])
    champion = version_by_alias(client, CHAMPION, name)
    before = champion.version if champion is not None else None
    if champion is not None and champion.version == challenger.version:
        return Decision(False, challenger.version, champion.version, ["the challenger already is the champion"])
    warned = logged_warnings(challenger)
    warning_lines = [f"quality warning: {message}" for message in warned]
    if warned and not accept_warnings:
        summary = f"refused: {len(warned)} quality warning(s) not accepted"
        client.set_model_version_tag(name, challenger.version, "leadscore.promotion", summary)
        lines = [*warning_lines, f"version {challenger.version} has quality warnings: promote it anyway only with"
                 " --accept-warnings, once you have read them"]  # fmt: skip
        log.info("promotion of version %s refused: %d quality warnings", challenger.version, len(warned))
        return Decision(False, challenger.version, before, lines, warned, refused_for_warnings=True)
    accepted = f" ({len(warned)} quality warning(s) accepted)" if warned else ""
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        tag = f"first model: promoted{accepted}"
        client.set_model_version_tag(name, challenger.version, "leadscore.promotion", tag)
        lines = [*warning_lines, f"no champion yet: version {challenger.version} promoted{accepted}"]
        return Decision(True, challenger.version, None, lines, warned)
    if evaluate is None and (leads is None or activities is None):
        raise ValueError("comparing against a champion needs the holdout data")
    new_scorer = load_scorer(f"models:/{name}/{challenger.version}")
    try:
        old_scorer = load_scorer(f"models:/{name}/{champion.version}")
    except IncompatibleModelError as err:
        # This version of leadscore can neither serve nor score the champion: there is nothing to compare against,
        # and keeping it would leave the service unable to start. The challenger replaces it, and says why.
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        why = f"champion version {champion.version} cannot be scored by this version of leadscore ({err})"
        client.set_model_version_tag(name, challenger.version, "leadscore.promotion", f"promoted{accepted}: {why}")
        log.info("version %s promoted: %s", challenger.version, why)
        instead = f"version {challenger.version} promoted{accepted} in its place, without a comparison"
        lines = [*warning_lines, why, instead]
        return Decision(True, challenger.version, champion.version, lines, warned)
    if evaluate is None:
        assert leads is not None and activities is not None  # checked above
        holdout = Holdout.of_scorer(new_scorer)
        new = evaluate_scorer(new_scorer, leads, activities, holdout)
        old = evaluate_scorer(old_scorer, leads, activities, holdout)
    else:
        new, old = evaluate(new_scorer, old_scorer)
    passed, lines = _compare(rules, new, old)
    summary = "; ".join(lines)
    if passed:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        client.set_model_version_tag(name, challenger.version, "leadscore.promotion", f"promoted{accepted}: {summary}")
    else:
        client.set_model_version_tag(name, challenger.version, "leadscore.promotion", f"refused: {summary}")
    log.info("promotion of version %s %s: %s", challenger.version, "done" if passed else "refused", summary)
    return Decision(passed, challenger.version, champion.version, [*warning_lines, *lines], warned)
