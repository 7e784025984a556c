"""The training set built on a Dask cluster: touches validated and featured per account partition, never in one process.

What runs where, and why:
- The leads table is read whole here. Category vocabularies, the readiness snapshots (a seeded draw over all leads),
  the fit examples, the baselines and the label checks all read every lead, and a lead is a few hundred bytes: five
  million fit one machine. Drawn here, the snapshots are the very ones the in-process path draws.
- The touches (a hundred times the leads) never come here. Each partition of whole accounts is validated and persisted
  on the workers (spilling to disk past a worker's memory limit), and computes the features of its own leads'
  snapshots with the same builder as the in-process path, so the training set is the same, row for row.
- The feature table comes back here and the boosters train here (`training.pipeline`): it is capped by the snapshot
  limit (2.5 million rows by default, about 2 GB), so it fits one machine; training locally keeps the early stopping
  on the out-of-time validation period, the direction constraints, the calibration and the baselines of the in-process
  path, and the model is identical to the one that path would give.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd
from distributed import Client

from features.builder import FeatureBuilder
from features.engine import FeatureConfig
from features.spec import DEFAULT_CONTRACT, LeadContract
from features.validation import validate_leads
from scaleout.cluster import total_threads
from scaleout.tables import TableSource, canonical_tables, dask_partitions, partitions_for, read_dask, read_pandas
from training.config import SnapshotConfig
from training.dataset import TrainingSet, assemble_training_set, plan_snapshots
from training.snapshots import data_end_of

log = logging.getLogger(__name__)

ROW = "_snapshot_row"  # a snapshot's place in the plan, by which the partitions' features are put back in order


@dataclass(frozen=True, slots=True)
class ClusterTrainingData:
    """A training set built on a cluster, the validated leads, and what the touches were (for the run's record)."""

    training_set: TrainingSet
    leads: pd.DataFrame
    n_activities: int
    example_activities: pd.DataFrame  # the touches of one partition's leads: the logged model's input example


def _activities(part: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return part[1]


def _latest_touch(part: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.Timestamp | None, int]:
    activities = part[1]
    latest = activities["occurred_at"].max() if len(activities) else None
    return (None if pd.isna(latest) else pd.Timestamp(latest)), len(activities)


def _features(
    part: tuple[pd.DataFrame, pd.DataFrame], builder: FeatureBuilder, snapshots: pd.DataFrame
) -> pd.DataFrame:
    """The features of the snapshots of this partition's leads, with each snapshot's place in the plan."""
    leads, activities = part
    mine = snapshots[snapshots["lead_id"].isin(leads["lead_id"])]
    features = builder.transform(leads, activities, mine[["lead_id", "as_of"]])
    features[ROW] = mine.index.to_numpy()
    return features


def build_on_cluster(
    client: Client,
    leads_source: TableSource,
    activities_source: TableSource,
    *,
    snapshot_config: SnapshotConfig | None = None,
    feature_config: FeatureConfig | None = None,
    contract: LeadContract = DEFAULT_CONTRACT,
    data_end: pd.Timestamp | None = None,
    partitions: int | None = None,
) -> ClusterTrainingData:
    """`training.dataset.build_training_set` with the touches on the cluster (see the module docstring)."""
    leads = validate_leads(read_pandas(leads_source, contract), contract)
    n = partitions or partitions_for([leads_source, activities_source], total_threads(client))
    pairs = dask_partitions(read_dask(leads_source, contract), read_dask(activities_source, contract), n)
    validate = dask.delayed(canonical_tables, pure=True)
    parts = client.persist([validate(lead_part, activity_part, contract) for lead_part, activity_part in pairs])
    latest = client.gather(client.compute([dask.delayed(_latest_touch)(part) for part in parts]))
    n_activities = sum(count for _, count in latest)
    if data_end is None:
        stamps = [t for t, _ in latest if t is not None]
        no_touches = pd.DataFrame({"occurred_at": pd.Series(dtype="datetime64[ns, UTC]")})
        data_end = max([data_end_of(leads, no_touches), *stamps])
    plan = plan_snapshots(
        leads, data_end, snapshot_config=snapshot_config, feature_config=feature_config, contract=contract
    )
    snapshots = plan.snapshots[["lead_id", "as_of"]]
    shared_builder, shared_snapshots = client.scatter([plan.builder, snapshots], broadcast=True, hash=False)
    compute = dask.delayed(_features, pure=True)
    frames = client.gather(client.compute([compute(part, shared_builder, shared_snapshots) for part in parts]))
    features = pd.concat(frames, ignore_index=True).sort_values(ROW, kind="stable")
    if len(features) != len(snapshots) or not np.array_equal(features[ROW].to_numpy(), np.arange(len(snapshots))):
        raise RuntimeError("the partitions' features do not cover each snapshot once: a lead is in two partitions")
    example = client.compute(dask.delayed(_activities)(parts[0])).result()
    client.cancel(parts)
    training_set = assemble_training_set(plan, leads, features.drop(columns=[ROW]).reset_index(drop=True))
    log.info("built the training set on %d partitions of %d leads and %d touches", n, len(leads), n_activities)
    return ClusterTrainingData(training_set, leads, n_activities, example)
