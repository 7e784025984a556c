"""The score log: every score appended durably before it is acknowledged, inserted in groups, kept, archived, pruned."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import DataError, IntegrityError

from serving.store import ScoreRecord, score_log, stored_time

log = logging.getLogger(__name__)

# Records written per commit (whole requests, so a large batch commits alone): enough to amortise a commit under load.
MAX_BATCH = 256
# A journal file past this size is closed and a new one started; the full one is removed once the database has all of
# its records. Small enough to replay in a moment, large enough that starting a file is rare.
JOURNAL_ROTATE_BYTES = 8_000_000
# How often the writer inserts what was journaled meanwhile: the database lags the journal by about this.
JOURNAL_LINGER_SECONDS = 0.05
# After a failed insert the writer tries again, waiting twice as long each time up to this: a database that is back
# gets the backlog within seconds, a database that is down is not hammered.
RETRY_MAX_SECONDS = 5.0
# How long a read waits for journaled records to reach the database before it reads what is there: replays and
# audits should not hang on a database that is slow to take writes.
READ_FLUSH_SECONDS = 2.0
# On close, how long the writer keeps trying to insert what is left; the journal keeps the rest for the next start.
CLOSE_SECONDS = 10.0
JOURNAL_GLOB = "journal-*.jsonl"
# While the journal cannot be written, /readyz tries a write this large (then takes it back): a disk with room for a
# byte or two but not for a score must not count as writable again.
PROBE_BYTES = 16_384
# Records the database refused as data (a value it cannot store), set aside whole instead of blocking the log.
REJECTED_FILE = "rejected.jsonl"
# Held while a process replays dead journals or creates its own, so that workers starting together never replay a
# journal another is creating or has just replayed.
LOCK_FILE = ".journal.lock"
_JOURNAL_ENCODER = msgspec.json.Encoder()
# What the database refuses because of a record itself: such a record can never be inserted, so it is set aside.
# Anything else (a lock, a lost connection, a full disk, a missing table) is the database's state: retried.
_RECORD_ERRORS = (DataError, IntegrityError, ValueError, TypeError, KeyError, ArithmeticError)


class ScoreLogUnavailableError(RuntimeError):
    """A score cannot be recorded durably now (journal not writable, or the commit failed): not acknowledged."""


@dataclass(frozen=True, slots=True)
class ScoreLogStatus:
    """How far the database lags the journal, and what went wrong last; for /readyz and /metrics."""

    pending: int  # journaled records not yet in the database
    oldest_pending_seconds: float | None
    rejected: int  # records the database refused as data, set aside in the rejected file
    last_write_error: str | None  # the database's last refusal, while records wait; None once caught up
    journal_error: str | None  # why the journal cannot be written now; None when it can


Item = tuple[list[dict[str, Any]], "asyncio.Future[None] | None"]  # rows, and a caller waiting for their commit


@dataclass(eq=False)
class _Segment:
    """One journal file of this process: its records wait here until the database has them."""

    fd: int
    path: Path
    size: int = 0  # bytes written so far
    unsaved: int = 0  # records written here and not yet in the database


class ScoreLog:
    """Appends score records durably without making requests wait for the database.

    With a journal folder (the service's default) `append` writes the records to this process's append-only journal
    before it returns: once written, they are in the operating system's cache and survive a killed process. A writer
    thread then inserts them into the database in groups. The journal is a series of files: past JOURNAL_ROTATE_BYTES
    a new one is started, and a full one is removed once the database has every record in it. On start, journals
    left by dead processes (their file lock is free) are replayed into the database, skipping records already there,
    then removed. So an acknowledged score is never lost to a crash, and logging costs a request one `write` call.
    Without a journal folder, `append` waits for the database commit instead.

    Faults: a write the journal cannot take whole (a full disk) is undone and raises ScoreLogUnavailableError, so
    nothing is acknowledged that is not durable; the next write that succeeds clears it. An insert the database
    refuses is retried with backoff until it succeeds (a lock, an outage), and a record the database refuses as data
    is set aside in `rejected.jsonl` beside the journals, so one bad record never holds back the others.
    """

    def __init__(self, engine: Engine, journal_dir: Path | None = None) -> None:
        self.engine = engine
        # One lock for the journal, the writer's queue and the counts: an append journals and queues its records in
        # one step, so the writer sees records in the order they were journaled.
        self._cond = threading.Condition()
        self._items: list[Item] = []  # for the writer
        self._wake = threading.Event()  # set for callers waiting on a commit, and to stop
        self._stopping = False
        self._unsaved: deque[tuple[_Segment, int, float]] = deque()  # per journaled append: where, how many, when
        self._pending = 0  # records written to the journal and not yet in the database
        self._rejected = 0
        self._write_error: str | None = None
        self._journal_error: str | None = None
        self._torn = False  # a failed write may have left part of a line: the next write starts on a new line
        self._journal_dir = journal_dir
        self._segment: _Segment | None = None  # where appends go
        self._full: list[_Segment] = []  # earlier segments whose records are not all in the database yet
        self.recovered = 0
        if journal_dir is not None:
            journal_dir.mkdir(parents=True, exist_ok=True)
            with _directory_lock(journal_dir):
                self.recovered = recover_journals(engine, journal_dir)
            self._segment = _open_segment(journal_dir)
        self._thread = threading.Thread(target=self._run, name="score-log-writer", daemon=True)
        self._thread.start()

    async def append(self, records: Sequence[ScoreRecord]) -> None:
        """Write records durably: journaled (then inserted in the background) or committed, before returning.

        Raises ScoreLogUnavailableError when they cannot be: the caller must not acknowledge them.
        """
        rows = [record_row(record) for record in records]
        if self._segment is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            with self._cond:
                self._items.append((rows, future))
            self._wake.set()
            await future
            return
        data = b"".join([_JOURNAL_ENCODER.encode(row) + b"\n" for row in rows])
        with self._cond:
            segment = self._journal_write(data)
            segment.unsaved += len(rows)
            self._pending += len(rows)
            self._unsaved.append((segment, len(rows), time.monotonic()))
            # No wake-up: the writer collects journaled records on its own schedule, so a request never pays for
            # handing the interpreter to another thread.
            self._items.append((rows, None))

    def _journal_write(self, data: bytes) -> _Segment:
        """Append `data` whole or not at all, to the segment it returns; raises ScoreLogUnavailableError.

        Callers hold self._cond.
        """
        segment = self._segment
        assert segment is not None and self._journal_dir is not None
        if segment.size > JOURNAL_ROTATE_BYTES:
            segment = self._rotate(segment)
        if self._torn:
            data = b"\n" + data  # ends whatever part of a line a failed write left, so replay skips it alone
        written = 0
        try:
            view = memoryview(data)
            while written < len(data):
                # os.write may write less than asked (a disk filling up): the rest follows, or the write fails.
                written += os.write(segment.fd, view[written:])
        except OSError as err:
            self._torn = self._torn or written > 0
            if written:
                with contextlib.suppress(OSError):  # undo the part written; if that fails, _torn covers it
                    os.ftruncate(segment.fd, segment.size)
                    self._torn = False
            self._journal_error = f"cannot write the score log's journal in {self._journal_dir}: {err.strerror}"
            log.error("%s; scores are refused (503) until it can be written again", self._journal_error)
            raise ScoreLogUnavailableError(self._journal_error) from err
        segment.size += written
        self._torn = False
        if self._journal_error is not None:
            log.warning("the score log's journal can be written again")
            self._journal_error = None
        return segment

    def _rotate(self, segment: _Segment) -> _Segment:
        """Start a new journal file; the full one goes once the database has its records."""
        assert self._journal_dir is not None
        try:
            fresh = _open_segment(self._journal_dir)
        except OSError as err:
            log.warning("cannot start a new journal file (%s); the current one grows on", err)
            return segment
        self._segment = fresh
        if segment.unsaved:
            self._full.append(segment)
        else:
            _remove(segment)
        return fresh

    def status(self) -> ScoreLogStatus:
        """Lag and faults of the log. While the journal cannot be written, tries a harmless write to see if it can."""
        with self._cond:
            if self._journal_error is not None and self._segment is not None:
                # A service taken out of rotation gets no score to try with. Spaces: replay skips such a line, so
                # taking it back is tidiness, not safety.
                with contextlib.suppress(ScoreLogUnavailableError, OSError):
                    segment = self._journal_write(b" " * PROBE_BYTES + b"\n")
                    os.ftruncate(segment.fd, segment.size - PROBE_BYTES - 1)
                    segment.size -= PROBE_BYTES + 1
            oldest = time.monotonic() - self._unsaved[0][2] if self._unsaved else None
            return ScoreLogStatus(self._pending, oldest, self._rejected, self._write_error, self._journal_error)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every journaled record is in the database; False if that did not happen in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self) -> None:
        """Flush what is queued, stop the writer, and drop the journal once everything is in the database."""
        with self._cond:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout=CLOSE_SECONDS + 30)
        with self._cond:
            segments = [*self._full, *([self._segment] if self._segment else [])]
            self._segment, self._full = None, []
            if self._pending:
                log.warning("%d score log records are left in %s for the next start to insert", self._pending,
                            ", ".join(str(s.path) for s in segments))  # fmt: skip
            for segment in segments:
                if segment.unsaved:
                    os.close(segment.fd)  # releases the lock: a leftover journal is replayed by the next start
                else:
                    _remove(segment)

    def _run(self) -> None:
        backlog: list[Item] = []
        delay = 0.0  # seconds to wait before the next try, after a failed insert
        stop_by: float | None = None
        while True:
            # Journaled records are safe already: they are inserted every JOURNAL_LINGER_SECONDS, many per commit.
            # Callers waiting for a commit (no journal) and close() wake the writer at once.
            self._wake.wait(delay or JOURNAL_LINGER_SECONDS)
            self._wake.clear()
            with self._cond:
                items, self._items = self._items, []
                stopping = self._stopping
            backlog += items
            if stopping and stop_by is None:
                stop_by = time.monotonic() + CLOSE_SECONDS
            backlog = self._write_all(backlog)
            if not backlog:
                delay = 0.0
                if stopping:
                    return
                continue
            delay = min(max(2 * delay, JOURNAL_LINGER_SECONDS), RETRY_MAX_SECONDS)
            if stop_by is not None and time.monotonic() > stop_by:
                return  # the journal keeps what is left

    def _write_all(self, items: list[Item]) -> list[Item]:
        """Insert items in commits of about MAX_BATCH records; returns those left after a failure, to retry."""
        start = 0
        while start < len(items):
            end, rows = start, 0
            while end < len(items) and (end == start or rows + len(items[end][0]) <= MAX_BATCH):
                rows += len(items[end][0])
                end += 1
            error = self._write(items[start:end])
            if error is not None:
                # Callers waiting for a commit hear of the failure now; journaled records wait for the next try.
                failure = ScoreLogUnavailableError(f"the score log could not be written: {error}")
                for _, future in items[start:]:
                    if future is not None:
                        future.get_loop().call_soon_threadsafe(_settle, future, failure)
                return [item for item in items[start:] if item[1] is None]
            start = end
        return []

    def _write(self, batch: list[Item]) -> str | None:
        """Insert one commit's worth of items; the database's error when it failed (nothing of the batch is lost)."""
        rows = [row for rows, _ in batch for row in rows]
        try:
            rejected = store_rows(self.engine, rows, self._reject)
        except Exception as err:
            if self._write_error is None:
                log.exception("score log write failed for %d records; retrying until the database takes them",
                              len(rows))  # fmt: skip
            self._write_error = f"{type(err).__name__}: {err}"
            return self._write_error
        if self._write_error is not None:
            log.warning("score log writes succeed again")
            self._write_error = None
        journaled = sum(future is None for _, future in batch)
        if journaled:
            self._committed(journaled, rejected)
        for _, future in batch:
            if future is not None:
                future.get_loop().call_soon_threadsafe(_settle, future, None)
        return None

    def _reject(self, rows: list[dict[str, Any]], error: Exception) -> None:
        if self._journal_dir is None:
            raise error  # no journal to set them aside in: the waiting caller gets the error instead
        _set_aside(self._journal_dir, rows, error)

    def _committed(self, appends: int, rejected: int) -> None:
        """The oldest `appends` journaled appends are in the database (or set aside): count them off."""
        with self._cond:
            for _ in range(appends):
                segment, n, _ = self._unsaved.popleft()
                segment.unsaved -= n
                self._pending -= n
            self._rejected += rejected
            for segment in [s for s in self._full if s.unsaved == 0]:
                self._full.remove(segment)
                _remove(segment)
            if self._pending == 0:
                self._cond.notify_all()

    def read(self, *, request_id: str | None = None, lead_id: str | None = None) -> list[ScoreRecord]:
        """Records by request id or lead id, oldest first (journaled records are flushed first, briefly)."""
        if self._journal_dir is not None:
            self.flush(READ_FLUSH_SECONDS)
        query = select(score_log).order_by(score_log.c.id)
        if request_id is not None:
            query = query.where(score_log.c.request_id == request_id)
        if lead_id is not None:
            query = query.where(score_log.c.lead_id == lead_id)
        with self.engine.connect() as conn:
            return [_score_record(r) for r in conn.execute(query)]

    def read_since(self, since: dt.datetime, *, limit: int) -> list[ScoreRecord]:
        """The latest `limit` records scored at or after `since`, oldest first (what threshold tuning replays)."""
        if self._journal_dir is not None:
            self.flush(READ_FLUSH_SECONDS)
        return read_since(self.engine, since, limit=limit)


def read_since(engine: Engine, since: dt.datetime, *, limit: int) -> list[ScoreRecord]:
    """The latest `limit` stored records scored at or after `since`, oldest first (for readers of the store)."""
    query = select(score_log).where(score_log.c.scored_at >= since).order_by(score_log.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
    return [_score_record(r) for r in reversed(rows)]


def _open_segment(journal_dir: Path) -> _Segment:
    """A new journal file of this process, locked before it can be seen under a name that recovery replays."""
    name = f"journal-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
    staging = journal_dir / f".{name}.new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live: others must not replay it
        os.rename(staging, journal_dir / name)
    except BaseException:
        os.close(fd)
        staging.unlink(missing_ok=True)
        raise
    return _Segment(fd, journal_dir / name)


def _remove(segment: _Segment) -> None:
    """Delete a journal file whose records are all in the database, then let go of it."""
    segment.path.unlink(missing_ok=True)
    os.close(segment.fd)


def store_rows(
    engine: Engine, rows: list[dict[str, Any]], reject: Callable[[list[dict[str, Any]], Exception], None]
) -> int:
    """Insert rows in one transaction; rows the database refuses as data go to `reject`; returns how many did.

    A refused batch is split in halves until the refused rows stand alone, so the others still go in. Any other
    failure (the database is locked, unreachable, full) raises: nothing of the batch was stored.
    """
    try:
        with engine.begin() as conn:
            insert_rows(conn, rows)
    except _RECORD_ERRORS as err:
        if len(rows) == 1:
            reject(rows, err)
            return 1
        half = len(rows) // 2
        return store_rows(engine, rows[:half], reject) + store_rows(engine, rows[half:], reject)
    return 0


def _score_record(row: Any) -> ScoreRecord:
    """A score-log row as the record that was appended."""
    return ScoreRecord(
        request_id=row.request_id,
        lead_id=row.lead_id,
        scored_at=stored_time(row.scored_at),
        model_version=row.model_version,
        thresholds_version=row.thresholds_version,
        inputs=json.loads(row.inputs),
        outputs=json.loads(row.outputs),
    )


@contextlib.contextmanager
def _directory_lock(journal_dir: Path) -> Iterator[None]:
    """Hold the journal folder's lock file: one process at a time replays dead journals or creates its own."""
    fd = os.open(journal_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def recover_journals(engine: Engine, journal_dir: Path) -> int:
    """Replay journals of dead processes into the database (skipping records already there); returns how many.

    Call with the folder's lock held (ScoreLog does): a journal is listed, replayed and removed by one process.
    """
    for staging in journal_dir.glob(".journal-*.new"):
        _remove_if_unlocked(staging)  # a process died between creating its journal and naming it: nothing in it
    recovered = 0
    for path in sorted(journal_dir.glob(JOURNAL_GLOB)):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # removed since it was listed (by a process not honouring the lock): nothing left to replay
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive and owns it
            rows = []
            for line in path.read_bytes().split(b"\n"):
                try:
                    row = json.loads(line)
                    row["scored_at"] = dt.datetime.fromisoformat(row["scored_at"])
                except (ValueError, KeyError, TypeError):
                    continue  # an empty or torn line: that write never returned, so it was never acknowledged
                rows.append(row)
            recovered += _insert_missing(engine, rows, journal_dir)
            path.unlink()
        finally:
            os.close(fd)
    if recovered:
        log.warning("recovered %d score log records from journals of stopped processes", recovered)
    return recovered


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # still being created by a live process
    finally:
        os.close(fd)


def _insert_missing(engine: Engine, rows: list[dict[str, Any]], journal_dir: Path) -> int:
    if not rows:
        return 0
    ids = sorted({row["request_id"] for row in rows})
    present: set[tuple[str, str]] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = select(score_log.c.request_id, score_log.c.lead_id).where(
                score_log.c.request_id.in_(ids[start : start + 500])
            )
            present.update((r.request_id, r.lead_id) for r in conn.execute(query))
    missing = [row for row in rows if (row["request_id"], row["lead_id"]) not in present]

    def reject(refused: list[dict[str, Any]], error: Exception) -> None:
        _set_aside(journal_dir, refused, error)

    for start in range(0, len(missing), MAX_BATCH):
        store_rows(engine, missing[start : start + MAX_BATCH], reject)
    return len(missing)


def _set_aside(journal_dir: Path, rows: list[dict[str, Any]], error: Exception) -> None:
    """Keep records the database refuses as data beside the journals, whole, for an operator to look at."""
    path = journal_dir / REJECTED_FILE
    with path.open("ab") as out:
        out.write(b"".join(_JOURNAL_ENCODER.encode(row) + b"\n" for row in rows))
        out.flush()
        os.fsync(out.fileno())
    ids = ", ".join(sorted({str(row.get("request_id")) for row in rows})[:5])
    log.error("the database refused %d score log records as data (%s); kept in %s (request ids %s)", len(rows),
              error, path, ids)  # fmt: skip


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
