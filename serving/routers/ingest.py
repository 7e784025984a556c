"""The ingest API: leads, touches and Segment events written to the lead timeline, each with its rescore queued."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from serving.ingest_schemas import (
    ActivitiesAdded,
    ActivitiesRequest,
    BulkLeadsRequest,
    BulkLeadsWritten,
    EventsApplied,
    EventsRequest,
    FieldChange,
    LeadFields,
    LeadWritten,
    UnmappedCount,
    UnmappedEvent,
    UnmappedEvents,
)
from serving.schemas import MAX_TEXT, Lead
from serving.settings import Settings
from serving.state import IngestAuth, StateDep
from timeline import ingest
from timeline.event_map import EventMap, load_event_map

router = APIRouter(prefix="/v1", tags=["ingest"], dependencies=[IngestAuth])

# How often a worker counts the due rescores (one COUNT over the queue's due_at index): often enough that ingest
# stops within a second of the backlog passing its limit, rarely enough that the count costs nothing per request.
BACKLOG_CHECK_SECONDS = 1.0
# What a 429 asks a sender to wait: the rescore worker drains the queue in a few seconds once it can keep up.
RETRY_AFTER_SECONDS = 5
# PostgreSQL's deadlock_detected and serialization_failure: the transaction was aborted whole and may run again.
RETRIED_SQLSTATES = frozenset({"40P01", "40001"})
WRITE_ATTEMPTS = 3
_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass
class IngestRuntime:
    """What the ingest routes keep per worker: the event map, the limits, the cached rescore backlog."""

    event_map: EventMap
    limits: ingest.TouchLimits
    max_batch: int
    max_backlog: int
    max_lag_seconds: float = math.inf
    backlog_seconds: float = BACKLOG_CHECK_SECONDS
    _backlog: int = 0
    _lag_seconds: float = 0.0
    _counted_at: float = -math.inf
    _count_lock: threading.Lock = field(default_factory=threading.Lock)
    # SQLite has one writer: this worker's write transactions take turns instead of failing to upgrade their lock.
    _write_lock: threading.Lock = field(default_factory=threading.Lock)

    def backlog(self, engine: Engine) -> tuple[int, float]:
        """Due rescores waiting and the longest wait in seconds, read at most once per `backlog_seconds` here."""
        with self._count_lock:
            if time.monotonic() - self._counted_at >= self.backlog_seconds:
                now = dt.datetime.now(dt.UTC)
                with engine.connect() as conn:
                    self._backlog = ingest.rescore_backlog(conn, now)
                    self._lag_seconds = ingest.rescore_lag(conn, now).total_seconds()
                self._counted_at = time.monotonic()
            return self._backlog, self._lag_seconds

    def admit(self, engine: Engine) -> None:
        """429 with Retry-After while rescoring is too far behind: the sender retries, nothing is stored.

        Too far behind: more due rescores than LEADSCORE_MAX_RESCORE_BACKLOG, or the longest-waiting one waiting
        longer than LEADSCORE_MAX_RESCORE_LAG_SECONDS. The queue keeps one row per lead, so its length alone stays
        below the number of leads however far behind the scores fall; the wait says how stale they are.
        """
        backlog, lag = self.backlog(engine)
        why = None
        if backlog > self.max_backlog:
            why = f"{backlog:,} rescores are waiting (more than LEADSCORE_MAX_RESCORE_BACKLOG={self.max_backlog:,})"
        elif lag > self.max_lag_seconds:
            why = (f"rescores have waited {lag:.0f} s (more than LEADSCORE_MAX_RESCORE_LAG_SECONDS="
                   f"{self.max_lag_seconds:g})")  # fmt: skip
        if why is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"{why}; nothing was stored: send again in {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    def write(self, engine: Engine, work: Callable[[Connection], _T]) -> _T:
        """`work` in one transaction; a refusal (IngestError) rolls it back and becomes its 4xx.

        A transaction the database aborted whole is run again from the start (it left nothing behind): on
        PostgreSQL, two requests queueing overlapping leads (colleagues of each other) can deadlock; on SQLite, a
        transaction that read before another worker process wrote cannot write ("database is locked" at once,
        whatever the busy timeout).
        """
        lock = self._write_lock if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with lock, engine.begin() as conn:
                    return work(conn)
            except ingest.IngestError as err:
                raise HTTPException(err.status, [problem.as_detail("body") for problem in err.problems]) from None
            except DBAPIError as err:
                if attempt == WRITE_ATTEMPTS or not _aborted(err):
                    raise
                log.info("ingest transaction aborted by the database (%s); running it again", err.orig)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _aborted(err: DBAPIError) -> bool:
    """Whether the database aborted the transaction whole, so that running it again may succeed."""
    if getattr(err.orig, "sqlstate", None) in RETRIED_SQLSTATES:
        return True
    return isinstance(err.orig, sqlite3.OperationalError) and "database is locked" in str(err.orig)


def runtime(settings: Settings) -> IngestRuntime:
    """The ingest routes' runtime for `settings`; EventMapError (a ValueError) when the event map is not valid."""
    limits = ingest.TouchLimits(
        max_future=dt.timedelta(hours=settings.max_touch_future_hours),
        max_property_bytes=settings.max_touch_property_bytes,
    )
    return IngestRuntime(
        event_map=load_event_map(settings.event_map),
        limits=limits,
        max_batch=settings.max_ingest_batch,
        max_backlog=settings.max_rescore_backlog,
        max_lag_seconds=settings.max_rescore_lag_seconds,
    )


async def get_runtime(request: Request) -> IngestRuntime:
    """The ingest runtime of the app handling `request`."""
    runtime: IngestRuntime = request.app.state.ingest
    return runtime


RuntimeDep = Annotated[IngestRuntime, Depends(get_runtime)]
LeadId = Annotated[str, Path(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00-\x1f\x7f]+$")]
_REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"description": "A touch or call names a lead that is not stored (the detail names the field)."},
    409: {"description": "The change conflicts with what is stored: a stamp moving back, leads that would merge."},
    429: {"description": "The rescore backlog is over its limit: nothing stored; retry after Retry-After seconds."},
}


def _too_many(count: int, limit: int, loc: list[str | int]) -> None:
    if count > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": loc, "msg": f"at most {limit} per request (LEADSCORE_MAX_INGEST_BATCH), got {count}",
              "type": "too_long"}],
        )  # fmt: skip


def _written(change: ingest.LeadChange) -> LeadWritten:
    changed = {
        name: FieldChange(before=_json(before), after=_json(after)) for name, (before, after) in change.changed.items()
    }
    return LeadWritten(created=change.created, lead=Lead.model_validate(change.lead), changed=changed)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(value: object) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value


@router.put("/leads/{lead_id}", summary="Create or change a lead", response_model=LeadWritten,
            responses={201: {"model": LeadWritten, "description": "The lead was created."}, **_REFUSALS})  # fmt: skip
def put_lead(
    lead_id: LeadId, body: LeadFields, state: StateDep, runtime: RuntimeDep, response: Response
) -> LeadWritten:
    """Create the lead (201; created_at required) or change only the fields sent (200); its rescore is queued.

    Lifecycle stamps only move forward: clearing a stamp or moving it earlier than stored is a 409 naming the field.
    """
    engine = state.score_log.engine
    runtime.admit(engine)
    changes = body.changes()
    change = runtime.write(engine, lambda conn: ingest.upsert_lead(conn, lead_id, changes, now=_now()))
    response.status_code = status.HTTP_201_CREATED if change.created else status.HTTP_200_OK
    return _written(change)


@router.post("/leads/bulk", summary="Create or change many leads, all or nothing", response_model=BulkLeadsWritten,
             responses=_REFUSALS)  # fmt: skip
def post_leads(body: BulkLeadsRequest, state: StateDep, runtime: RuntimeDep) -> BulkLeadsWritten:
    """As PUT /v1/leads/{lead_id} for each lead, in order, in one transaction: one refusal stores none of them."""
    _too_many(len(body.leads), runtime.max_batch, ["body", "leads"])
    engine = state.score_log.engine
    runtime.admit(engine)
    items = [(lead.lead_id, lead.changes()) for lead in body.leads]
    changes = runtime.write(engine, lambda conn: ingest.upsert_leads(conn, items, now=_now()))
    created = sum(c.created for c in changes)
    updated = sum(not c.created and bool(c.changed) for c in changes)
    return BulkLeadsWritten(
        created=created,
        updated=updated,
        unchanged=len(changes) - created - updated,
        leads=[_written(change) for change in changes],
    )


@router.post("/activities", summary="Store touches, each once", response_model=ActivitiesAdded, responses=_REFUSALS)
def post_activities(body: ActivitiesRequest, state: StateDep, runtime: RuntimeDep) -> ActivitiesAdded:
    """Store a batch of touches in one transaction; the leads that got new ones are queued for a rescore.

    A touch already stored (the same activity_id, else the same content) is counted as a duplicate, not refused.
    """
    _too_many(len(body.activities), runtime.max_batch, ["body", "activities"])
    engine = state.score_log.engine
    runtime.admit(engine)
    touches = [activity.touch() for activity in body.activities]
    added = runtime.write(engine, lambda conn: ingest.add_touches(conn, touches, now=_now(), limits=runtime.limits))
    return ActivitiesAdded(stored=added.stored, duplicates=added.duplicates, lead_ids=list(added.lead_ids))


@router.post("/events", summary="Apply Segment messages (identify, track, page, group, alias)",
             response_model=EventsApplied, responses=_REFUSALS)  # fmt: skip
def post_events(body: EventsRequest, state: StateDep, runtime: RuntimeDep) -> EventsApplied:
    """A Segment message, or a batch as Segment's HTTP API sends it, applied in order in one transaction.

    identify creates or changes the lead (userId) from its traits and joins the anonymousId's touches to it; track
    and page become touches through the event map (LEADSCORE_EVENT_MAP); group sets the lead's account; alias links
    an anonymous id to a lead (an alias of two stored leads is a 409: leads are never merged silently).
    """
    messages = body.messages()
    _too_many(len(messages), runtime.max_batch, ["body", "batch"])
    engine = state.score_log.engine
    runtime.admit(engine)
    loc: tuple[str, ...] = ("batch",) if body.batch is not None else ()
    applied = runtime.write(
        engine,
        lambda conn: ingest.apply_events(conn, messages, runtime.event_map, now=_now(), limits=runtime.limits, loc=loc),
    )
    unmapped = [
        UnmappedCount(kind="track" if kind == "track" else "page", name=name, count=count)
        for (kind, name), count in sorted(applied.unmapped.items())
    ]
    return EventsApplied(
        messages=applied.messages,
        leads_changed=applied.leads_changed,
        touches_stored=applied.touches_stored,
        duplicates=applied.duplicates,
        identified=applied.identified,
        unmapped=unmapped,
    )


@router.get("/events/unmapped", summary="Events the event map sends nowhere", response_model=UnmappedEvents)
def get_unmapped(state: StateDep, runtime: RuntimeDep) -> UnmappedEvents:
    """Every track or page event name the map sent nowhere so far, with counts: candidates for the event map."""
    with state.score_log.engine.connect() as conn:
        found = ingest.unmapped(conn)
    events = [
        UnmappedEvent(
            kind="track" if e.kind == "track" else "page",
            name=e.name,
            count=e.count,
            first_seen_at=e.first_seen_at,
            last_seen_at=e.last_seen_at,
        )
        for e in found
    ]
    return UnmappedEvents(unknown=runtime.event_map.unknown, events=events)
