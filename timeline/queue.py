"""The durable rescore queue: a change is queued in the transaction that stores it, and rescored from here."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, bindparam, delete, func, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from timeline.engine import stored_time
from timeline.schema import Stamp, lead_scores, leads, rescore_queue

log = logging.getLogger(__name__)

# Leads per enqueue statement: six parameters each stays far below SQLite's and PostgreSQL's limits.
# Why a lead is rescored, as score_history.cause records it.
CAUSES = ("touch", "profile", "lifecycle", "colleague", "sweep", "identify", "request")


def enqueue(conn: Connection, lead_ids: Iterable[str], cause: str, *, due_at: dt.datetime | None = None) -> None:
    """Queue `lead_ids` for a rescore, in the caller's transaction (so the change and its rescore commit together).

    A lead already queued keeps its place (the earlier due time) and its generation moves on, so that a worker
    scoring it right now keeps the row for one more rescore (see timeline.schema.rescore_queue).
    """
    enqueue_causes(conn, dict.fromkeys(lead_ids, cause), due_at=due_at)


def enqueue_causes(conn: Connection, causes: Mapping[str, str], *, due_at: dt.datetime | None = None) -> None:
    """As `enqueue`, each lead with its own cause.

    A transaction should queue everything it queues in one call: concurrent transactions then lock queue rows in
    one order (lead order), where two calls each (touched leads, then their colleagues) would now and then find
    PostgreSQL deadlocking them.
    """
    for cause in set(causes.values()):
        if cause not in CAUSES:
            raise ValueError(f"unknown rescore cause {cause!r} (one of {', '.join(CAUSES)})")
    now = dt.datetime.now(dt.UTC)
    due = due_at or now
    rows = [
        {"lead_id": lead_id, "cause": causes[lead_id], "enqueued_at": now, "due_at": due, "generation": 1,
         "attempts": 0}
        for lead_id in sorted(causes)
    ]  # fmt: skip
    if not rows:
        return
    dialect = conn.dialect.name
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(rescore_queue)
    elif dialect == "sqlite":
        statement = sqlite.insert(rescore_queue)
    else:
        raise NotImplementedError(f"the rescore queue supports SQLite and PostgreSQL, not {dialect}")
    # One statement, compiled once and cached, executed for every row in order (executemany): the rows stay in lead
    # order, and a multi-row VALUES list would be compiled anew for each count of rows (seconds for a few thousand).
    conn.execute(_upsert(conn, statement), rows)


def _upsert(conn: Connection, statement: postgresql.Insert | sqlite.Insert) -> Any:
    excluded = statement.excluded
    table = rescore_queue.c
    return statement.on_conflict_do_update(
        index_elements=[table.lead_id],
        set_={
            "generation": table.generation + 1,
            "due_at": _earlier(conn, table.due_at, excluded.due_at),
            "cause": excluded.cause,
        },
    )


def _earlier(conn: Connection, current: ColumnElement[dt.datetime], new: ColumnElement[dt.datetime]) -> object:
    # SQLite's two-argument min() and PostgreSQL's least() both pick the earlier time.
    return func.least(current, new) if conn.dialect.name == "postgresql" else func.min(current, new)


@dataclass(frozen=True, slots=True)
class Claim:
    """A queued lead a worker holds for a rescore: the generation it read, why, and how often it failed before."""

    lead_id: str
    generation: int
    cause: str
    attempts: int
    claimed_by: str  # the worker: only it releases the row (after its lease ran out, another worker may hold it)


# A failed rescore is tried again after 2, 4, 8, ... seconds, at most an hour apart: a lead whose stored history the
# model refuses keeps being tried (a later change may fix it) without taking the queue's time from the others.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 3600.0
# Leads a sweep selects and queues per statement (and per transaction, on an engine).
SWEEP_PAGE = 1000


def claim(
    conn_or_engine: Connection | Engine, worker_id: str, limit: int, lease_seconds: float, now: dt.datetime
) -> list[Claim]:
    """Take up to `limit` due leads for `worker_id` until `now + lease_seconds`, earliest due first.

    A row is due once its due time has come, and free when nobody holds it or its holder's lease ran out (a killed
    worker's rows come back this way). One statement selects and marks the rows: on PostgreSQL the selection locks
    them FOR UPDATE SKIP LOCKED, so that two replicas claiming at once take disjoint rows; on SQLite the statement
    holds the database's single write lock from its start. An engine claims in a transaction of its own.
    """
    now = _utc(now)
    table = rescore_queue.c
    free = and_(table.due_at <= now, or_(table.claimed_until.is_(None), table.claimed_until < now))
    due = (
        select(table.lead_id)
        .where(free)
        .order_by(table.due_at, table.lead_id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # not rendered on SQLite, whose writers take turns
    )
    statement = (
        update(rescore_queue)
        .where(table.lead_id.in_(due.scalar_subquery()), free)
        .values(claimed_by=worker_id, claimed_until=now + dt.timedelta(seconds=lease_seconds))
        .returning(table.lead_id, table.generation, table.cause, table.attempts, table.due_at)
    )
    with _transaction(conn_or_engine) as conn:
        rows = sorted(conn.execute(statement), key=lambda row: (stored_time(row.due_at), row.lead_id))
    return [Claim(row.lead_id, row.generation, row.cause, row.attempts, worker_id) for row in rows]


def complete(conn: Connection, claims: Sequence[Claim]) -> None:
    """Rescored: each claimed row goes, unless a change came in meanwhile (a newer generation), which is released.

    A released row keeps its due time, so the change it stands for is rescored at once. In the caller's transaction:
    the scores and the queue's row commit together, and a killed worker leaves neither.
    """
    if not claims:
        return
    table = rescore_queue.c
    conn.execute(
        delete(rescore_queue).where(table.lead_id == bindparam("b_lead"), table.generation == bindparam("b_gen")),
        [{"b_lead": c.lead_id, "b_gen": c.generation} for c in _in_lock_order(claims)],
    )
    # What is left of them has a newer generation: free for the next claim, its failures forgotten (this one worked).
    _release(conn, claims, attempts=0)


def release(conn_or_engine: Connection | Engine, claims: Sequence[Claim]) -> None:
    """Give claimed rows back unscored (a worker shutting down), due as they were, attempts unchanged."""
    if not claims:
        return
    with _transaction(conn_or_engine) as conn:
        _release(conn, claims)


def fail(conn_or_engine: Connection | Engine, claims: Sequence[Claim], error: str, now: dt.datetime) -> None:
    """Could not rescore: each row is released with one more attempt, due again after an exponential backoff.

    Never dropped: a change that was acknowledged is rescored once it can be (and a new change to the lead makes it
    due at once again, as enqueue keeps the earlier due time).
    """
    if not claims:
        return
    now = _utc(now)
    for c in claims:
        log.warning("cannot rescore lead %r (attempt %d, cause %s): %s", c.lead_id, c.attempts + 1, c.cause, error)
    table = rescore_queue.c
    statement = (
        update(rescore_queue)
        .where(table.lead_id == bindparam("b_lead"), table.claimed_by == bindparam("b_worker"))
        .values(
            claimed_by=None, claimed_until=None, attempts=table.attempts + 1, due_at=bindparam("b_due", type_=Stamp)
        )
    )
    rows = [
        {"b_lead": c.lead_id, "b_worker": c.claimed_by, "b_due": now + retry_delay(c.attempts + 1)}
        for c in _in_lock_order(claims)
    ]
    with _transaction(conn_or_engine) as conn:
        conn.execute(statement, rows)


def retry_delay(attempts: int) -> dt.timedelta:
    """How long a lead waits after its `attempts`-th failed rescore: doubling from RETRY_FIRST_SECONDS, capped."""
    exponent = min(max(attempts - 1, 0), 32)  # 2**32 s is far past the cap already
    return dt.timedelta(seconds=min(RETRY_FIRST_SECONDS * 2**exponent, RETRY_MAX_SECONDS))


def backlog(conn: Connection, now: dt.datetime) -> int:
    """How many leads are due for a rescore at `now` (being rescored included)."""
    found = conn.execute(select(func.count()).select_from(rescore_queue).where(rescore_queue.c.due_at <= _utc(now)))
    return int(found.scalar_one())


def oldest_due(conn: Connection, now: dt.datetime) -> dt.datetime | None:
    """The due time of the longest-waiting due lead (None: nothing is due): how far behind rescoring is."""
    found = conn.execute(select(func.min(rescore_queue.c.due_at)).where(rescore_queue.c.due_at <= _utc(now)))
    value = found.scalar_one()
    return None if value is None else stored_time(value)


def open_leads(now: dt.datetime) -> ColumnElement[bool]:
    """Leads still open at `now`: not won, and not lost unless recycled since (features.engine's lifecycle stages).

    A lead's stage is that of its latest lifecycle stamp, and stamps follow the chain created, MQL, SAL, SQL, lost,
    recycled, requalified, won: a won lead and a lost one that was not recycled are closed; every other is open.
    """
    now = _utc(now)
    known = {name: and_(leads.c[name].is_not(None), leads.c[name] <= now) for name in ("won_at", "lost_at")}
    recycled = and_(leads.c.recycled_at.is_not(None), leads.c.recycled_at <= now)
    return and_(leads.c.created_at <= now, not_(known["won_at"]), or_(not_(known["lost_at"]), recycled))


def sweep(
    conn_or_engine: Connection | Engine, now: dt.datetime, older_than: dt.timedelta, *, page: int = SWEEP_PAGE
) -> int:
    """Queue (cause "sweep") every open lead scored longer than `older_than` before `now`, or never; how many.

    Scores age (engagement decays, days in a stage grow) without any change to the lead, so a periodic sweep keeps
    every open lead's score current. Leads already queued are left as they are. The sweep goes through the leads
    in pages of `page` (on an engine, a transaction each), so a million leads never make one statement.

    Idempotent: a second sweep right after the first finds its leads queued or freshly scored and queues nothing,
    so replicas that sweep at the same time do no harm.
    """
    now = _utc(now)
    stale_before = now - older_than
    queued = select(rescore_queue.c.lead_id).where(rescore_queue.c.lead_id == leads.c.lead_id).exists()
    base = (
        select(leads.c.lead_id)
        .select_from(leads.outerjoin(lead_scores, lead_scores.c.lead_id == leads.c.lead_id))
        .where(
            open_leads(now),
            or_(lead_scores.c.lead_id.is_(None), lead_scores.c.scored_at < stale_before),
            not_(queued),
        )
        .order_by(leads.c.lead_id)
        .limit(page)
    )
    total, after = 0, None
    while True:
        query = base if after is None else base.where(leads.c.lead_id > after)
        with _transaction(conn_or_engine) as conn:
            found = list(conn.execute(query).scalars())
            enqueue(conn, found, "sweep", due_at=now)
        total += len(found)
        if len(found) < page:
            return total
        after = found[-1]


def _release(conn: Connection, claims: Sequence[Claim], *, attempts: int | None = None) -> None:
    table = rescore_queue.c
    values: dict[str, object] = {"claimed_by": None, "claimed_until": None}
    if attempts is not None:
        values["attempts"] = attempts
    conn.execute(
        update(rescore_queue)
        .where(table.lead_id == bindparam("b_lead"), table.claimed_by == bindparam("b_worker"))
        .values(**values),
        [{"b_lead": c.lead_id, "b_worker": c.claimed_by} for c in _in_lock_order(claims)],
    )


def _in_lock_order(claims: Sequence[Claim]) -> list[Claim]:
    # Rows are locked in lead order, as other writers of the queue should: two transactions that lock the same rows
    # in opposite orders deadlock on PostgreSQL.
    return sorted(claims, key=lambda c: c.lead_id)


@contextmanager
def _transaction(conn_or_engine: Connection | Engine) -> Iterator[Connection]:
    """The caller's connection (and transaction) as it is; an engine's connection in a transaction of its own."""
    if isinstance(conn_or_engine, Connection):
        yield conn_or_engine
        return
    with conn_or_engine.begin() as conn:
        yield conn


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite stores a time's digits without its zone: every time written or compared must be in UTC.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
