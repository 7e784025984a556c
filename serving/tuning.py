"""Threshold tuning: replay scored leads under a candidate routing policy, and propose cut-offs that fit capacity.

The replayed leads are the champion's out-of-time holdout (weekly readiness snapshots with their observed label,
logged at training) or the service's own recent score log (no labels yet). Definitions, so the figures mean one
thing everywhere (API, CLI, page, notebook):

- A lead *enters* a queue, or a grade x stage cell, at its first snapshot (or score) routed there; weekly leads =
  entering leads per week. The data's first week only says where leads already stood (they may have entered before
  the data): entries are counted from the second week on, when the data spans two weeks or more. A lead that goes to
  SDR and later to sales enters both (each team works it once); a lead that moves from MQL to SQL enters both cells,
  so the cells of a queue can add up to more leads than the queue.
- Each lead has one *outcome*, used alike in every numerator and denominator: with labels (holdout), 1 when any of
  its snapshots' labels is 1 (it became an SQL within the label horizon of a snapshot), else 0; without labels
  (recent scores), its expected outcome: the calibrated readiness probability of its latest score, the model's most
  informed estimate. A lead scored many times still counts once.
- A lead is *worked* when it enters sales or SDR, and *captured* by the first of the two it enters.
- Precision of a queue or cell: mean outcome of the leads entering it (for cells: their conversion rate). Observed
  SQLs: the sum of those outcomes per week (labelled data only).
- Recall: outcomes of the captured leads over outcomes of the *counted* leads, the base of every recall (queues,
  totals, curves, segments): leads with a snapshot after the first week that were not worked during it (a lead worked
  before the data was captured before it, and says nothing about the policy). A worked queue's recall counts the
  leads it captured, so sales and SDR add up to the total recall, at most 100 %; nurture and disqualify capture nobody
  and have no recall. A segment's recall is the same within the segment; a lead's segment is that of its latest
  snapshot or score (the most complete record of it).
- Expected SQLs: the calibrated readiness probability where a lead enters the queue (SQLs expected within the label
  horizon of being routed there); what the solver maximises.
- Load: weekly entries over capacity (reps x leads per rep per week). Leads past SLA: the team works its queue first in
  first out at its capacity rate during working hours, arrivals spread evenly over each week's working hours; a lead
  waits past its SLA when its first touch comes more than the queue's SLA (in working hours) after it arrived.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from features.engine import READINESS_STAGES, STAGES
from features.spec import LIFECYCLE_CHAIN
from serving.policy import (
    OPEN_QUEUES,
    QUEUES,
    SEGMENT_DIMENSIONS,
    WORKED_QUEUES,
    Capacities,
    Grade,
    RoutingPolicy,
    Stage,
    StageCutoffs,
    lead_size_band,
    segment_value,
)
from serving.store import ScoreRecord

log = logging.getLogger(__name__)

GRADE_ORDER: tuple[Grade, ...] = ("A", "B", "C", "D")
STAGE_ORDER: tuple[Stage, ...] = ("nurture", "MQL", "SQL")
SAMPLE_COLUMNS = ("lead_id", "as_of", "fit_score", "fit_probability", "readiness_probability", "label",
                  *SEGMENT_DIMENSIONS)  # fmt: skip
MAX_SAMPLE_LEADS = 20_000  # replaying more leads changes no decision but slows every slider move
CURVE_POINTS = 41
SOLVER_GRID = 30  # candidate cut-offs per stage: quantiles of the readiness probabilities
MAX_SEGMENT_VALUES = 12  # per dimension; rarer values are reported together as "other"
DataKind = Literal["holdout", "recent"]
DataChoice = Literal["auto", "holdout", "recent"]


class SampleError(ValueError):
    """The scored leads cannot be replayed (wrong columns, too few rows)."""


@dataclass(frozen=True)
class ScoreSample:
    """Scored leads to replay, sorted by lead and time, with what routing and the figures need as arrays."""

    kind: DataKind
    frame: pd.DataFrame
    lead_starts: np.ndarray  # index of each lead's first row
    lead_of_row: np.ndarray  # lead number of each row
    week: np.ndarray  # week number of each row since the first
    weeks: float  # weeks counted, after the warm-up
    warmup: int  # leading weeks whose entries are not counted: leads seen first there may have entered before
    labelled: bool
    sampled_share: float  # share of the data's leads kept (volumes are divided by it)
    requested: DataChoice | None = None  # what the caller asked for (see choose_sample)
    reason: str = ""  # why this data was replayed, in words for the person reading the figures

    @property
    def leads(self) -> int:
        """Distinct leads."""
        return len(self.lead_starts)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, kind: DataKind, *, max_leads: int = MAX_SAMPLE_LEADS,
                   seed: int = 0) -> ScoreSample:  # fmt: skip
        """Check and index a frame of SAMPLE_COLUMNS (label may be all missing for unlabelled data)."""
        missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
        if missing:
            raise SampleError(
                f"scored leads lack column(s) {', '.join(missing)}: a model trained before threshold tuning existed "
                "logged no routing scores with its holdout; retrain it (leadscore train) or use recent score-log data"
            )
        data = frame.loc[:, list(SAMPLE_COLUMNS)].copy()
        data["lead_id"] = data["lead_id"].astype(str)
        data["as_of"] = pd.to_datetime(data["as_of"], utc=True)
        for column in ("fit_score", "fit_probability", "readiness_probability", "label"):
            data[column] = pd.to_numeric(data[column], errors="raise").astype(np.float64)
        bad = ~np.isfinite(data[["fit_score", "fit_probability", "readiness_probability"]].to_numpy()).all(axis=1)
        if bad.any():
            raise SampleError(f"{int(bad.sum())} scored rows have a missing or infinite score")
        if data.empty:
            raise SampleError("no scored leads to replay")
        for column in ("region", "source"):  # size bands are labels already ("201-1000"), kept as they are
            data[column] = [segment_value(v) for v in data[column].to_numpy(dtype=object)]
        data["size_band"] = [None if pd.isna(v) else str(v) for v in data["size_band"].to_numpy(dtype=object)]
        leads = data["lead_id"].unique()
        share = 1.0
        if len(leads) > max_leads:
            keep = np.random.default_rng(seed).choice(leads, size=max_leads, replace=False)
            data = data[data["lead_id"].isin(keep)]
            share = max_leads / len(leads)
        data = data.sort_values(["lead_id", "as_of"], kind="stable").reset_index(drop=True)
        ids = data["lead_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        lead_of_row = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids)]))
        stamps = data["as_of"]
        first = stamps.min()
        days = (stamps - first).dt.total_seconds().to_numpy() / 86400.0
        week = np.floor(days / 7.0).astype(np.int64)
        # Weekly snapshots (holdout) span whole weeks; a score log spans its first to last score, at least a week.
        span = float(week.max()) + 1.0 if kind == "holdout" else max(days.max() / 7.0, 1.0)
        # The data opens on leads already in the funnel: their first row is no entry but where they were. So the
        # first week only tells where leads stood; entries are counted from the second week on (when there is one).
        warmup = 1 if span >= 2.0 else 0
        labelled = bool(np.isfinite(data["label"].to_numpy()).any())
        return cls(kind, data, starts, lead_of_row, week, max(span - warmup, 1.0), warmup, labelled, share)

    def describe(self) -> dict[str, Any]:
        """What was replayed."""
        stamps = self.frame["as_of"]
        return {
            "kind": self.kind,
            "rows": len(self.frame),
            "leads": self.leads,
            "weeks": round(self.weeks, 2),
            "warmup_weeks": self.warmup,
            "start": stamps.min().isoformat(),
            "end": stamps.max().isoformat(),
            "sampled_share": round(self.sampled_share, 4),
            "requested": self.requested or self.kind,
            "reason": self.reason,
        }


def holdout_sample(holdout: pd.DataFrame, **kwargs: Any) -> ScoreSample:
    """The champion's readiness holdout (as logged at training) as a sample to replay: its open leads only.

    Training takes readiness snapshots of open leads only (stage lead, MQL, SAL or recycled at as_of); a holdout that
    names each snapshot's stage is held to that here, so that no closed lead is ever replayed through the matrix.
    """
    if "stage" in holdout.columns:
        holdout = holdout[np.isin(_stage_names(holdout["stage"]), READINESS_STAGES)]
    return ScoreSample.from_frame(holdout, "holdout", **kwargs)


def _stage_names(stage: pd.Series) -> np.ndarray:
    """Lifecycle stage names of a holdout's `stage` column: the feature's codes (features.engine.STAGES), or names."""
    if not pd.api.types.is_numeric_dtype(stage):
        return stage.astype(str).to_numpy()
    codes = stage.to_numpy(dtype=np.float64)
    known = np.isfinite(codes) & (codes >= 0) & (codes < len(STAGES))
    # No stamp before as_of (code -1) is a new lead, as the scorer reads it.
    return np.where(known, np.array(STAGES)[np.where(known, codes, 0).astype(np.int64)], STAGES[0])


def _as_dict(value: Mapping[str, Any] | str) -> Mapping[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def _stamp(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return value if isinstance(value, dt.datetime) else None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.UTC)


def readiness_applied(record: ScoreRecord) -> bool:
    """Whether a logged score is that of an open lead, whose readiness routed it (closed leads are not replayed).

    Answers say so in `lifecycle`; older answers did not, and then the lead's latest lifecycle stamp before as_of
    (in the logged request) tells its stage.
    """
    out = _as_dict(record.outputs)
    lifecycle = out.get("lifecycle")
    if isinstance(lifecycle, Mapping):
        return bool(lifecycle.get("readiness_applies"))
    if out.get("readiness") is None:
        return False
    inputs = _as_dict(record.inputs)
    lead = inputs.get("lead") or {}
    as_of = _stamp(inputs.get("as_of")) or record.scored_at
    for column, stage in zip(reversed(LIFECYCLE_CHAIN), reversed(STAGES), strict=True):
        stamp = _stamp(lead.get(column))
        if stamp is not None and stamp < as_of:
            return stage in READINESS_STAGES
    return True  # no stamp before as_of: a new lead


def recent_sample(records: Iterable[ScoreRecord], **kwargs: Any) -> ScoreSample:
    """Score-log records as a sample to replay; no labels yet."""
    rows = []
    for record in records:
        if not readiness_applied(record):
            continue
        lead = _as_dict(record.inputs).get("lead", {})
        out = _as_dict(record.outputs)
        rows.append(
            {
                "lead_id": record.lead_id,
                "as_of": record.scored_at,
                "fit_score": out["fit"]["score"],
                "fit_probability": out["fit"]["probability"],
                "readiness_probability": out["readiness"]["probability"],
                "label": np.nan,
                "region": lead.get("region"),
                "size_band": lead_size_band(lead.get("employee_count")),
                "source": lead.get("source"),
            }
        )
    if not rows:
        raise SampleError("the score log holds no scores of open leads in the period asked for")
    return ScoreSample.from_frame(pd.DataFrame(rows), "recent", **kwargs)


RECENT_WEEKS = 8  # the score log's recent period replayed for volumes
RECENT_MAX_RECORDS = 200_000
MIN_RECENT_LEADS = 500  # fewer recent leads than this say more about chance than about volume: use the holdout


def choose_sample(
    data: DataChoice,
    read_recent: Callable[[dt.datetime, int], list[ScoreRecord]],
    read_holdout: Callable[[], ScoreSample],
    *,
    now: dt.datetime | None = None,
) -> ScoreSample:
    """The scored leads to replay and why: the score log's recent weeks (auto: if they hold enough leads) or holdout.

    The reason is shown wherever figures are: every score in the log counts, test traffic included, so whoever reads
    the figures must be able to tell which data they come from and to choose the other.
    """
    if data == "holdout":
        return replace(read_holdout(), requested=data, reason="the champion's out-of-time holdout, as asked")
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(weeks=RECENT_WEEKS)
    logged = read_recent(since, RECENT_MAX_RECORDS)
    records = [r for r in logged if readiness_applied(r)]  # open leads only: readiness routed them
    leads = len({r.lead_id for r in records})
    capped = f" in its latest {RECENT_MAX_RECORDS:,} scores" if len(logged) >= RECENT_MAX_RECORDS else ""
    held = f"the score log's last {RECENT_WEEKS} weeks hold {leads:,} open lead(s){capped}"
    if data == "recent":
        if not records:
            closed = " of open leads" if logged else ""
            raise SampleError(f"the score log holds no scores{closed} from the last {RECENT_WEEKS} weeks")
        return replace(recent_sample(records), requested=data, reason=f"recent scores, as asked: {held}")
    if leads >= MIN_RECENT_LEADS:
        reason = (
            f"auto chose recent scores: {held} (at least {MIN_RECENT_LEADS:,}); every lead scored in that time counts, "
            "test traffic included: choose holdout to replay the champion's holdout instead"
        )
        return replace(recent_sample(records), requested=data, reason=reason)
    reason = (
        f"auto chose the champion's holdout: {held}, fewer than the {MIN_RECENT_LEADS:,} that recent volumes need; "
        "choose recent to replay them anyway"
    )
    return replace(read_holdout(), requested=data, reason=reason)


# --- routing, vectorised -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routed:
    """Each row's grade, stage and queue (indices into GRADE_ORDER, STAGE_ORDER, QUEUES)."""

    grade: np.ndarray
    stage: np.ndarray
    queue: np.ndarray


def _segment_rows(sample: ScoreSample, policy: RoutingPolicy) -> np.ndarray:
    """Index of the segment each row's cut-offs come from; -1 for the policy's own."""
    seg = np.full(len(sample.frame), -1, dtype=np.int64)
    values = {d: sample.frame[d].to_numpy(dtype=object) for d in SEGMENT_DIMENSIONS}
    for i, segment in enumerate(policy.segments):
        mask = seg == -1
        for dimension, wanted in segment.match.given().items():
            mask &= values[dimension] == wanted
        seg[mask] = i
    return seg


@dataclass(frozen=True)
class _Prepared:
    """What routing a sample under one policy needs, computed once for the many stage cut-offs tried."""

    grade: np.ndarray
    default_stages: np.ndarray  # rows whose stage cut-offs are the policy's own (no segment overrides them)
    mql: np.ndarray
    sql: np.ndarray
    table: np.ndarray  # grade x stage -> queue index
    ready: np.ndarray


def _prepare(sample: ScoreSample, policy: RoutingPolicy) -> _Prepared:
    seg = _segment_rows(sample, policy)
    n = len(seg)
    cut = np.empty((n, 5))
    default_stages = np.zeros(n, dtype=bool)
    for i in range(-1, len(policy.segments)):
        mask = seg == i
        if not mask.any():
            continue
        grades, stages = policy.cutoffs(None if i < 0 else i)
        cut[mask] = (grades.A, grades.B, grades.C, stages.MQL, stages.SQL)
        default_stages[mask] = i < 0 or policy.segments[i].stages is None
    fit = sample.frame["fit_score"].to_numpy()
    # Boundaries belong to the higher grade and stage, as in RoutingPolicy.grade/stage.
    grade = np.where(fit >= cut[:, 0], 0, np.where(fit >= cut[:, 1], 1, np.where(fit >= cut[:, 2], 2, 3)))
    table = np.array([[QUEUES.index(policy.matrix[g][s].queue) for s in STAGE_ORDER] for g in GRADE_ORDER])
    ready = sample.frame["readiness_probability"].to_numpy()
    return _Prepared(grade, default_stages, cut[:, 3], cut[:, 4], table, ready)


def _route(prepared: _Prepared, stages: StageCutoffs | None = None) -> Routed:
    mql, sql = prepared.mql, prepared.sql
    if stages is not None:
        mql = np.where(prepared.default_stages, stages.MQL, mql)
        sql = np.where(prepared.default_stages, stages.SQL, sql)
    ready = prepared.ready
    stage = np.where(ready >= sql, 2, np.where(ready >= mql, 1, 0))
    return Routed(prepared.grade, stage, prepared.table[prepared.grade, stage])


def route(sample: ScoreSample, policy: RoutingPolicy, *, stages: StageCutoffs | None = None) -> Routed:
    """Route every row as the service would; `stages` replaces the policy's own stage cut-offs (not segments')."""
    return _route(_prepare(sample, policy), stages)


def _first_per_lead(sample: ScoreSample, mask: np.ndarray) -> np.ndarray:
    """Each lead's first row where `mask` holds; len(mask) for leads with none."""
    index = np.where(mask, np.arange(len(mask)), len(mask))
    return np.asarray(np.minimum.reduceat(index, sample.lead_starts))


def _first_rows(sample: ScoreSample, mask: np.ndarray) -> np.ndarray:
    """Rows where leads enter `mask` after the warm-up (leads there already during the warm-up left out)."""
    if not mask.any():
        return np.empty(0, dtype=np.int64)
    first = _first_per_lead(sample, mask)
    first = first[first < len(mask)]
    entered: np.ndarray = first[sample.week[first] >= sample.warmup]
    return entered


# --- figures -------------------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den


def _lead_outcomes(sample: ScoreSample) -> np.ndarray:
    """Each lead's one outcome: became an SQL (0/1) with labels, else the probability of its latest score."""
    frame = sample.frame
    if sample.labelled:
        label = np.nan_to_num(frame["label"].to_numpy(), nan=0.0)
        return np.asarray(np.maximum.reduceat(label, sample.lead_starts))
    ready = frame["readiness_probability"].to_numpy()
    return np.asarray(ready[_last_rows(sample)])


def _last_rows(sample: ScoreSample) -> np.ndarray:
    last: np.ndarray = np.r_[sample.lead_starts[1:], len(sample.frame)] - 1
    return last


def _worked_mask(routed: Routed) -> np.ndarray:
    return np.isin(routed.queue, [QUEUES.index(q) for q in WORKED_QUEUES])


@dataclass(frozen=True)
class _Capture:
    """Who the worked queues capture under one routing, and whose outcome recall counts."""

    rows: np.ndarray  # each captured lead's first worked row (after the warm-up)
    counted: np.ndarray  # per lead: its outcome is in recall's denominator
    base: float  # outcomes of the counted leads

    def leads(self, sample: ScoreSample, rows: np.ndarray | None = None) -> np.ndarray:
        """Lead numbers of captured rows (all of them, or those given)."""
        return np.asarray(sample.lead_of_row[self.rows if rows is None else rows])


def _capture(sample: ScoreSample, routed: Routed, outcome: np.ndarray) -> _Capture:
    worked = _worked_mask(routed)
    n = len(worked)
    first = _first_per_lead(sample, worked)
    first_week = sample.week[np.minimum(first, n - 1)]
    worked_before = (first < n) & (first_week < sample.warmup)
    # A lead seen only during the warm-up could never enter anything counted: its outcome is no miss either.
    seen_after = sample.week[_last_rows(sample)] >= sample.warmup
    counted = seen_after & ~worked_before
    rows = first[(first < n) & (first_week >= sample.warmup)]
    return _Capture(rows, counted, float(outcome[counted].sum()))


def _past_sla(arrival_weeks: np.ndarray, capacity: float, sla_hours: float, hours_per_week: float) -> int:
    """Leads whose first touch comes later than the SLA: FIFO at the team's rate, arrivals spread over each week."""
    if len(arrival_weeks) == 0:
        return 0
    if capacity <= 0:
        return len(arrival_weeks)
    weeks = np.sort(arrival_weeks)
    starts = np.flatnonzero(np.r_[True, weeks[1:] != weeks[:-1]])
    counts = np.diff(np.r_[starts, len(weeks)])
    rank = np.arange(len(weeks)) - np.repeat(starts, counts)
    arrival = weeks * hours_per_week + (rank + 0.5) * hours_per_week / np.repeat(counts, counts)
    service = hours_per_week / capacity  # working hours per lead for the whole team
    # Lead k's first touch: s_k = max(t_k, s_{k-1} + service) = k*service + max_{j<=k}(t_j - j*service).
    k = np.arange(len(arrival)) * service
    touch = k + np.maximum.accumulate(arrival - k)
    return int((touch - arrival > sla_hours + 1e-9).sum())


def _queue_figures(sample: ScoreSample, routed: Routed, policy: RoutingPolicy, capacities: Capacities,
                   outcome: np.ndarray, capture: _Capture) -> list[dict[str, Any]]:  # fmt: skip
    scale = sample.weeks * sample.sampled_share
    fit_p = sample.frame["fit_probability"].to_numpy()
    ready = sample.frame["readiness_probability"].to_numpy()
    captured_in = routed.queue[capture.rows]
    out = []
    for queue in OPEN_QUEUES:  # the matrix routes open leads to these only (owner, customer: lifecycle routes)
        q = QUEUES.index(queue)
        rows = _first_rows(sample, routed.queue == q)
        entered = float(outcome[sample.lead_of_row[rows]].sum())
        capacity = capacities.weekly(queue)
        weekly = len(rows) / scale
        sla = policy.sla_hours.get(queue)  # type: ignore[call-overload]
        past: float | None = None
        if sla is not None and capacity is not None:
            # The sampled leads stand for all of them: the team's rate is scaled down alike.
            late = _past_sla(sample.week[rows], capacity * sample.sampled_share, sla, capacities.working_hours_per_week)
            past = late / scale
        recall: float | None = None
        if queue in WORKED_QUEUES:
            captured = capture.leads(sample, capture.rows[captured_in == q])
            recall = _ratio(float(outcome[captured].sum()), capture.base)
        out.append(
            {
                "queue": queue,
                "weekly_leads": weekly,
                "capacity": capacity,
                "load": None if capacity is None else _ratio(weekly, capacity) if capacity > 0 else None,
                "expected_sqls": float(ready[rows].sum()) / scale,
                "observed_sqls": entered / scale if sample.labelled else None,
                "expected_wins": float(fit_p[rows].sum()) / scale,
                "precision": _ratio(entered, len(rows)),
                "recall": recall,
                "past_sla_weekly": past,
            }
        )
    return out


def _worked_rows(sample: ScoreSample, routed: Routed) -> np.ndarray:
    return _first_rows(sample, _worked_mask(routed))


def _totals(sample: ScoreSample, outcome: np.ndarray, capture: _Capture) -> dict[str, Any]:
    rows = capture.rows
    scale = sample.weeks * sample.sampled_share
    captured = float(outcome[capture.leads(sample)].sum())
    return {
        "weekly_leads_worked": len(rows) / scale,
        "expected_sqls": float(sample.frame["readiness_probability"].to_numpy()[rows].sum()) / scale,
        "observed_sqls": captured / scale if sample.labelled else None,
        "precision": _ratio(captured, len(rows)),
        "recall": _ratio(captured, capture.base),
    }


def _segment_figures(sample: ScoreSample, routed: Routed, outcome: np.ndarray, capture: _Capture
                     ) -> list[dict[str, Any]]:  # fmt: skip
    scale = sample.weeks * sample.sampled_share
    ready = sample.frame["readiness_probability"].to_numpy()
    last = _last_rows(sample)
    captured_leads = capture.leads(sample)
    captured_in = routed.queue[capture.rows]
    entries = {queue: _first_rows(sample, routed.queue == QUEUES.index(queue)) for queue in WORKED_QUEUES}
    out = []
    for dimension in SEGMENT_DIMENSIONS:
        raw = sample.frame[dimension].to_numpy(dtype=object)[last]
        lead_value = np.where(pd.isna(raw), "unknown", raw).astype(str)
        top = pd.Series(lead_value).value_counts().index[:MAX_SEGMENT_VALUES]
        lead_value = np.where(np.isin(lead_value, top), lead_value, "other")
        for value in sorted(set(lead_value)):
            in_segment = lead_value == value
            base = float(outcome[capture.counted & in_segment].sum())
            for queue in WORKED_QUEUES:
                rows = entries[queue]
                rows = rows[in_segment[sample.lead_of_row[rows]]]
                entered = float(outcome[sample.lead_of_row[rows]].sum())
                mine = captured_leads[(captured_in == QUEUES.index(queue)) & in_segment[captured_leads]]
                out.append(
                    {
                        "dimension": dimension,
                        "value": value,
                        "queue": queue,
                        "weekly_leads": len(rows) / scale,
                        "expected_sqls": float(ready[rows].sum()) / scale,
                        "precision": _ratio(entered, len(rows)),
                        "recall": _ratio(float(outcome[mine].sum()), base),
                    }
                )
    return out


def _matrix_figures(sample: ScoreSample, routed: Routed, policy: RoutingPolicy, outcome: np.ndarray
                    ) -> list[dict[str, Any]]:  # fmt: skip
    scale = sample.weeks * sample.sampled_share
    out = []
    for g, grade in enumerate(GRADE_ORDER):
        for s, stage in enumerate(STAGE_ORDER):
            rows = _first_rows(sample, (routed.grade == g) & (routed.stage == s))
            out.append(
                {
                    "grade": grade,
                    "stage": stage,
                    "queue": policy.matrix[grade][stage].queue,
                    "leads": len(rows),
                    "weekly_leads": len(rows) / scale,
                    "conversion_rate": float(outcome[sample.lead_of_row[rows]].mean()) if len(rows) else None,
                }
            )
    return out


def _curve(sample: ScoreSample, policy: RoutingPolicy, outcome: np.ndarray, which: Stage) -> list[dict[str, Any]]:
    """Worked leads, precision, recall and expected SQLs if the policy's own `which` cut-off were each candidate."""
    ready = sample.frame["readiness_probability"].to_numpy()
    own = policy.stages
    low, high = (0.0, own.SQL) if which == "MQL" else (own.MQL, 1.0)
    candidates = np.unique(np.quantile(ready, np.linspace(0.3, 0.999, CURVE_POINTS)))
    candidates = candidates[(candidates > low) & (candidates < high)]
    # The cut-off in force is on the curve too, so the page's marker sits on a point.
    candidates = np.unique(np.r_[candidates, own.MQL if which == "MQL" else own.SQL])
    prepared = _prepare(sample, policy)
    points = []
    for cutoff in candidates:
        stages = StageCutoffs(MQL=float(cutoff), SQL=own.SQL) if which == "MQL" else \
            StageCutoffs(MQL=own.MQL, SQL=float(cutoff))  # fmt: skip
        totals = _totals(sample, outcome, _capture(sample, _route(prepared, stages), outcome))
        points.append(
            {
                "cutoff": float(cutoff),
                "weekly_leads": totals["weekly_leads_worked"],
                "precision": totals["precision"],
                "recall": totals["recall"],
                "expected_sqls": totals["expected_sqls"],
            }
        )
    return points


def simulate(sample: ScoreSample, policy: RoutingPolicy, capacities: Capacities, *, curves: bool = True
             ) -> dict[str, Any]:  # fmt: skip
    """Every figure of a candidate policy on the replayed leads (see the module docstring for definitions)."""
    routed = route(sample, policy)
    outcome = _lead_outcomes(sample)
    capture = _capture(sample, routed, outcome)
    return {
        "data": sample.describe(),
        "queues": _queue_figures(sample, routed, policy, capacities, outcome, capture),
        "totals": _totals(sample, outcome, capture),
        "segments": _segment_figures(sample, routed, outcome, capture),
        "matrix": _matrix_figures(sample, routed, policy, outcome),
        "curves": {s: _curve(sample, policy, outcome, s) for s in ("MQL", "SQL")} if curves else {},
    }


# --- the solver ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """The solver's answer: the policy with proposed stage cut-offs, and whether it fits every capacity."""

    policy: RoutingPolicy
    feasible: bool
    expected_sqls: float
    loads: dict[str, float | None]
    note: str


@dataclass(frozen=True)
class _Strain:
    """How far a routing is from what the teams can do: load over capacity and leads past SLA, per worked queue."""

    loads: dict[str, float]
    late_shares: dict[str, float]
    excess: float  # 0 when every team is within capacity and SLA; else the largest overshoot


def _strain(sample: ScoreSample, routed: Routed, policy: RoutingPolicy, capacities: Capacities) -> _Strain:
    scale = sample.weeks * sample.sampled_share
    loads: dict[str, float] = {}
    late: dict[str, float] = {}
    excess = 0.0
    for queue in WORKED_QUEUES:
        capacity = capacities.weekly(queue)
        if capacity is None:
            continue
        rows = _first_rows(sample, routed.queue == QUEUES.index(queue))
        weekly = len(rows) / scale
        loads[queue] = weekly / capacity if capacity > 0 else (np.inf if weekly > 0 else 0.0)
        excess = max(excess, loads[queue] - 1.0)
        sla = policy.sla_hours.get(queue)
        if sla is not None and len(rows):
            hours = capacities.working_hours_per_week
            late[queue] = _past_sla(sample.week[rows], capacity * sample.sampled_share, sla, hours) / len(rows)
            excess = max(excess, late[queue] - capacities.max_past_sla_share)
    return _Strain(loads, late, excess)


def solve(sample: ScoreSample, policy: RoutingPolicy, capacities: Capacities) -> Proposal:
    """The MQL and SQL cut-offs that capture the most expected SQLs with every team within capacity and SLA.

    Within SLA: at most `capacities.max_past_sla_share` of a team's leads wait past its SLA (a team loaded to
    exactly its capacity falls behind after any busy week, and then every lead waits).

    A grid search over quantiles of the readiness probabilities (every pair MQL < SQL). Grade cut-offs, the matrix,
    SLAs and segments' own cut-offs stay as given: they encode decisions (who is worth selling to, who calls whom)
    that capacity does not settle. Expected SQLs come from the calibrated probabilities, not observed labels, so the
    choice does not chase the noise of one holdout. When no pair fits, the least overloading pair is proposed.
    """
    ready = sample.frame["readiness_probability"].to_numpy()
    grid = np.unique(np.quantile(ready, np.linspace(0.2, 0.999, SOLVER_GRID)))
    grid = grid[(grid > 0) & (grid < 1)]
    if len(grid) < 2:
        raise SampleError("the replayed leads have too few distinct readiness scores to propose cut-offs")
    scale = sample.weeks * sample.sampled_share
    prepared = _prepare(sample, policy)
    best: tuple[float, float, float, float] | None = None  # (sqls, mql, sql, -overload)
    least_over: tuple[float, float, float, float] | None = None  # (overload, -sqls, mql, sql)
    for i, mql in enumerate(grid[:-1]):
        for sql in grid[i + 1 :]:
            stages = StageCutoffs(MQL=float(mql), SQL=float(sql))
            routed = _route(prepared, stages)
            rows = _worked_rows(sample, routed)
            sqls = float(ready[rows].sum()) / scale
            overload = _strain(sample, routed, policy, capacities).excess
            if overload <= 1e-9:
                if best is None or sqls > best[0] + 1e-12:
                    best = (sqls, float(mql), float(sql), 0.0)
            elif least_over is None or (overload, -sqls) < (least_over[0], least_over[1]):
                least_over = (overload, -sqls, float(mql), float(sql))
    if best is not None:
        _, mql, sql, _ = best
        feasible = True
    else:
        assert least_over is not None
        _, _, mql, sql = least_over
        feasible = False
    proposed = policy.model_copy(update={"stages": StageCutoffs(MQL=mql, SQL=sql), "capacities": capacities})
    proposed = RoutingPolicy.model_validate(proposed.model_dump())  # re-validated: the copy skipped validation
    routed = route(sample, proposed)
    strain = _strain(sample, routed, proposed, capacities)
    loads: dict[str, float | None] = dict(strain.loads)
    sqls = float(ready[_worked_rows(sample, routed)].sum()) / scale
    if feasible:
        note = f"captures {sqls:.1f} expected SQLs a week within every team's capacity and SLA"
    else:
        over = ", ".join(
            [f"{q} has no capacity" if np.isinf(v) else f"{q} {100 * v:.0f}%" for q, v in strain.loads.items() if v > 1]
            + [f"{q} {100 * v:.0f}% past SLA" for q, v in strain.late_shares.items()
               if v > capacities.max_past_sla_share]
        )  # fmt: skip
        note = (
            f"no MQL/SQL cut-offs fit the capacities and SLAs given ({over}); these overload the teams least. "
            "Add reps, raise the leads each rep works, or change the grade x stage matrix"
        )
    log.info("solver: MQL %.4f SQL %.4f, %.1f expected SQLs/week, feasible=%s", mql, sql, sqls, feasible)
    return Proposal(proposed, feasible, sqls, loads, note)


# --- API shapes ------------------------------------------------------------------------------------------------------


class SimulateRequest(BaseModel):
    """A candidate policy (default: the one in force) and the capacities to judge it against."""

    model_config = ConfigDict(extra="forbid")

    policy: RoutingPolicy | None = Field(
        default=None, description="The policy to replay; omitted: the policy in force (its version is in the answer)."
    )
    capacities: Capacities = Field(default_factory=Capacities)
    data: DataChoice = Field(
        default="auto",
        description="Which scored leads to replay: the champion's holdout, the score log's recent weeks, or "
        f"auto (recent when the log's last {RECENT_WEEKS} weeks hold at least {MIN_RECENT_LEADS} leads, else "
        "holdout). The answer's data.reason says which was replayed and why.",
    )


class SolveResponse(BaseModel):
    """Proposed thresholds and their simulation."""

    policy: RoutingPolicy
    feasible: bool
    note: str
    policy_version: int | None = Field(
        description="The version in force the proposal starts from, when the request named no policy; else null."
    )
    simulation: dict[str, Any]
