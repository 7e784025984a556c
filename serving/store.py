"""Durable service state on any SQLAlchemy database: the score log and the versioned routing policies."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry

from serving.policy import RoutingPolicy

log = logging.getLogger(__name__)

metadata = MetaData()
score_log = Table(
    "score_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("lead_id", String(256), nullable=False, index=True),
    Column("scored_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("thresholds_version", Integer, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("outputs", Text, nullable=False),
)
threshold_versions = Table(
    "threshold_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("author", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("policy", Text, nullable=False),
)
# Records written per commit at most: enough to amortise a commit under load, small enough to keep latency flat.
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One scored lead as kept for audit and for learning from outcomes later."""

    request_id: str
    lead_id: str
    scored_at: dt.datetime
    model_version: str
    thresholds_version: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A stored routing policy with who saved it, when and why."""

    version: int
    created_at: dt.datetime
    author: str
    reason: str
    policy: RoutingPolicy


def _sqlite_pragmas(durable_fsync: bool) -> Any:
    def configure(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer. synchronous=NORMAL: a committed transaction survives a killed
        # process (it is in the WAL file); FULL also survives power loss, at an fsync per commit.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable_fsync else 'NORMAL'}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    return configure


def make_engine(url: str, *, durable_fsync: bool = False) -> Engine:
    """An engine for `url` with the tables created; SQLite gets WAL and a busy timeout."""
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(durable_fsync))
    metadata.create_all(engine)
    return engine


class ScoreLog:
    """Appends score records through one writer thread that commits in groups.

    `append` resolves only after the record's transaction has committed, so an acknowledged score is never lost to a
    crash of the service; concurrent requests share commits, so logging does not dominate latency under load.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[tuple[list[ScoreRecord], asyncio.Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="score-log-writer", daemon=True)
        self._thread.start()

    async def append(self, records: Sequence[ScoreRecord]) -> None:
        """Write records durably; returns once they are committed (raises if the write failed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((list(records), future))
        await future

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            rows = [_row(record) for records, _ in batch for record in records]
            error: Exception | None = None
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(score_log), rows)
            except Exception as err:
                log.exception("score log write failed for %d records", len(rows))
                error = err
            for _, future in batch:
                future.get_loop().call_soon_threadsafe(_settle, future, error)

    def read(self, *, request_id: str | None = None, lead_id: str | None = None) -> list[ScoreRecord]:
        """Records by request id or lead id, oldest first."""
        query = select(score_log).order_by(score_log.c.id)
        if request_id is not None:
            query = query.where(score_log.c.request_id == request_id)
        if lead_id is not None:
            query = query.where(score_log.c.lead_id == lead_id)
        with self.engine.connect() as conn:
            return [
                ScoreRecord(
                    request_id=r.request_id,
                    lead_id=r.lead_id,
                    scored_at=r.scored_at,
                    model_version=r.model_version,
                    thresholds_version=r.thresholds_version,
                    inputs=json.loads(r.inputs),
                    outputs=json.loads(r.outputs),
                )
                for r in conn.execute(query)
            ]


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _row(record: ScoreRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "lead_id": record.lead_id,
        "scored_at": record.scored_at,
        "model_version": record.model_version,
        "thresholds_version": record.thresholds_version,
        "inputs": json.dumps(record.inputs, default=str),
        "outputs": json.dumps(record.outputs, default=str),
    }


class PolicyStore:
    """Versioned routing policies: every save is a new version; the latest is in force."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def latest(self) -> PolicyVersion | None:
        """The policy in force, or None before the first save."""
        query = select(threshold_versions).order_by(threshold_versions.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _policy_version(row)

    def get(self, version: int) -> PolicyVersion | None:
        """One stored version."""
        query = select(threshold_versions).where(threshold_versions.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _policy_version(row)

    def history(self) -> list[PolicyVersion]:
        """Every version, newest first."""
        query = select(threshold_versions).order_by(threshold_versions.c.version.desc())
        with self.engine.connect() as conn:
            return [_policy_version(r) for r in conn.execute(query)]

    def save(self, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion:
        """Store `policy` as the next version.

        The version number is the primary key: two concurrent saves cannot both take the same number, the loser
        retries with the next one, so no version is ever lost or overwritten.
        """
        for _ in range(20):
            with self.engine.connect() as conn:
                current = conn.execute(select(threshold_versions.c.version).order_by(
                    threshold_versions.c.version.desc()).limit(1)).scalar()  # fmt: skip
            version = int(current or 0) + 1
            created_at = dt.datetime.now(dt.UTC)
            row = {
                "version": version,
                "created_at": created_at,
                "author": author,
                "reason": reason,
                "policy": policy.model_dump_json(),
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(threshold_versions), [row])
            except IntegrityError:  # another save took this number first: take the next one
                continue
            return PolicyVersion(version, created_at, author, reason, policy)
        raise RuntimeError("could not save the policy: too many concurrent saves")

    def ensure_default(self, policy: RoutingPolicy) -> PolicyVersion:
        """The policy in force; stores `policy` as version 1 when none has been saved yet."""
        current = self.latest()
        if current is not None:
            return current
        return self.save(policy, author="leadscore", reason="default policy shipped with the model")


def _policy_version(row: Any) -> PolicyVersion:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=dt.UTC)
    return PolicyVersion(
        version=int(row.version),
        created_at=created,
        author=row.author,
        reason=row.reason,
        policy=RoutingPolicy.model_validate_json(row.policy),
    )
