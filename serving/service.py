"""Scoring requests: features through the training code path, calibrated scores, routing, reasons, the score log."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec

from features.builder import RequestLead
from features.engine import STAGE_CODE
from features.reasons import Reason
from features.scoring import LeadScore
from features.spec import LIFECYCLE_CHAIN
from serving.policy import RoutingPolicy, lead_size_band, segment_value
from serving.schemas import LeadToScore, Person
from serving.store import PolicyVersion, ScoreRecord

# The model's loader brings MLflow along: a Dask worker that only routes answers (serving.batch) need not import it.
if TYPE_CHECKING:
    from serving.model import LoadedModel


def new_request_id() -> str:
    """A unique id for one API call: a UUIDv7 (RFC 9562) in 32 hex digits, so that ids sort by time to the millisecond.

    Time-ordered ids land at the end of the score log's request_id index, where random ones (UUIDv4) land on a random
    page of it: on a store of 400,000 records that is about half of the writer's work per record.
    """
    value = ((time.time_ns() // 1_000_000) & ((1 << 48) - 1)) << 80  # unix_ts_ms
    value |= 0x7 << 76 | secrets.randbits(12) << 64  # ver, rand_a
    value |= 0b10 << 62 | secrets.randbits(62)  # var, rand_b
    return f"{value:032x}"


def request_lead(request: LeadToScore, now: dt.datetime) -> RequestLead:
    """What the feature builder reads of a request: records of the people, the touches as columns, as_of."""
    lead_id = request.lead.lead_id
    touches = request.activities
    lead = request.lead.record()
    colleagues = [c.record() for c in request.colleagues]
    times = [a.occurred_at for a in touches]
    as_of = request.as_of
    if as_of is None:
        as_of = counting_now(now, [*times, *_stamps(lead), *(t for c in colleagues for t in _stamps(c))])
    return RequestLead(
        lead=lead,
        colleagues=colleagues,
        touch_lead_ids=[a.lead_id or lead_id for a in touches],
        touch_times=times,
        touch_types=[a.activity_type for a in touches],
        as_of=as_of,
        touch_properties=[a.properties for a in touches],
    )


def counting_now(now: dt.datetime, known: Sequence[dt.datetime]) -> dt.datetime:
    """The as_of of a score "as of now": now, or the first moment the features count everything known by now.

    The features count a touch or stamp only from the second after the one it happened in (stamps round up, as_of
    down: training's snapshots never see a touch of their own second). A lead scored the moment its demo request
    arrives, as the rescore on change does, would miss that very request; scoring as of the first moment it counts
    (at most two seconds ahead, which no feature's decay notices) does not. Times after now stay out.
    """
    latest = max((t for t in known if t <= now), default=None)
    if latest is None:
        return now
    counted = latest.replace(microsecond=0) + dt.timedelta(seconds=1 if latest.microsecond == 0 else 2)
    return max(now, counted)


def _stamps(record: dict[str, object]) -> Iterator[dt.datetime]:
    for name in ("created_at", *LIFECYCLE_CHAIN):
        value = record.get(name)
        if isinstance(value, dt.datetime):
            yield value


def notes(score: LeadScore) -> list[str]:
    """What a reader of the answer should know beyond the scores (empty when nothing)."""
    n = score.ignored_touches
    if n == 0:
        return []
    return [
        f"{n:,} touch looks automated and was ignored" if n == 1 else f"{n:,} touches look automated and were ignored"
    ]


def _reasons(reasons: Sequence[Reason]) -> list[dict[str, object]]:
    return [{"group": r.group, "impact": r.impact, "label": r.label} for r in reasons]


def lead_segment(rules: RoutingPolicy, lead: Person) -> int | None:
    """The policy segment whose cut-offs apply to `lead` (None: the policy's own)."""
    if not rules.segments:
        return None
    return rules.segment_of(segment_value(lead.region), lead_size_band(lead.employee_count), segment_value(lead.source))


@dataclass(frozen=True, slots=True)
class ScoredLead:
    """One scored and routed lead: its answer (a ScoreResponse as JSON) and what the log and the metrics keep."""

    request_id: str
    lead_id: str
    scored_at: dt.datetime
    model_version: str
    thresholds_version: int
    queue: str
    fit_score: float
    readiness_score: float | None  # None: readiness does not apply to the lead's lifecycle stage
    response: bytes


# Encodes answers in ScoreResponse's field order; a test checks every answer against that documented model.
_ENCODER = msgspec.json.Encoder()


# Why readiness says nothing of a lead at a stage past the question "will it become an SQL?", as a sentence after
# "<stage> on <date>".
_CLOSED_WORDS: dict[str, str] = {
    "sql": "sales-qualified (SQL)",
    "requalified": "requalified (an opportunity again)",
    "lost": "lost and not recycled",
    "won": "won",
}


def lifecycle_answer(lead: Person, stage: str, *, readiness_applies: bool) -> dict[str, object]:
    """The answer's `lifecycle`: the lead's stage at as_of, since when, and whether readiness applies to it."""
    since: dt.datetime | None = getattr(lead, LIFECYCLE_CHAIN[STAGE_CODE[stage]], None)
    note = None
    if not readiness_applies:
        when = "" if since is None else f" on {since.date().isoformat()}"
        note = f"{_CLOSED_WORDS.get(stage, stage)}{when}: readiness applies to open leads only"
    return {"stage": stage, "since": since, "readiness_applies": readiness_applies, "note": note}


def route_answer(
    score: LeadScore,
    lead: Person,
    policy: PolicyVersion,
    model_version: str,
    request_id: str,
    scored_at: dt.datetime,
) -> dict[str, object]:
    """Apply the routing policy to a lead's scores and lifecycle stage: the answer (a ScoreResponse) as a dict.

    A lead readiness does not apply to (SQL, requalified, lost, won) takes its stage's lifecycle route; an open lead
    the grade x stage matrix, with the cut-offs of its segment.
    """
    rules: RoutingPolicy = policy.policy
    segment = lead_segment(rules, lead)
    grade = rules.grade(score.fit_score, segment)
    closed = rules.lifecycle_route(score.lifecycle_stage)
    readiness: dict[str, object] | None
    if closed is None:
        stage = rules.stage(score.readiness_probability, segment)
        cell, sla = rules.route(grade, stage)
        readiness = {"probability": round(score.readiness_probability, 6), "score": score.readiness_score,
                     "stage": stage}  # fmt: skip
        behaviour, context = _reasons(score.behaviour_reasons), _reasons(score.context_reasons)
        route_segment = None if segment is None else rules.segments[segment].match.label()
    else:
        # Behaviour reasons explain readiness, which says nothing here; fit still serves (expansion, win-back).
        (cell, sla), readiness, behaviour, context, route_segment = closed, None, [], [], None
    return {
        "request_id": request_id,
        "lead_id": score.lead_id,
        "fit": {"probability": round(score.fit_probability, 6), "score": score.fit_score, "grade": grade},
        "readiness": readiness,
        "lifecycle": lifecycle_answer(lead, score.lifecycle_stage, readiness_applies=closed is None),
        "route": {"queue": cell.queue, "priority": cell.priority, "sla_hours": sla, "segment": route_segment},
        "reasons": {"fit": _reasons(score.fit_reasons), "behaviour": behaviour, "context": context},
        "model_version": model_version,
        "thresholds_version": policy.version,
        "scored_at": scored_at,
        "notes": notes(score),
    }


def to_response(
    score: LeadScore, lead: Person, policy: PolicyVersion, model: LoadedModel, request_id: str, scored_at: dt.datetime
) -> ScoredLead:
    """The routed answer to a scored lead, encoded once for the reply and the log, with what the metrics count."""
    answer = route_answer(score, lead, policy, model.version, request_id, scored_at)
    route = answer["route"]
    assert isinstance(route, dict)  # built just above
    return ScoredLead(
        request_id=request_id,
        lead_id=score.lead_id,
        scored_at=scored_at,
        model_version=model.version,
        thresholds_version=policy.version,
        queue=str(route["queue"]),
        fit_score=score.fit_score,
        readiness_score=score.readiness_score if answer["readiness"] is not None else None,
        response=_ENCODER.encode(answer),
    )


def score_requests(
    model: LoadedModel,
    policy: PolicyVersion,
    requests: Sequence[LeadToScore],
    *,
    top_k: int,
    request_ids: Sequence[str],
) -> list[ScoredLead]:
    """Score many leads as of each request's as_of (default now), with the very code training used."""
    now = dt.datetime.now(dt.UTC)
    scores = model.scorer.score_requests([request_lead(r, now) for r in requests], top_k=top_k)
    return [
        to_response(s, r.lead, policy, model, request_id, now)
        for s, r, request_id in zip(scores, requests, request_ids, strict=True)
    ]


def log_records(scored: Sequence[ScoredLead], inputs: Sequence[str | dict[str, object]]) -> list[ScoreRecord]:
    """What the score log keeps for each scored lead: its input (JSON text, or a dict) and output, both versions."""
    return [
        ScoreRecord(
            request_id=s.request_id,
            lead_id=s.lead_id,
            scored_at=s.scored_at,
            model_version=s.model_version,
            thresholds_version=s.thresholds_version,
            inputs=raw,
            outputs=s.response.decode(),
        )
        for raw, s in zip(inputs, scored, strict=True)
    ]


def batch_json(request_id: str, scored: Sequence[ScoredLead]) -> bytes:
    """The BatchResponse of scored leads, joined from their answers (each encoded once, for the log too)."""
    return b"".join(
        [b'{"request_id":', _ENCODER.encode(request_id), b',"scores":[', b",".join(s.response for s in scored), b"]}"]
    )


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside the block (for batches, which hold ~100k objects, none of them garbage).

    The service's heap (MLflow, pandas, LightGBM) is large, and each full collection that a batch's many new,
    surviving objects set off walks all of it: a third of a batch's time otherwise. The objects form no cycles,
    so reference counting frees them all when the batch is done.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs the calls that wait at the same moment as one group: `work` takes their items, returns their results.

    Nobody waits for company: a group is what queued while the event loop was busy, so on an idle service a call
    runs at once (one turn of the loop later), and under load the cost per call falls as groups grow. When a group
    fails, each of its items is run alone, so that a bad item fails its own call only.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._running: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak references)

    async def run(self, item: Item, work: Callable[[list[Item]], Awaitable[list[Result]]]) -> Result:
        """The result of `item`, computed with the items queued meanwhile (all callers pass the same `work`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future))
        if len(self._queue) == 1:
            # A task starts behind the callbacks already ready: requests read in this turn of the loop join first.
            task = loop.create_task(self._flush(work))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await future

    async def _flush(self, work: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        group, self._queue = self._queue, []
        try:
            results = await work([item for item, _ in group])
        except Exception as err:
            if len(group) == 1:
                _fail(group[0][1], err)
                return
            for item, future in group:
                try:
                    [result] = await work([item])
                except Exception as alone:
                    _fail(future, alone)
                else:
                    _resolve(future, result)
            return
        for (_, future), result in zip(group, results, strict=True):
            _resolve(future, result)


def _resolve(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():  # done: its caller went away
        future.set_result(result)


def _fail(future: asyncio.Future[Result], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
