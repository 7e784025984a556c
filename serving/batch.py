"""Bulk rescoring: every lead of a data set scored, routed and explained by the API's scorer, partition by partition."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import as_completed
from fsspec.core import url_to_fs

from features.builder import FeatureBuilder, open_at
from features.scoring import LeadScorer
from features.spec import LIFECYCLE_CHAIN, LeadContract
from scaleout.cluster import ClusterSpec, dask_client, share, total_threads
from scaleout.tables import (
    TableSource,
    canonical_tables,
    dask_partitions,
    pandas_partitions,
    partitions_for,
    read_dask,
    read_pandas,
)
from serving.service import route_answer
from serving.store import PolicyVersion

log = logging.getLogger(__name__)

# Leads scored per call of the scorer inside a partition: TreeSHAP's arrays for this many stay in tens of megabytes.
SCORE_CHUNK = 20_000
# Reasons in one text cell, as CRMs' bulk imports take them: labels joined by this.
REASON_SEPARATOR = " | "
OUTPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("lead_id", "string"),
    ("account_id", "string"),
    ("as_of", "timestamp"),
    ("fit_probability", "float64"),
    ("fit_score", "float64"),
    ("grade", "string"),
    ("readiness_probability", "float64"),
    ("readiness_score", "float64"),
    ("readiness_stage", "string"),
    ("lifecycle_stage", "string"),
    ("lifecycle_since", "timestamp"),
    ("queue", "string"),
    ("priority", "int64"),
    ("sla_hours", "float64"),
    ("segment", "string"),
    ("fit_reasons", "string"),
    ("behaviour_reasons", "string"),
    ("context_reasons", "string"),
    ("notes", "string"),
    ("model_version", "string"),
    ("thresholds_version", "int64"),
    ("job_id", "string"),
    ("scored_at", "timestamp"),
)
OUTPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in OUTPUT_COLUMNS)


class BatchError(ValueError):
    """A batch job refused before it starts (bad option, model or output); the message says what and where."""


@dataclass(frozen=True, slots=True)
class BatchJob:
    """What every partition needs to score its leads: the champion's scorer, the policy, the moment, the job's id."""

    scorer: LeadScorer
    model_name: str
    model_version: str
    policy: PolicyVersion
    as_of: dt.datetime
    top_k: int = 3
    open_only: bool = False
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    scored_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    threads: int = 1  # LightGBM and TreeSHAP threads per partition: 1 on a cluster (a worker per core), 0 = all

    @property
    def builder(self) -> FeatureBuilder:
        """The scorer's feature builder (a lead-contract model: scored from the contract's tables)."""
        builder = self.scorer.builder
        if not isinstance(builder, FeatureBuilder):
            raise BatchError(
                f"{self.model_name} version {self.model_version} is a CRM-export model: score-batch scores models"
                " trained on the lead contract's tables (leads and activities)"
            )
        return builder

    @property
    def contract(self) -> LeadContract:
        """The lead contract the model was trained on: its tables are what a batch reads."""
        return self.builder.contract


@dataclass(frozen=True, slots=True)
class TableLead:
    """A canonical lead row as routing reads a lead (serving.schemas.Person): segment fields and lifecycle stamps."""

    lead_id: str
    employee_count: int | None
    region: str | None
    source: str | None
    stamps: Mapping[str, dt.datetime]
    custom: Mapping[str, float | str | None] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The lead as the feature engine reads it (routing never asks: the features come from the tables)."""
        return {"lead_id": self.lead_id, "employee_count": self.employee_count, "region": self.region,
                "source": self.source, **self.stamps, **self.custom}  # fmt: skip

    def __getattr__(self, name: str) -> dt.datetime | None:
        # Routing reads a lifecycle stamp by its column name (serving.service.lifecycle_answer).
        if name in LIFECYCLE_CHAIN:
            return self.stamps.get(name)
        raise AttributeError(name)


def _text(value: object) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else str(value)


def _table_leads(leads: pd.DataFrame) -> list[TableLead]:
    counts = leads["employee_count"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    stamp_columns = {c: leads[c].tolist() for c in LIFECYCLE_CHAIN}  # Timestamps (datetimes) and NaT
    out = []
    for i, (lead_id, region, source, count) in enumerate(
        zip(leads["lead_id"].tolist(), leads["region"].tolist(), leads["source"].tolist(), counts, strict=True)
    ):
        stamps = {c: values[i] for c, values in stamp_columns.items() if not pd.isna(values[i])}
        employees = None if math.isnan(count) else int(count)
        out.append(TableLead(str(lead_id), employees, _text(region), _text(source), stamps))
    return out


def _joined(reasons: Sequence[Mapping[str, object]]) -> str:
    return REASON_SEPARATOR.join(str(r["label"]) for r in reasons)


def flat_row(answer: Mapping[str, Any]) -> dict[str, object]:
    """One score answer (a ScoreResponse, as a dict or decoded JSON) as a row of the batch's output."""
    fit, readiness = answer["fit"], answer["readiness"] or {}
    lifecycle, route, reasons = answer["lifecycle"], answer["route"], answer["reasons"]
    since = lifecycle["since"]
    return {
        "lead_id": answer["lead_id"],
        "fit_probability": fit["probability"],
        "fit_score": fit["score"],
        "grade": fit["grade"],
        "readiness_probability": readiness.get("probability"),
        "readiness_score": readiness.get("score"),
        "readiness_stage": readiness.get("stage"),
        "lifecycle_stage": lifecycle["stage"],
        "lifecycle_since": pd.Timestamp(since) if since is not None else None,
        "queue": route["queue"],
        "priority": route["priority"],
        "sla_hours": route["sla_hours"],
        "segment": route["segment"],
        "fit_reasons": _joined(reasons["fit"]),
        "behaviour_reasons": _joined(reasons["behaviour"]),
        "context_reasons": _joined(reasons["context"]),
        "notes": REASON_SEPARATOR.join(answer["notes"]),
        "model_version": answer["model_version"],
        "thresholds_version": answer["thresholds_version"],
        "job_id": answer["request_id"],
        "scored_at": pd.Timestamp(answer["scored_at"]),
    }


def empty_output() -> pd.DataFrame:
    """The output's columns with no rows, typed."""
    return _typed(pd.DataFrame({name: [] for name in OUTPUT_NAMES}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for name, kind in OUTPUT_COLUMNS:
        column = frame[name]
        if kind == "timestamp":
            out[name] = pd.to_datetime(column, utc=True).astype("datetime64[us, UTC]")
        elif kind == "float64":
            out[name] = pd.to_numeric(column).astype("float64")
        elif kind == "int64":
            out[name] = pd.to_numeric(column).astype("int64")
        else:
            out[name] = column.astype(object).where(column.notna(), None).astype("string")
    return pd.DataFrame(out)


def score_partition(job: BatchJob, leads: pd.DataFrame, activities: pd.DataFrame) -> pd.DataFrame:
    """Score one partition of whole accounts: validated, featured, scored, routed; a typed frame of OUTPUT_COLUMNS.

    The rows equal the score API's answers for the same leads sent with their colleagues and touches as of the
    job's moment: the same builder, boosters, calibrators, reasons and routing policy.
    """
    leads, activities = canonical_tables(leads, activities, job.contract)
    chosen = leads[open_at(leads, pd.Timestamp(job.as_of))] if job.open_only else leads
    if chosen.empty:
        return empty_output()
    builder = job.builder
    # One pass of the feature engine over the partition (it blocks by accounts itself); the scorer in chunks.
    pairs = pd.DataFrame({"lead_id": chosen["lead_id"].to_numpy(), "as_of": pd.Timestamp(job.as_of)})
    features, ignored = builder.table_features(leads, activities, pairs)
    rows = features[builder.feature_names_].to_numpy(dtype=np.float64)
    frames = []
    for start in range(0, len(chosen), SCORE_CHUNK):
        end = start + SCORE_CHUNK
        frames.append(_score_chunk(job, chosen.iloc[start:end], rows[start:end], ignored[start:end]))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _score_chunk(job: BatchJob, chosen: pd.DataFrame, rows: np.ndarray, ignored: np.ndarray) -> pd.DataFrame:
    lead_ids = [str(x) for x in chosen["lead_id"].tolist()]
    scores = job.scorer.score_features(lead_ids, rows, top_k=job.top_k, threads=job.threads, ignored_touches=ignored)
    people = _table_leads(chosen)
    answers = [
        flat_row(route_answer(score, person, job.policy, job.model_version, job.job_id, job.scored_at))
        for score, person in zip(scores, people, strict=True)
    ]
    frame = pd.DataFrame(answers)
    frame["account_id"] = chosen["account_id"].to_numpy()
    frame["as_of"] = pd.Timestamp(job.as_of)
    return _typed(frame[list(OUTPUT_NAMES)])


# ---- output ------------------------------------------------------------------------------------------------------
def output_kind(out: str) -> str:
    """Parquet or csv, from the output's name; BatchError for anything else."""
    lower = out.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    raise BatchError(f"--out {out}: name a .parquet or .csv file")


def _arrow_schema() -> pa.Schema:
    types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int64": pa.int64(),
        "timestamp": pa.timestamp("us", "UTC"),
    }
    return pa.schema([(name, types[kind]) for name, kind in OUTPUT_COLUMNS])


class ScoreWriter:
    """Writes the output file whole or not at all: parts go to a hidden file that replaces `out` when all are in."""

    def __init__(self, out: str) -> None:
        self.kind = output_kind(out)
        self.fs, self.path = url_to_fs(out)
        parent = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        if parent and not self.fs.isdir(parent):
            raise BatchError(f"--out {out}: no such folder {parent}")
        name = self.path.rsplit("/", 1)[-1]
        self.tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.partial" if parent else f".{name}.{uuid.uuid4().hex}.partial"
        self.rows = 0
        self._file: Any = None
        self._parquet: Any = None

    def __enter__(self) -> ScoreWriter:
        self._file = self.fs.open(self.tmp, "wb")
        if self.kind == "parquet":
            self._parquet = pq.ParquetWriter(self._file, _arrow_schema(), compression="zstd")
        else:  # the header once, whether or not any partition has rows
            self._file.write(empty_output().to_csv(index=False).encode())
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Append a partition's rows."""
        if self.kind == "parquet":
            self._parquet.write_table(pa.Table.from_pandas(frame, schema=_arrow_schema(), preserve_index=False))
        else:
            text = frame.to_csv(index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
            self._file.write(text.encode())
        self.rows += len(frame)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if self._parquet is not None:
                self._parquet.close()
            self._file.close()
        finally:
            if kind is None:
                self.fs.mv(self.tmp, self.path)
            elif self.fs.exists(self.tmp):
                self.fs.rm(self.tmp)


# ---- the job -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a job did: leads scored, by queue, on how many partitions and workers, in how long."""

    rows: int
    queues: dict[str, int]
    partitions: int
    workers: int
    seconds: float


Progress = Callable[[int, int, int], None]  # partitions done, partitions in all, rows written so far


def _count_queues(counts: dict[str, int], frame: pd.DataFrame) -> None:
    for queue, n in frame["queue"].value_counts().items():
        counts[str(queue)] = counts.get(str(queue), 0) + int(n)


def score_in_process(
    job: BatchJob,
    leads: TableSource,
    activities: TableSource,
    out: str,
    *,
    partitions: int | None = None,
    progress: Progress = lambda *_: None,
) -> BatchResult:
    """The job in this process: the whole tables read here, scored account partition by partition."""
    started = time.perf_counter()
    n = partitions or partitions_for([leads, activities], 1)
    lead_table, activity_table = read_pandas(leads, job.contract), read_pandas(activities, job.contract)
    queues: dict[str, int] = {}
    with ScoreWriter(out) as writer:
        for i, (lead_part, activity_part) in enumerate(pandas_partitions(lead_table, activity_table, n)):
            frame = score_partition(job, lead_part, activity_part)
            writer.write(frame)
            _count_queues(queues, frame)
            progress(i + 1, n, writer.rows)
    return BatchResult(writer.rows, queues, n, 1, time.perf_counter() - started)


def score_on_cluster(
    job: BatchJob,
    leads: TableSource,
    activities: TableSource,
    out: str,
    cluster: ClusterSpec,
    *,
    partitions: int | None = None,
    progress: Progress = lambda *_: None,
    on_start: Callable[[Any], None] = lambda _: None,
) -> BatchResult:
    """The job on a Dask cluster: account partitions scored on the workers, written here as each one finishes.

    A partition whose worker dies is scored again elsewhere (Dask recomputes lost work); each partition's rows are
    written once, when its result arrives, so the output holds every lead once however often a partition ran.
    """
    started = time.perf_counter()
    with dask_client(cluster) as client:
        threads = total_threads(client)
        n = partitions or partitions_for([leads, activities], threads)
        pairs = dask_partitions(read_dask(leads, job.contract), read_dask(activities, job.contract), n)
        shared = share(client, job)  # not scattered: a job lost with its workers is recomputed, not fatal
        score = dask.delayed(score_partition, pure=True)
        futures = client.compute([score(shared, lead_part, activity_part) for lead_part, activity_part in pairs])
        on_start(client)
        queues: dict[str, int] = {}
        done = 0
        with ScoreWriter(out) as writer:
            for future in as_completed(futures):
                frame = future.result()
                writer.write(frame)
                _count_queues(queues, frame)
                future.release()
                done += 1
                progress(done, n, writer.rows)
        workers = len(client.nthreads())
    return BatchResult(writer.rows, queues, n, workers, time.perf_counter() - started)


def default_as_of(now: dt.datetime | None = None) -> dt.datetime:
    """The moment a job scores as of when none is given: the job's start, to the second."""
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


def check_paths(out: str, inputs: Iterable[TableSource]) -> None:
    """The output may not be one of the inputs (it is replaced whole)."""
    target = os.path.abspath(out) if "://" not in out else out
    for source in inputs:
        given = os.path.abspath(source.url) if "://" not in source.url else source.url
        if given.rstrip("/") == target.rstrip("/"):
            raise BatchError(f"--out {out} is the {source.table} input: write the scores elsewhere")
