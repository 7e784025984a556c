"""Labelled feature tables for the readiness and ICP-fit models, built from validated lead history."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import pandas as pd

from features.builder import FeatureBuilder
from features.engine import FeatureConfig
from features.spec import DEFAULT_CONTRACT, LeadContract
from training.config import SnapshotConfig
from training.snapshots import (
    LabelError,
    build_fit_examples,
    build_readiness_snapshots,
    data_end_of,
    fit_label_problem,
    readiness_label_problem,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Feature rows with labels for both models, and the fitted builder that produced them."""

    readiness: pd.DataFrame  # lead_id, as_of, label, then builder.feature_names_
    fit: pd.DataFrame  # lead_id, as_of, label, then builder.fit_feature_names_
    builder: FeatureBuilder
    data_end: pd.Timestamp
    snapshot_config: SnapshotConfig


def snapshot_config_for(contract: LeadContract, snapshot_config: SnapshotConfig | None = None) -> SnapshotConfig:
    """The snapshot config that labels readiness as the contract declares it.

    Without a declaration the given config (or the default) stands. A contract that declares readiness sets the
    label of a default config; a given config that labels it otherwise is refused rather than silently overruled.
    """
    declared = contract.readiness
    if declared is None:
        return snapshot_config or SnapshotConfig()
    if snapshot_config is None:
        return SnapshotConfig(readiness_stamp=declared.stamp, horizon_days=declared.horizon_days)
    if snapshot_config.readiness != declared:
        raise ValueError(
            f"the contract declares readiness as: {declared.meaning}; the snapshot config labels it as:"
            f" {snapshot_config.readiness.meaning}. Give the snapshot config readiness_stamp={declared.stamp!r} and"
            f" horizon_days={declared.horizon_days}, or leave it out"
        )
    return snapshot_config


def _check_custom_attributes(leads: pd.DataFrame, contract: LeadContract) -> None:
    """A declared custom attribute that no lead holds is a missing column, not a feature: refused by name."""
    empty = [c.name for c in contract.custom_attributes if c.name not in leads or not leads[c.name].notna().any()]
    if empty:
        raise ValueError(
            f"custom attribute(s) {', '.join(empty)}: declared in the contract but empty in all {len(leads):,} leads;"
            " add the column(s) to the leads table, or remove them from the contract"
        )


def check_labels(training_set: TrainingSet, leads: pd.DataFrame) -> None:
    """Refuse labels of a single class with a LabelError saying which stamp, how often it occurs, what to declare."""
    problems = [
        readiness_label_problem(
            leads, training_set.readiness["label"].to_numpy(), training_set.snapshot_config.readiness
        ),
        fit_label_problem(leads, training_set.fit["label"].to_numpy(), training_set.snapshot_config),
    ]
    found = [p for p in problems if p is not None]
    if found:
        raise LabelError("\n".join(found))


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    """What a training set is built to: the fitted builder, the readiness snapshots to compute features for, the end."""

    builder: FeatureBuilder
    snapshots: pd.DataFrame  # lead_id, as_of, stage, label
    data_end: pd.Timestamp
    snapshot_config: SnapshotConfig


def plan_snapshots(
    leads: pd.DataFrame,
    data_end: pd.Timestamp,
    *,
    snapshot_config: SnapshotConfig | None = None,
    feature_config: FeatureConfig | None = None,
    contract: LeadContract = DEFAULT_CONTRACT,
) -> SnapshotPlan:
    """The builder fitted on the leads and the labelled readiness snapshots: everything but the touches' features.

    Readiness is labelled as the contract declares it (see `snapshot_config_for`), and the fitted builder's contract
    states the label it was trained on: the model carries it wherever it is served.
    """
    snapshot_config = snapshot_config_for(contract, snapshot_config)
    _check_custom_attributes(leads, contract)
    trained_contract = replace(contract, readiness=snapshot_config.readiness)
    builder = FeatureBuilder(config=feature_config, contract=trained_contract).fit(leads)
    snapshots = build_readiness_snapshots(leads, data_end, snapshot_config)
    return SnapshotPlan(builder, snapshots, data_end, snapshot_config)


def assemble_training_set(plan: SnapshotPlan, leads: pd.DataFrame, features: pd.DataFrame) -> TrainingSet:
    """The training set of a plan, given the features of its snapshots (`builder.transform` rows, in snapshot order)."""
    builder, snapshots, end, snapshot_config = plan.builder, plan.snapshots, plan.data_end, plan.snapshot_config
    # The snapshot's stage name is dropped: the feature `stage` carries the same fact as a code (see STAGES).
    readiness = pd.concat(
        [snapshots.drop(columns=["stage"]).reset_index(drop=True),
         features.drop(columns=["lead_id", "as_of"]).reset_index(drop=True)],
        axis=1,
    )  # fmt: skip
    fit_examples = build_fit_examples(leads, end, snapshot_config)
    # Fit features do not depend on time or activity, so the fit encoder alone computes them.
    profiles = leads.set_index("lead_id").loc[fit_examples["lead_id"]].reset_index()
    fit_features = pd.DataFrame(builder.fit_encoder_.transform(profiles), columns=builder.fit_feature_names_)
    fit = pd.concat([fit_examples, fit_features], axis=1)
    log.info(
        "built %d readiness snapshots (%.1f %% positive: %s) and %d fit examples (%.1f %% won) up to %s",
        len(readiness),
        100 * readiness["label"].mean() if len(readiness) else 0.0,
        snapshot_config.readiness.meaning,
        len(fit),
        100 * fit["label"].mean() if len(fit) else 0.0,
        end,
    )
    return TrainingSet(readiness=readiness, fit=fit, builder=builder, data_end=end, snapshot_config=snapshot_config)


def build_training_set(
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    snapshot_config: SnapshotConfig | None = None,
    feature_config: FeatureConfig | None = None,
    contract: LeadContract = DEFAULT_CONTRACT,
    data_end: pd.Timestamp | None = None,
) -> TrainingSet:
    """Snapshots, labels and point-in-time features for validated leads and activities (see `plan_snapshots`)."""
    end = data_end if data_end is not None else data_end_of(leads, activities)
    plan = plan_snapshots(leads, end, snapshot_config=snapshot_config, feature_config=feature_config, contract=contract)
    features = plan.builder.transform(leads, activities, plan.snapshots[["lead_id", "as_of"]])
    return assemble_training_set(plan, leads, features)
