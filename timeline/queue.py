"""The durable rescore queue: a change is queued in the transaction that stores it, and rescored from here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, func
from sqlalchemy.dialects import postgresql, sqlite

from timeline.schema import rescore_queue

# Why a lead is rescored, as score_history.cause records it.
CAUSES = ("touch", "profile", "lifecycle", "colleague", "sweep", "identify", "request")


def enqueue(conn: Connection, lead_ids: Iterable[str], cause: str, *, due_at: dt.datetime | None = None) -> None:
    """Queue `lead_ids` for a rescore, in the caller's transaction (so the change and its rescore commit together).

    A lead already queued keeps its place (the earlier due time) and its generation moves on, so that a worker
    scoring it right now keeps the row for one more rescore (see timeline.schema.rescore_queue).
    """
    if cause not in CAUSES:
        raise ValueError(f"unknown rescore cause {cause!r} (one of {', '.join(CAUSES)})")
    now = dt.datetime.now(dt.UTC)
    due = due_at or now
    rows = [
        {"lead_id": lead_id, "cause": cause, "enqueued_at": now, "due_at": due, "generation": 1, "attempts": 0}
        for lead_id in dict.fromkeys(lead_ids)  # each lead once, in order
    ]
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
    excluded = statement.excluded
    table = rescore_queue.c
    upsert = statement.on_conflict_do_update(
        index_elements=[table.lead_id],
        set_={
            "generation": table.generation + 1,
            "due_at": _earlier(conn, table.due_at, excluded.due_at),
            "cause": excluded.cause,
        },
    )
    conn.execute(upsert, rows)


def _earlier(conn: Connection, current: ColumnElement[dt.datetime], new: ColumnElement[dt.datetime]) -> object:
    # SQLite's two-argument min() and PostgreSQL's least() both pick the earlier time.
    return func.least(current, new) if conn.dialect.name == "postgresql" else func.min(current, new)
