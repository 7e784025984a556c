"""Score-log retention: old records archived to Parquet and deleted, each exactly once, whatever stops the pruner."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from serving.retention import prune_score_log, read_archive
from serving.score_log import ScoreLog
from serving.store import ScoreRecord, make_engine, score_log, score_log_archives
from tests.stores import store_url_fixture  # noqa: F401 (pytest finds the fixture store_url in it)
from timeline.engine import stored_time

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def fill(engine: Engine, ages_in_days: list[float]) -> None:
    """One record per age, scored that long before NOW (request ids say the age)."""
    log = ScoreLog(engine)
    records = [
        ScoreRecord(
            f"r-{i}-{age}d",
            f"L-{i}",
            NOW - dt.timedelta(days=age),
            "3",
            2,
            {"lead": {"lead_id": f"L-{i}"}, "pad": "é" * 50},
            {"fit": {"score": i}},
        )
        for i, age in enumerate(ages_in_days)
    ]
    asyncio.run(log.append(records))
    log.close()


def stored_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r.request_id for r in conn.execute(select(score_log.c.request_id).order_by(score_log.c.id))]


def archived(folder: Path) -> list[dict[str, object]]:
    return [row for path in sorted(folder.glob("score_log-*.parquet")) for row in read_archive(path)]


def test_records_past_the_retention_are_archived_whole_then_deleted(engine: Engine, tmp_path: Path) -> None:
    ages = [400, 380, 366, 364, 10, 0.5, 390]
    fill(engine, ages)
    with engine.connect() as conn:
        before = {r.request_id: r for r in conn.execute(select(score_log))}
    result = prune_score_log(engine, older_than=NOW - dt.timedelta(days=365), archive_dir=tmp_path / "archive", batch=2)
    old = [f"r-{i}-{age}d" for i, age in enumerate(ages) if age > 365]
    assert (result.deleted, result.archived, len(result.files)) == (4, 4, 2)  # batches of 2
    assert stored_ids(engine) == [f"r-{i}-{age}d" for i, age in enumerate(ages) if age <= 365]
    rows = archived(tmp_path / "archive")
    assert sorted(str(r["request_id"]) for r in rows) == sorted(old)
    for row in rows:  # every column as it was in the table
        original = before[str(row["request_id"])]
        assert (row["id"], row["lead_id"], row["inputs"], row["outputs"]) == (
            original.id, original.lead_id, original.inputs, original.outputs,
        )  # fmt: skip
        assert row["scored_at"] == stored_time(original.scored_at)
    with engine.connect() as conn:
        recorded = list(conn.execute(select(score_log_archives).order_by(score_log_archives.c.id)))
    assert [r.file for r in recorded] == [p.name for p in result.files]
    assert {(r.host, r.folder) for r in recorded} == {(socket.gethostname(), str((tmp_path / "archive").resolve()))}
    assert sum(r.records for r in recorded) == 4
    again = prune_score_log(engine, older_than=NOW - dt.timedelta(days=365), archive_dir=tmp_path / "archive")
    assert again.deleted == 0 and len(archived(tmp_path / "archive")) == 4


def test_without_an_archive_folder_old_records_are_only_deleted(engine: Engine) -> None:
    fill(engine, [40, 20, 5])
    result = prune_score_log(engine, older_than=NOW - dt.timedelta(days=30), archive_dir=None)
    assert (result.deleted, result.archived, result.files) == (1, 0, [])
    assert len(stored_ids(engine)) == 2


class _Stopped(BaseException):
    """The process died here."""


def test_a_pruner_stopped_after_deleting_but_before_naming_its_file_is_finished_by_the_next(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine, [100, 90, 80, 1])
    folder = tmp_path / "archive"

    def die(*_: object) -> None:
        raise _Stopped

    with monkeypatch.context() as patched:
        patched.setattr("serving.retention.os.replace", die)  # the process is killed right after its commit
        with pytest.raises(_Stopped):
            prune_score_log(engine, older_than=NOW - dt.timedelta(days=30), archive_dir=folder, batch=10)
    assert stored_ids(engine) == ["r-3-1d"]  # the records left the table ...
    assert archived(folder) == []  # ... and their file is still staged
    result = prune_score_log(engine, older_than=NOW - dt.timedelta(days=30), archive_dir=folder)
    assert result.deleted == 0
    assert sorted(str(r["request_id"]) for r in archived(folder)) == ["r-0-100d", "r-1-90d", "r-2-80d"]
    assert list(folder.glob(".*staging")) == []


def test_a_pruner_stopped_before_its_commit_leaves_everything_in_the_table(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine, [100, 90, 1])
    folder = tmp_path / "archive"

    def die(*_: object, **__: object) -> None:
        raise _Stopped

    with monkeypatch.context() as patched:
        patched.setattr("serving.retention.insert", die)  # killed between writing its file and its commit
        with pytest.raises(_Stopped):
            prune_score_log(engine, older_than=NOW - dt.timedelta(days=30), archive_dir=folder)
    assert len(stored_ids(engine)) == 3 and archived(folder) == []
    result = prune_score_log(engine, older_than=NOW - dt.timedelta(days=30), archive_dir=folder)
    assert result.archived == 2 and len(archived(folder)) == 2 and list(folder.glob(".*staging")) == []


PRUNER = """
import datetime as dt, sys
from pathlib import Path
from serving.retention import prune_score_log
from serving.store import make_engine
result = prune_score_log(make_engine(sys.argv[1]), older_than=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
                         archive_dir=Path(sys.argv[2]), batch=7)
print(result.archived)
"""


def test_pruners_on_two_machines_at_once_archive_each_record_once(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    fill(engine, [40.0 + i / 10 for i in range(300)] + [1.0] * 5)
    pruners = [
        subprocess.Popen(
            [sys.executable, "-c", PRUNER, store_url, str(tmp_path / f"machine-{m}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in (1, 2)
    ]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in pruners]
    assert [code for code, _, _ in outcomes] == [0, 0], [err[-2000:] for _, _, err in outcomes]
    rows = archived(tmp_path / "machine-1") + archived(tmp_path / "machine-2")
    assert sum(int(out) for _, out, _ in outcomes) == len(rows) == 300
    assert len({r["request_id"] for r in rows}) == 300  # none twice
    assert len(stored_ids(engine)) == 5
