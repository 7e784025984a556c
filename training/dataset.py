"""Labelled feature tables for the readiness and ICP-fit models, built from validated lead history."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from features.builder import FeatureBuilder
from features.engine import FeatureConfig
from features.spec import DEFAULT_CONTRACT, LeadContract
from training.config import SnapshotConfig
from training.snapshots import build_fit_examples, build_readiness_snapshots, data_end_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Feature rows with labels for both models, and the fitted builder that produced them."""

    readiness: pd.DataFrame  # lead_id, as_of, label, then builder.feature_names_
    fit: pd.DataFrame  # lead_id, as_of, label, then builder.fit_feature_names_
    builder: FeatureBuilder
    data_end: pd.Timestamp
    snapshot_config: SnapshotConfig


def build_training_set(
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    snapshot_config: SnapshotConfig | None = None,
    feature_config: FeatureConfig | None = None,
    contract: LeadContract = DEFAULT_CONTRACT,
    data_end: pd.Timestamp | None = None,
) -> TrainingSet:
    """Snapshots, labels and point-in-time features for validated leads and activities."""
    end = data_end if data_end is not None else data_end_of(leads, activities)
    snapshot_config = snapshot_config or SnapshotConfig()
    builder = FeatureBuilder(config=feature_config, contract=contract).fit(leads)
    snapshots = build_readiness_snapshots(leads, end, snapshot_config)
    features = builder.transform(leads, activities, snapshots[["lead_id", "as_of"]])
    # The snapshot's stage name is dropped: the feature `stage` carries the same fact as a code (see STAGES).
    readiness = pd.concat(
        [snapshots.drop(columns=["stage"]).reset_index(drop=True), features.drop(columns=["lead_id", "as_of"])], axis=1
    )
    fit_examples = build_fit_examples(leads, end, snapshot_config)
    # Fit features do not depend on time or activity, so the fit encoder alone computes them.
    profiles = leads.set_index("lead_id").loc[fit_examples["lead_id"]].reset_index()
    fit_features = pd.DataFrame(builder.fit_encoder_.transform(profiles), columns=builder.fit_feature_names_)
    fit = pd.concat([fit_examples, fit_features], axis=1)
    log.info(
        "built %d readiness snapshots (%.1f %% positive) and %d fit examples (%.1f %% won) up to %s",
        len(readiness),
        100 * readiness["label"].mean() if len(readiness) else 0.0,
        len(fit),
        100 * fit["label"].mean() if len(fit) else 0.0,
        end,
    )
    return TrainingSet(readiness=readiness, fit=fit, builder=builder, data_end=end, snapshot_config=snapshot_config)
