"""Score-log retention: records older than the retention period are archived to Parquet, then deleted, exactly once.

A batch of old records is written to a staging file (fsynced), then deleted from the score log in the same
transaction that records the file in `score_log_archives`, then the file takes its final name. A crash before the
commit leaves the records in the table (the staging file is dropped at the next run); a crash after it leaves a
staging file whose name the table holds (the next run gives it its final name). So every record is either in the
table or in exactly one archive file, whatever stops the process, and pruners running at once (several workers, or
a cron job beside the service) never archive a record twice: the second one's delete finds the rows gone, and its
transaction is rolled back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, insert, select

from serving.store import score_log, score_log_archives, stored_time

log = logging.getLogger(__name__)

# Records per archive file and per delete: a transaction short enough not to hold back the score log's writer.
BATCH_RECORDS = 10_000
LOCK_FILE = ".prune.lock"
STAGING_SUFFIX = ".staging"
_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("request_id", pa.string()),
        ("lead_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("thresholds_version", pa.int64()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
    ]
)


@dataclass
class PruneResult:
    """What one run of the retention did."""

    archived: int = 0  # records written to archive files (and deleted)
    deleted: int = 0  # records deleted
    files: list[Path] = field(default_factory=list)
    skipped: bool = False  # another pruner on this machine was at work


def prune_score_log(
    engine: Engine, *, older_than: dt.datetime, archive_dir: Path | None, batch: int = BATCH_RECORDS
) -> PruneResult:
    """Archive (unless `archive_dir` is None) and delete the records scored before `older_than`."""
    result = PruneResult()
    if archive_dir is not None:
        archive_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(archive_dir) as alone:
        if not alone:
            result.skipped = True
            return result
        if archive_dir is not None:
            _finish_staged(engine, archive_dir)
        while _prune_batch(engine, older_than, archive_dir, batch, result):
            pass
    if result.deleted:
        log.info("score log retention: %d records before %s deleted, %d archived in %d file(s)", result.deleted,
                 older_than.isoformat(), result.archived, len(result.files))  # fmt: skip
    return result


def _prune_batch(
    engine: Engine, older_than: dt.datetime, archive_dir: Path | None, batch: int, result: PruneResult
) -> bool:
    """Archive and delete one batch; False when nothing was left to do (or another pruner took it)."""
    query = select(score_log).where(score_log.c.scored_at < older_than).order_by(score_log.c.id).limit(batch)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
    if not rows:
        return False
    first, last = int(rows[0].id), int(rows[-1].id)
    name = f"score_log-{first:012d}-{last:012d}.parquet"
    staged = None
    if archive_dir is not None:
        staged = archive_dir / f".{name}.{uuid.uuid4().hex[:8]}{STAGING_SUFFIX}"
        _write_parquet(rows, staged)
    try:
        with engine.begin() as conn:
            # The rows selected are exactly those old enough in [first, last]: ids only grow, so none can appear
            # there since. Fewer deleted means another pruner took them: this batch is rolled back.
            gone = conn.execute(
                delete(score_log).where(
                    score_log.c.id >= first, score_log.c.id <= last, score_log.c.scored_at < older_than
                )
            ).rowcount
            if gone != len(rows):
                raise _TakenError
            if staged is not None and archive_dir is not None:
                stamps = [stored_time(r.scored_at) for r in rows]
                conn.execute(
                    insert(score_log_archives).values(
                        file=name, host=socket.gethostname(), folder=str(archive_dir.resolve()), first_id=first,
                        last_id=last, records=len(rows), oldest=min(stamps), newest=max(stamps),
                        archived_at=dt.datetime.now(dt.UTC),
                    )
                )  # fmt: skip
    except _TakenError:
        if staged is not None:
            staged.unlink(missing_ok=True)
        return False
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    result.deleted += len(rows)
    if staged is not None and archive_dir is not None:
        final = archive_dir / name
        os.replace(staged, final)
        _sync_folder(archive_dir)
        result.archived += len(rows)
        result.files.append(final)
    return True


class _TakenError(Exception):
    """Another pruner deleted some of this batch's records first."""


def _write_parquet(rows: Sequence[Any], path: Path) -> None:
    columns = {name: [getattr(row, name) for row in rows] for name in _SCHEMA.names}
    columns["scored_at"] = [stored_time(value) for value in columns["scored_at"]]
    table = pa.Table.from_pydict(columns, schema=_SCHEMA)
    with path.open("wb") as out:
        pq.write_table(table, out, compression="zstd")
        out.flush()
        os.fsync(out.fileno())  # on disk before the records leave the table


def _finish_staged(engine: Engine, archive_dir: Path) -> None:
    """Name the staged files whose records left the table (a crash came between commit and rename); drop the rest."""
    staged = sorted(archive_dir.glob(f".score_log-*{STAGING_SUFFIX}"))
    if not staged:
        return
    with engine.connect() as conn:
        recorded = set(conn.execute(select(score_log_archives.c.file)).scalars())
    for path in staged:
        name = path.name[1:].rsplit(".", 2)[0]  # ".score_log-...parquet.<tag>.staging" -> "score_log-...parquet"
        final = archive_dir / name
        if name in recorded and not final.exists():
            os.replace(path, final)
            log.warning("score log retention: finished archiving %s (interrupted after its records were deleted)",
                        final)  # fmt: skip
        else:
            path.unlink()
    _sync_folder(archive_dir)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(archive_dir: Path | None) -> Iterator[bool]:
    """Whether this process may prune now: workers of one machine take turns (the database guards the rest)."""
    if archive_dir is None:
        yield True
        return
    fd = os.open(archive_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def read_archive(path: Path) -> list[dict[str, object]]:
    """The records of an archive file, as rows (for audits and for tests)."""
    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows
