"""The score log under the faults production brings: a locked database, a full disk, workers recovering together."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from serving.score_log import (
    JOURNAL_GLOB,
    READ_FLUSH_SECONDS,
    REJECTED_FILE,
    ScoreLog,
    ScoreLogUnavailableError,
    record_row,
)
from serving.store import ScoreRecord, make_engine, score_log
from tests.postgres import Link, fresh_database
from tests.stores import store_url_fixture  # noqa: F401 (pytest finds the fixture store_url in it)

SCORED_AT = dt.datetime(2025, 6, 3, 9, 0, tzinfo=dt.UTC)
# A lock held longer than a statement waits for it: every insert meanwhile fails with "database is locked".
BUSY_SECONDS = 0.2


def record(request_id: str, lead_id: str = "L-1") -> ScoreRecord:
    return ScoreRecord(request_id, lead_id, SCORED_AT, "7", 3, {"lead": {"lead_id": lead_id}}, {"fit": {"score": 1}})


def stored(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(r.request_id for r in conn.execute(select(score_log.c.request_id)))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "svc.db"


@pytest.fixture
def engine(db: Path) -> Iterator[Engine]:
    """A SQLite file's engine, for the faults of a database file: another connection's lock, a full disk."""
    engine = make_engine(f"sqlite:///{db}", busy_seconds=BUSY_SECONDS)
    yield engine
    engine.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    """An engine on each kind of store, for faults that do not depend on the database."""
    engine = make_engine(store_url, busy_seconds=BUSY_SECONDS)
    yield engine
    engine.dispose()


class Locked:
    """Another connection holding the store's write lock, as a long migration or a backup tool would."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def test_records_acknowledged_while_the_database_is_locked_all_arrive_once_it_is_free(
    engine: Engine, db: Path, tmp_path: Path
) -> None:
    log = ScoreLog(engine, tmp_path / "journal")
    lock = Locked(db)
    try:
        for i in range(60):
            asyncio.run(log.append([record(f"r-{i}")]))  # acknowledged: journaled, though the database is locked
        time.sleep(1.0)  # the writer fails and retries meanwhile
        status = log.status()
        assert status.pending == 60 and "locked" in (status.last_write_error or "")
        assert status.oldest_pending_seconds is not None and status.oldest_pending_seconds >= 0.9
        # A reader (threshold tuning's replay) waits briefly for the backlog, then reads what is there.
        started = time.monotonic()
        log.read_since(SCORED_AT, limit=10)
        assert time.monotonic() - started < READ_FLUSH_SECONDS + 2
    finally:
        lock.release()
    try:
        assert log.flush(timeout=15), "the backlog never reached the database"
        assert stored(engine) == {f"r-{i}": 1 for i in range(60)}
        status = log.status()
        assert (status.pending, status.oldest_pending_seconds, status.last_write_error) == (0, None, None)
    finally:
        log.close()
    assert list((tmp_path / "journal").glob(JOURNAL_GLOB)) == []  # all in the database: the journal is gone


def test_a_full_journal_file_is_replaced_and_removed_once_its_records_are_stored(
    store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.score_log.JOURNAL_ROTATE_BYTES", 2_000)
    journal = tmp_path / "journal"
    log = ScoreLog(store, journal)
    try:
        for i in range(40):
            asyncio.run(log.append([record(f"r-{i}")]))
        assert log.flush(timeout=15)
        files = list(journal.glob(JOURNAL_GLOB))
        assert len(files) == 1 and files[0].stat().st_size <= 2_500  # earlier files went once stored
        assert stored(store) == {f"r-{i}": 1 for i in range(40)}
    finally:
        log.close()


def test_a_record_the_database_refuses_is_set_aside_and_the_others_are_stored(store: Engine, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    log = ScoreLog(store, journal)
    try:
        good = [record(f"good-{i}") for i in range(5)]
        # thresholds_version is an integer column: a value no database can hold in it stands for any refused row.
        bad = ScoreRecord("bad", "L-9", SCORED_AT, "7", 2**70, {"lead": {}}, {"fit": {}})
        asyncio.run(log.append([good[0], good[1], bad, good[2]]))
        asyncio.run(log.append(good[3:]))
        assert log.flush(timeout=15)
        assert stored(store) == {f"good-{i}": 1 for i in range(5)}
        [kept] = (journal / REJECTED_FILE).read_text().splitlines()
        assert json.loads(kept)["request_id"] == "bad"
        assert log.status().rejected == 1
    finally:
        log.close()


def _dead_journal(journal: Path, name: str, ids: range) -> list[str]:
    """What a killed worker leaves: its acknowledged records, one per line."""
    lines = [json.dumps(record_row(record(f"{name}-{i}", f"L-{i % 97}")), default=str) for i in ids]
    (journal / f"journal-{name}.jsonl").write_text("\n".join(lines) + "\n")
    return [f"{name}-{i}" for i in ids]


STARTS_TOGETHER = """
import os, sys, time
from pathlib import Path
from serving.score_log import ScoreLog
from serving.store import make_engine
engine = make_engine(sys.argv[1])
barrier, workers = Path(sys.argv[3]), int(sys.argv[4])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < workers:  # all processes begin their recovery at the same moment
    time.sleep(0.001)
log = ScoreLog(engine, Path(sys.argv[2]))
log.close()
print(log.recovered)
"""
STARTING_TOGETHER = 3


def test_workers_starting_together_replay_each_dead_journal_exactly_once(
    engine: Engine, db: Path, tmp_path: Path
) -> None:
    # On SQLite only: what is at stake is the journal folder's lock between processes; replaying a journal into
    # PostgreSQL, skipping what is there, is test_store's dead-journal test, at a fraction of this one's time.
    journal = tmp_path / "journal"
    journal.mkdir()
    expected: list[str] = []
    for name in ("w1", "w2", "w3"):  # three workers died, each leaving a journal
        expected += _dead_journal(journal, name, range(4000))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = [sys.executable, "-c", STARTS_TOGETHER, f"sqlite:///{db}", str(journal), str(barrier)]
    workers = [
        subprocess.Popen([*command, str(STARTING_TOGETHER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(STARTING_TOGETHER)
    ]
    outcomes = [(w.wait(timeout=180), *w.communicate()) for w in workers]
    assert [code for code, _, _ in outcomes] == [0] * STARTING_TOGETHER, [err[-2000:] for _, _, err in outcomes]
    assert sum(int(out) for _, out, _ in outcomes) == len(expected)  # each record replayed by one worker
    assert stored(engine) == dict.fromkeys(expected, 1)
    assert list(journal.glob(JOURNAL_GLOB)) == []


# ---- a full disk: the journal on a real, tiny file system ---------------------------------------------------------

FULL_DISK = """
import asyncio, datetime as dt, json, os, sqlite3, sys
from pathlib import Path
from serving.score_log import ScoreLog, ScoreLogUnavailableError
from serving.store import ScoreRecord, make_engine

db, journal = sys.argv[1], Path(sys.argv[2])
engine = make_engine(f"sqlite:///{db}", busy_seconds=0.05)
filler = journal / "filler"
filler.write_bytes(b"x" * (int(sys.argv[3])))  # the disk is nearly full
lock = sqlite3.connect(db, isolation_level=None)
lock.execute("BEGIN EXCLUSIVE")  # the database takes nothing meanwhile: acknowledged records live in the journal only
log = ScoreLog(engine, journal)
acknowledged, refused = [], []
at = dt.datetime(2025, 6, 3, tzinfo=dt.UTC)
for i in range(400):
    r = ScoreRecord(f"r-{i}", "L-1", at, "7", 3, json.dumps({"pad": "p" * 900}), {"fit": {"score": 1}})
    try:
        asyncio.run(log.append([r]))
        acknowledged.append(r.request_id)
    except ScoreLogUnavailableError:
        refused.append(r.request_id)
    if len(refused) == 3:
        break
full = log.status()
filler.unlink()  # space comes back
after = log.status()  # probes the journal: writable again
r = ScoreRecord("after", "L-1", at, "7", 3, {"lead": {}}, {"fit": {}})
asyncio.run(log.append([r]))
acknowledged.append("after")
print(json.dumps({"acknowledged": acknowledged, "refused": refused, "full": full.journal_error,
                  "after": after.journal_error}))
sys.stdout.flush()
os._exit(0)  # killed: nothing reached the database, the journal stays
"""
RECOVER = """
import sys
from pathlib import Path
from serving.score_log import ScoreLog
from serving.store import make_engine
log = ScoreLog(make_engine(f"sqlite:///{sys.argv[1]}"), Path(sys.argv[2]))
log.close()
"""


def _private_tmpfs(script: str) -> list[str]:
    """`sh -c script` with a 64 kB tmpfs mounted at $1, in user and mount namespaces of its own (no root needed)."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed to give the journal a small file system of its own")
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]


def test_a_full_disk_refuses_scores_without_acknowledging_a_torn_one_and_recovers(
    engine: Engine, db: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    for name, text in (("full_disk.py", FULL_DISK), ("recover.py", RECOVER)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    # Both steps in one mount namespace, so the second finds the journal the first left on the tiny disk.
    script = (
        'mount -t tmpfs -o size=64k tmpfs "$1" && '
        f'"{sys.executable}" {tmp_path / "full_disk.py"} {db} "$1" 40000 && '
        f'"{sys.executable}" {tmp_path / "recover.py"} {db} "$1"'
    )
    done = subprocess.run(
        [*_private_tmpfs(script), str(journal)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "No space left on device" in outcome["full"] and outcome["after"] is None
    assert len(outcome["refused"]) == 3 and len(outcome["acknowledged"]) > 10
    # Every acknowledged score is in the database once, replayed from the journal; no refused one is.
    assert stored(engine) == dict.fromkeys(outcome["acknowledged"], 1)


def test_without_a_journal_a_failed_commit_is_an_error_for_the_caller(engine: Engine, db: Path) -> None:
    log = ScoreLog(engine)  # no journal: each append waits for its commit
    lock = Locked(db)
    try:
        with pytest.raises(ScoreLogUnavailableError, match="locked"):
            asyncio.run(log.append([record("refused")]))
    finally:
        lock.release()
    try:
        asyncio.run(log.append([record("kept")]))
        assert stored(engine) == {"kept": 1}
    finally:
        log.close()


def test_records_acknowledged_while_postgresql_is_unreachable_all_arrive_once_it_is_back(tmp_path: Path) -> None:
    link = Link()
    try:
        with fresh_database() as name:
            engine = make_engine(link.url(name))
            log = ScoreLog(engine, tmp_path / "journal")
            try:
                asyncio.run(log.append([record("before")]))
                assert log.flush(timeout=15)
                link.cut()  # the database's host goes away: open connections break, new ones are refused
                for i in range(40):
                    asyncio.run(log.append([record(f"during-{i}")]))  # acknowledged: journaled
                time.sleep(1.5)
                status = log.status()
                assert status.pending == 40 and status.last_write_error is not None
                link.restore()
                assert log.flush(timeout=30), "the backlog never reached the database"
                assert stored(engine) == {"before": 1, **{f"during-{i}": 1 for i in range(40)}}
                assert log.status().last_write_error is None
            finally:
                log.close()
                engine.dispose()
    finally:
        link.cut()


def test_a_record_postgresql_cannot_store_is_set_aside_and_the_others_are_stored(tmp_path: Path) -> None:
    with fresh_database() as name:
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        journal = tmp_path / "journal"
        log = ScoreLog(engine, journal)
        try:
            # A NUL in a text column: PostgreSQL refuses it (the API refuses it in ids; the log must not block on it).
            bad = ScoreRecord("bad", "L-\x00", SCORED_AT, "7", 3, {"lead": {}}, {"fit": {}})
            asyncio.run(log.append([record("good-1"), bad, record("good-2")]))
            assert log.flush(timeout=15)
            assert stored(engine) == {"good-1": 1, "good-2": 1}
            assert json.loads((journal / REJECTED_FILE).read_text())["request_id"] == "bad"
        finally:
            log.close()
            engine.dispose()
