"""Durable service state on any SQLAlchemy database: the score log, the versioned routing policies, the reloads."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, IntegrityError
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
# One row per successful POST /v1/admin/reload: the version that worker loaded, for every other worker to follow.
model_reloads = Table(
    "model_reloads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(256), nullable=False),
    Column("version", String(64), nullable=False),
    Column("reloaded_at", DateTime(timezone=True), nullable=False),
)
# Records written per commit (whole requests, so a large batch commits alone): enough to amortise a commit under load.
MAX_BATCH = 256
# The journal is emptied once the database has caught up and it has grown past this size: small enough to replay in
# a moment, large enough that truncating is rare.
JOURNAL_TRUNCATE_BYTES = 8_000_000
# How often the writer inserts what was journaled meanwhile: the database lags the journal by about this.
JOURNAL_LINGER_SECONDS = 0.05
_JOURNAL_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One scored lead as kept for audit and for learning from outcomes later."""

    request_id: str
    lead_id: str
    scored_at: dt.datetime
    model_version: str
    thresholds_version: int
    inputs: dict[str, Any] | str  # a dict, or the JSON text as received (kept verbatim: cheaper and exact)
    outputs: dict[str, Any] | str


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
        # Score-log rows are ~5 kB: 16 kB pages keep each in one page instead of a chain of overflow pages, which
        # halves the system time of every insert. Only a new database takes it (before WAL, which fixes it).
        cursor.execute("PRAGMA page_size=16384")
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
    try:
        metadata.create_all(engine)
    except DBAPIError as err:
        # Service workers start together on a new store: each finds the tables missing, one creates them and the
        # others' CREATE TABLE fails on a table that now exists. A second look finds them; any other fault recurs.
        log.info("service store tables appeared while creating them (%s); looking again", err.orig)
        metadata.create_all(engine)
    return engine


class ScoreLog:
    """Appends score records durably without making requests wait for the database.

    With a journal folder (the service's default) `append` writes the records to this process's append-only journal
    file before it returns: once written, they are in the operating system's cache and survive a killed process.
    A writer thread then inserts them into the database in groups and truncates the journal when it has caught up.
    On start, journals left by dead processes (their file lock is free) are replayed into the database, skipping
    records already there, then removed. So an acknowledged score is never lost to a crash, and logging costs a
    request one `write` call. Without a journal folder, `append` waits for the database commit instead.
    """

    def __init__(self, engine: Engine, journal_dir: Path | None = None) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._items: list[tuple[list[dict[str, Any]], asyncio.Future[None] | None]] = []  # for the writer
        self._wake = threading.Event()  # set for callers waiting on a commit, and to stop
        self._stopping = False
        self._cond = threading.Condition()
        self._pending = 0  # records written to the journal and not yet committed to the database
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        if journal_dir is not None:
            journal_dir.mkdir(parents=True, exist_ok=True)
            self.recovered = recover_journals(engine, journal_dir)
            path = journal_dir / f"journal-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live: others must not replay it
            self._journal_fd, self._journal_path = fd, path
        self._thread = threading.Thread(target=self._run, name="score-log-writer", daemon=True)
        self._thread.start()

    async def append(self, records: Sequence[ScoreRecord]) -> None:
        """Write records durably: journaled (then inserted in the background) or committed, before returning."""
        rows = [record_row(record) for record in records]
        if self._journal_fd is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            with self._lock:
                self._items.append((rows, future))
            self._wake.set()
            await future
            return
        data = b"".join([_JOURNAL_ENCODER.encode(row) + b"\n" for row in rows])
        with self._cond:
            os.write(self._journal_fd, data)
            self._pending += len(rows)
        # No wake-up: the writer collects journaled records on its own schedule, so a request never pays for
        # handing the interpreter to another thread.
        with self._lock:
            self._items.append((rows, None))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every journaled record is in the database; False if that did not happen in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self) -> None:
        """Flush what is queued, stop the writer, and drop the journal once everything is in the database."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        if self._journal_fd is not None and self._journal_path is not None:
            with self._cond:
                caught_up = self._pending == 0
            if caught_up:
                self._journal_path.unlink(missing_ok=True)
            os.close(self._journal_fd)  # releases the lock: a leftover journal is replayed by the next start
            self._journal_fd = None

    def _run(self) -> None:
        while True:
            # Journaled records are safe already: they are inserted every JOURNAL_LINGER_SECONDS, many per commit.
            # Callers waiting for a commit (no journal) and close() wake the writer at once.
            self._wake.wait(JOURNAL_LINGER_SECONDS)
            self._wake.clear()
            with self._lock:
                items, self._items = self._items, []
                stopping = self._stopping
            start = 0
            while start < len(items):
                # Whole items per commit, about MAX_BATCH records: one commit's worth of work at a time.
                end, rows = start, 0
                while end < len(items) and (end == start or rows + len(items[end][0]) <= MAX_BATCH):
                    rows += len(items[end][0])
                    end += 1
                self._write(items[start:end])
                start = end
            if stopping and not items:
                return

    def _write(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[None] | None]]) -> None:
        rows = [row for rows, _ in batch for row in rows]
        error: Exception | None = None
        try:
            with self.engine.begin() as conn:
                insert_rows(conn, rows)
        except Exception as err:
            # Journaled records stay in the journal (replayed at the next start); waiting callers get the error.
            log.exception("score log write failed for %d records", len(rows))
            error = err
        journaled = sum(len(rows) for rows, future in batch if future is None)
        if journaled and error is None:
            self._committed(journaled)
        for _, future in batch:
            if future is not None:
                future.get_loop().call_soon_threadsafe(_settle, future, error)

    def _committed(self, n: int) -> None:
        with self._cond:
            self._pending -= n
            if self._pending == 0:
                assert self._journal_fd is not None
                # Everything written so far is in the database: start the journal afresh (writes hold this lock).
                if os.fstat(self._journal_fd).st_size > JOURNAL_TRUNCATE_BYTES:
                    os.ftruncate(self._journal_fd, 0)
                self._cond.notify_all()

    def read(self, *, request_id: str | None = None, lead_id: str | None = None) -> list[ScoreRecord]:
        """Records by request id or lead id, oldest first (journaled records are flushed first)."""
        if self._journal_fd is not None:
            self.flush()
        query = select(score_log).order_by(score_log.c.id)
        if request_id is not None:
            query = query.where(score_log.c.request_id == request_id)
        if lead_id is not None:
            query = query.where(score_log.c.lead_id == lead_id)
        with self.engine.connect() as conn:
            return [_score_record(r) for r in conn.execute(query)]

    def read_since(self, since: dt.datetime, *, limit: int) -> list[ScoreRecord]:
        """The latest `limit` records scored at or after `since`, oldest first (what threshold tuning replays)."""
        if self._journal_fd is not None:
            self.flush()
        query = select(score_log).where(score_log.c.scored_at >= since).order_by(score_log.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        return [_score_record(r) for r in reversed(rows)]


def _score_record(row: Any) -> ScoreRecord:
    """A score-log row as the record that was appended."""
    return ScoreRecord(
        request_id=row.request_id,
        lead_id=row.lead_id,
        scored_at=_aware(row.scored_at),
        model_version=row.model_version,
        thresholds_version=row.thresholds_version,
        inputs=json.loads(row.inputs),
        outputs=json.loads(row.outputs),
    )


def recover_journals(engine: Engine, journal_dir: Path) -> int:
    """Replay journals of dead processes into the database (skipping records already there); returns how many."""
    recovered = 0
    for path in sorted(journal_dir.glob("journal-*.jsonl")):
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive and owns it
            rows = []
            for line in path.read_bytes().split(b"\n"):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # an empty or torn last line: that write never returned, so it was never acknowledged
                row["scored_at"] = dt.datetime.fromisoformat(row["scored_at"])
                rows.append(row)
            recovered += _insert_missing(engine, rows)
            path.unlink()
        finally:
            os.close(fd)
    if recovered:
        log.warning("recovered %d score log records from journals of stopped processes", recovered)
    return recovered


def _insert_missing(engine: Engine, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    ids = sorted({row["request_id"] for row in rows})
    with engine.begin() as conn:
        present: set[tuple[str, str]] = set()
        for start in range(0, len(ids), 500):
            query = select(score_log.c.request_id, score_log.c.lead_id).where(
                score_log.c.request_id.in_(ids[start : start + 500])
            )
            present.update((r.request_id, r.lead_id) for r in conn.execute(query))
        missing = [row for row in rows if (row["request_id"], row["lead_id"]) not in present]
        if missing:
            insert_rows(conn, missing)
    return len(missing)


_ROW_COLUMNS = tuple(c.name for c in score_log.columns if c.name != "id")  # what a row holds; the id is the database's
_SCORED_AT = _ROW_COLUMNS.index("scored_at")
# Rows per SQLite statement: 7 parameters each stays under the 999 that older SQLite builds allow.
SQLITE_ROWS_PER_STATEMENT = 128


def insert_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert score-log rows; on SQLite, as few multi-row statements.

    Python's sqlite3 releases the interpreter lock around every statement it runs: one statement per row makes the
    writer thread and the request path hand the lock back and forth for every record, which costs the service far
    more than the insert itself. Other databases get SQLAlchemy's executemany.
    """
    if conn.dialect.name != "sqlite":
        conn.execute(insert(score_log), list(rows))
        return
    stamp = score_log.c.scored_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    for start in range(0, len(rows), SQLITE_ROWS_PER_STATEMENT):
        chunk = rows[start : start + SQLITE_ROWS_PER_STATEMENT]
        values: list[object] = []
        for row in chunk:
            row_values = [row[name] for name in _ROW_COLUMNS]
            if stamp is not None:  # scored_at as SQLAlchemy itself stores it, so that reads parse it back
                row_values[_SCORED_AT] = stamp(row_values[_SCORED_AT])
            values += row_values
        placeholders = ",".join(["(" + ",".join("?" * len(_ROW_COLUMNS)) + ")"] * len(chunk))
        conn.exec_driver_sql(f"INSERT INTO score_log ({', '.join(_ROW_COLUMNS)}) VALUES {placeholders}", tuple(values))


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def record_row(record: ScoreRecord) -> dict[str, Any]:
    """A record as a score_log row (inputs and outputs as JSON text), as stored and as journaled."""
    return {
        "request_id": record.request_id,
        "lead_id": record.lead_id,
        "scored_at": record.scored_at,
        "model_version": record.model_version,
        "thresholds_version": record.thresholds_version,
        "inputs": record.inputs if isinstance(record.inputs, str) else json.dumps(record.inputs, default=str),
        "outputs": record.outputs if isinstance(record.outputs, str) else json.dumps(record.outputs, default=str),
    }


# Version numbers live in a 32-bit Integer column: larger ones can name no stored version (and PostgreSQL refuses them).
MAX_POLICY_VERSION = 2**31 - 1
# Concurrent saves that lose the race for a number retry after a random pause growing by this much per attempt, so
# that many savers spread out instead of colliding again (on PostgreSQL the losers all wake at the winner's commit).
SAVE_BACKOFF_SECONDS = 0.005
SAVE_ATTEMPTS = 50


class VersionConflictError(Exception):
    """A save based on a version that is not the one in force: another was saved since, or the base is unknown."""

    def __init__(self, base_version: int, latest: int | None) -> None:
        self.base_version = base_version
        self.latest = latest
        super().__init__(f"the save was based on version {base_version}, but version {latest} is in force")

    @property
    def unknown_base(self) -> bool:
        """The base is no stored version: ahead of the latest (or nothing stored yet)."""
        return self.latest is None or self.base_version > self.latest


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
        """One stored version; None for a number no version can have."""
        if not 1 <= version <= MAX_POLICY_VERSION:
            return None  # the database would overflow (SQLite) or refuse (PostgreSQL) it
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
        for attempt in range(SAVE_ATTEMPTS):
            stored = self._insert((self._latest_number() or 0) + 1, policy, author=author, reason=reason)
            if stored is not None:
                return stored
            # another save took this number first: take the next one
            time.sleep(random.uniform(0, SAVE_BACKOFF_SECONDS * (attempt + 1)))
        raise RuntimeError("could not save the policy: too many concurrent saves")

    def save_after(self, base_version: int, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion:
        """Store `policy` as version base_version + 1 if base_version is in force; else raise VersionConflictError.

        For editors that show a version and save changes to it: a save made meanwhile is never silently replaced,
        and a save can never land behind the version in force (it would be stored and never applied). The check and
        the insert are one statement, and the new number is the primary key: of two saves on the same base, one
        stores and the other finds the number taken, on any database.
        """
        if not 1 <= base_version < MAX_POLICY_VERSION:
            raise VersionConflictError(base_version, self._latest_number())
        created_at = dt.datetime.now(dt.UTC)
        table = threshold_versions
        in_force = select(func.max(table.c.version)).scalar_subquery()
        values = select(
            literal(base_version + 1, Integer),
            literal(created_at, table.c.created_at.type),
            literal(author, table.c.author.type),
            literal(reason, table.c.reason.type),
            literal(policy.model_dump_json(), table.c.policy.type),
        ).where(in_force == base_version)
        statement = insert(table).from_select(["version", "created_at", "author", "reason", "policy"], values)
        try:
            with self.engine.begin() as conn:
                # SQLAlchemy reports an INSERT's row count only when asked to (PostgreSQL says -1 otherwise).
                inserted = conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount
        except IntegrityError:
            inserted = 0  # a concurrent save on the same base took the number first
        if inserted != 1:
            raise VersionConflictError(base_version, self._latest_number())
        return PolicyVersion(base_version + 1, created_at, author, reason, policy)

    def rollback(self, version: int, *, author: str, reason: str) -> PolicyVersion | None:
        """Store version `version`'s policy as the newest version (history is never rewritten); None if unknown."""
        earlier = self.get(version)
        if earlier is None:
            return None
        return self.save(earlier.policy, author=author, reason=f"rollback to version {version}: {reason}")

    def ensure_default(self, policy: RoutingPolicy) -> PolicyVersion:
        """The policy in force; stores `policy` as version 1 when none has been saved yet.

        Workers starting together on an empty store all claim version 1: one stores it, the others read it, so the
        default is stored once.
        """
        current = self.latest()
        if current is not None:
            return current
        stored = self._insert(1, policy, author="leadscore", reason="default policy shipped with the model")
        current = stored or self.latest()
        assert current is not None  # version 1 was taken, so a version exists
        return current

    def _latest_number(self) -> int | None:
        with self.engine.connect() as conn:
            current = conn.execute(select(func.max(threshold_versions.c.version))).scalar()
        return None if current is None else int(current)

    def _insert(self, version: int, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion | None:
        """Store `policy` under `version`; None when that number is taken already."""
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
        except IntegrityError:
            return None
        return PolicyVersion(version, created_at, author, reason, policy)


@dataclass(frozen=True, slots=True)
class ModelReload:
    """A reload that one worker answered: which version of which model it loaded, and when."""

    id: int
    model_name: str
    version: str
    reloaded_at: dt.datetime


class ReloadStore:
    """The reloads answered so far: how every worker (and every replica on the same store) learns of one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, model_name: str, version: str) -> ModelReload:
        """Store that `version` of `model_name` was loaded by a reload."""
        reloaded_at = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            # One row, as one statement (not a list of rows): its primary key comes back on every database.
            result = conn.execute(
                insert(model_reloads).values(model_name=model_name, version=version, reloaded_at=reloaded_at)
            )
            key = result.inserted_primary_key
        assert key is not None
        return ModelReload(int(key[0]), model_name, version, reloaded_at)

    def latest(self, model_name: str) -> ModelReload | None:
        """The newest reload of `model_name`, if any."""
        query = (
            select(model_reloads)
            .where(model_reloads.c.model_name == model_name)
            .order_by(model_reloads.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return ModelReload(int(row.id), row.model_name, row.version, _aware(row.reloaded_at))


def _aware(value: dt.datetime) -> dt.datetime:
    """A stored time as written: in UTC (SQLite keeps no time zone and returns naive times)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _policy_version(row: Any) -> PolicyVersion:
    return PolicyVersion(
        version=int(row.version),
        created_at=_aware(row.created_at),
        author=row.author,
        reason=row.reason,
        policy=RoutingPolicy.model_validate_json(row.policy),
    )
