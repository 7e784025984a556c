"""The training set built on a Dask cluster: touches validated and featured per account partition, never in one process.

What runs where, and why:
- The leads table is read whole here. Category vocabularies, the readiness snapshots (a seeded draw over all leads),
  the fit examples, the baselines and the label checks all read every lead, and a lead is a few hundred bytes: five
  million fit one machine. Drawn here, the snapshots are the very ones the in-process path draws.
- The touches (a hundred times the leads) never come here. Each partition of whole accounts is validated and held
  on the workers (spilling to disk past a worker's memory limit), and computes the features of its own leads'
  snapshots with the same builder as the in-process path, so the training set is the same, row for row. A partition
  is let go as soon as its features are in, and every input of a task is in the graph (nothing scattered), so a worker
  lost mid-job, or restarted by its nanny past its memory limit, costs time: Dask computes its partitions again.
- The feature table comes back here and the boosters train here (`training.pipeline`): it is capped by the snapshot
  limit (2.5 million rows by default, about 2 GB), so it fits one machine; training locally keeps the early stopping
  on the out-of-time validation period, the direction constraints, the calibration and the baselines of the in-process
  path, and the model is identical to the one that path would give.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd
from distributed import Client, as_completed

from features.builder import FeatureBuilder
from features.engine import FeatureConfig
from features.spec import DEFAULT_CONTRACT, LeadContract
from features.validation import validate_leads
from scaleout.cluster import share, total_threads
from scaleout.tables import (
    BUCKETS,
    TableSource,
    account_bucket,
    canonical_tables,
    dask_partitions,
    partitions_for,
    read_dask,
    read_pandas,
)
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
    example_activities: pd.DataFrame  # touches of some of one partition's leads: the logged model's input example


# Touches of this many of one partition's leads go back for the logged model's input example (it shows two leads).
EXAMPLE_LEADS = 1000


def _sample_touches(part: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    leads, activities = part
    return activities[activities["lead_id"].isin(leads["lead_id"].head(EXAMPLE_LEADS))].reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class _Summary:
    """What the driver needs to know of a validated partition, without its rows."""

    latest: pd.Timestamp | None  # the latest touch
    touches: int
    buckets: np.ndarray  # the account buckets of its leads: where each snapshot's features are computed


def _summary(part: tuple[pd.DataFrame, pd.DataFrame]) -> _Summary:
    leads, activities = part
    latest = activities["occurred_at"].max() if len(activities) else None
    return _Summary(
        None if latest is None or pd.isna(latest) else pd.Timestamp(latest),
        len(activities),
        np.unique(account_bucket(leads["account_id"])),
    )


def _features(part: tuple[pd.DataFrame, pd.DataFrame], builder: FeatureBuilder, mine: pd.DataFrame) -> pd.DataFrame:
    """The features of `mine`, the snapshots of this partition's leads, with each snapshot's place in the plan."""
    leads, activities = part
    mine = mine[mine["lead_id"].isin(leads["lead_id"])]
    features = builder.transform(leads, activities, mine[["lead_id", "as_of"]])
    features[ROW] = mine.index.to_numpy()
    return features


def _snapshots_by_partition(
    snapshots: pd.DataFrame, leads: pd.DataFrame, summaries: list[_Summary]
) -> list[pd.DataFrame]:
    """Each partition's share of the snapshots: those of the leads whose account bucket it holds."""
    slot_of_bucket = np.full(BUCKETS, -1, dtype=np.int64)
    for i, summary in enumerate(summaries):
        slot_of_bucket[summary.buckets] = i
    bucket_of_lead = pd.Series(account_bucket(leads["account_id"]), index=leads["lead_id"].to_numpy())
    slots = slot_of_bucket[bucket_of_lead.reindex(snapshots["lead_id"].to_numpy()).to_numpy(np.int64)]
    return [snapshots[slots == i] for i in range(len(summaries))]


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
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ClusterTrainingData:
    """`training.dataset.build_training_set` with the touches on the cluster (see the module docstring).

    `progress(done, total)` is called as each partition's features arrive.
    """
    leads = validate_leads(read_pandas(leads_source, contract), contract)
    n = partitions or partitions_for([leads_source, activities_source], total_threads(client))
    pairs = dask_partitions(read_dask(leads_source, contract), read_dask(activities_source, contract), n)
    validate = dask.delayed(canonical_tables, pure=True)
    # Futures, not persisted collections: each partition is let go once its features are in, so the workers' memory
    # (and their spill) shrinks as the job goes rather than holding every touch to the end.
    parts = client.compute([validate(lead_part, activity_part, contract) for lead_part, activity_part in pairs])
    summaries: list[_Summary] = client.gather(client.map(_summary, parts, pure=False))
    n_activities = sum(s.touches for s in summaries)
    if data_end is None:
        stamps = [s.latest for s in summaries if s.latest is not None]
        no_touches = pd.DataFrame({"occurred_at": pd.Series(dtype="datetime64[ns, UTC]")})
        data_end = max([data_end_of(leads, no_touches), *stamps])
    plan = plan_snapshots(
        leads, data_end, snapshot_config=snapshot_config, feature_config=feature_config, contract=contract
    )
    snapshots = plan.snapshots[["lead_id", "as_of"]]
    example: pd.DataFrame = client.submit(_sample_touches, parts[0], pure=False).result()
    builder = share(client, plan.builder)
    shares = _snapshots_by_partition(snapshots, leads, summaries)
    # Each partition takes only its own leads' snapshots; a task's inputs are in the graph, so a partition whose
    # worker is lost is simply computed again.
    futures = {
        client.submit(_features, part, builder, mine, pure=False): part
        for part, mine in zip(parts, shares, strict=True)
    }
    frames = []
    for future in as_completed(futures):
        frames.append(future.result())
        futures[future].release()
        future.release()
        progress(len(frames), n)
    builder.release()
    features = pd.concat(frames, ignore_index=True).sort_values(ROW, kind="stable")
    if len(features) != len(snapshots) or not np.array_equal(features[ROW].to_numpy(), np.arange(len(snapshots))):
        raise RuntimeError("the partitions' features do not cover each snapshot once: a lead is in two partitions")
    training_set = assemble_training_set(plan, leads, features.drop(columns=[ROW]).reset_index(drop=True))
    log.info("built the training set on %d partitions of %d leads and %d touches", n, len(leads), n_activities)
    return ClusterTrainingData(training_set, leads, n_activities, example)
