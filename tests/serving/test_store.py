"""The score log (group-commit writer) and the versioned policy store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from serving.policy import GradeCutoffs, RoutingPolicy, StageCutoffs
from serving.score_log import ScoreLog, record_row
from serving.store import (
    PolicyStore,
    PolicyVersion,
    ScoreRecord,
    make_engine,
    score_log,
    threshold_versions,
)
from tests.stores import store_url_fixture  # noqa: F401 (pytest finds the fixture store_url in it)

SCORED_AT = dt.datetime(2025, 6, 3, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> Iterator[ScoreLog]:
    log = ScoreLog(engine)
    yield log
    log.close()


def record(request_id: str, lead_id: str = "L-1", **outputs: object) -> ScoreRecord:
    return ScoreRecord(
        request_id=request_id,
        lead_id=lead_id,
        scored_at=SCORED_AT,
        model_version="7",
        thresholds_version=3,
        inputs={"lead": {"lead_id": lead_id, "industry": "Software"}, "activities": []},
        outputs={"fit": {"score": 91.5, "grade": "A"}, **outputs},
    )


def policy(a: float = 80.0) -> RoutingPolicy:
    return RoutingPolicy(grades=GradeCutoffs(A=a, B=50, C=20), stages=StageCutoffs(MQL=0.2, SQL=0.5))


# ---- score log --------------------------------------------------------------------------------------------------


def test_appended_records_read_back_unchanged(log: ScoreLog) -> None:
    written = [record("req-1", "L-1"), record("req-1", "L-2", note="second lead of the batch")]
    asyncio.run(log.append(written))
    assert log.read(request_id="req-1") == written
    assert log.read(lead_id="L-2") == written[1:]
    assert log.read(request_id="nobody") == []


def test_read_by_lead_is_oldest_first(log: ScoreLog) -> None:
    for i in range(3):
        asyncio.run(log.append([record(f"req-{i}", "L-9")]))
    assert [r.request_id for r in log.read(lead_id="L-9")] == ["req-0", "req-1", "req-2"]


def test_concurrent_appends_all_land_exactly_once(log: ScoreLog) -> None:
    """Appends from several event loops at once share commits; none is lost or written twice."""
    threads, per_thread = 4, 60

    async def append_many(thread: int) -> None:
        await asyncio.gather(
            *(log.append([record(f"t{thread}-r{i}", f"L-{j}") for j in range(1 + i % 3)]) for i in range(per_thread))
        )

    workers = [threading.Thread(target=asyncio.run, args=(append_many(t),)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rows = log.read()
    counts = Counter(r.request_id for r in rows)
    expected = {f"t{t}-r{i}": 1 + i % 3 for t in range(threads) for i in range(per_thread)}
    assert counts == expected
    assert len({(r.request_id, r.lead_id) for r in rows}) == len(rows)


def test_a_failed_write_raises_instead_of_acknowledging(log: ScoreLog, engine: Engine) -> None:
    score_log.drop(engine)
    with pytest.raises(Exception, match="score_log"):
        asyncio.run(log.append([record("lost")]))
    score_log.create(engine)
    asyncio.run(log.append([record("kept")]))  # the writer survives a failed commit
    assert [r.request_id for r in log.read()] == ["kept"]


def test_records_survive_closing_the_log(engine: Engine) -> None:
    log = ScoreLog(engine)
    asyncio.run(log.append([record("before-close")]))
    log.close()
    assert [r.request_id for r in log.read()] == ["before-close"]


# ---- policy store -----------------------------------------------------------------------------------------------


def test_versions_increase_and_history_is_newest_first(engine: Engine) -> None:
    store = PolicyStore(engine)
    assert store.latest() is None and store.history() == []
    first = store.save(policy(80), author="ops@example.com", reason="initial")
    second = store.save(policy(85), author="ops@example.com", reason="fewer A leads")
    assert (first.version, second.version) == (1, 2)
    assert [v.version for v in store.history()] == [2, 1]
    latest = store.latest()
    assert latest is not None and latest.version == 2 and latest.policy == policy(85)
    assert latest.reason == "fewer A leads" and latest.author == "ops@example.com"
    assert latest.created_at.tzinfo is not None
    stored_first = store.get(1)
    assert stored_first is not None and stored_first.policy == policy(80)
    assert store.get(3) is None


def test_concurrent_saves_from_threads_lose_no_version(store_url: str) -> None:
    """8 workers x 5 saves on one store: versions 1..40 exactly, each save stored once under its number."""
    make_engine(store_url).dispose()
    threads, saves = 8, 5
    start = threading.Barrier(threads)
    returned: list[PolicyVersion] = []
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        engine = make_engine(store_url)  # each worker its own engine, as separate service processes have
        store = PolicyStore(engine)
        start.wait()
        try:
            for i in range(saves):
                returned.append(store.save(policy(60 + thread + i / 10), author=f"worker-{thread}", reason=f"{i}"))
        except BaseException as err:  # reported below, with the versions that did land
            errors.append(err)
        finally:
            engine.dispose()

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    engine = make_engine(store_url)
    history = PolicyStore(engine).history()
    engine.dispose()
    assert errors == []
    assert [v.version for v in history] == list(range(threads * saves, 0, -1))
    assert sorted(v.version for v in returned) == list(range(1, threads * saves + 1))
    stored = {v.version: (v.author, v.reason, v.policy) for v in history}
    for saved in returned:
        assert stored[saved.version] == (saved.author, saved.reason, saved.policy)


def test_a_version_stored_before_lifecycle_routes_loads_with_the_default_ones(engine: Engine) -> None:
    store = PolicyStore(engine)
    # As stored before lifecycle routes and the owner and customer queues: neither the routes nor their SLA entries.
    old = json.loads(policy(80).model_dump_json())
    del old["lifecycle_routes"]
    old["sla_hours"] = {"sales": 4.0, "sdr": 24.0, "nurture": None, "disqualify": None}
    with engine.begin() as conn:
        conn.execute(threshold_versions.insert(), [{"version": 1, "created_at": SCORED_AT, "author": "ops",
                                                    "reason": "old", "policy": json.dumps(old)}])  # fmt: skip
    loaded = store.get(1)
    assert loaded is not None and loaded.policy == policy(80)
    assert loaded.policy.lifecycle_route("won") is not None
    assert store.save(loaded.policy, author="ops", reason="edit").version == 2


def test_ensure_default_stores_only_once(engine: Engine) -> None:
    store = PolicyStore(engine)
    first = store.ensure_default(policy(80))
    again = store.ensure_default(policy(90))
    assert first.version == again.version == 1
    assert again.policy == policy(80)
    store.save(policy(85), author="ops", reason="tuned")
    latest = store.ensure_default(policy(80))
    assert latest.version == 2 and latest.policy == policy(85)
    assert [v.version for v in store.history()] == [2, 1]


def test_ensure_default_from_workers_starting_together_stores_once(store_url: str) -> None:
    """Several service processes starting on an empty store all get version 1; no duplicate default is stored."""
    make_engine(store_url).dispose()
    workers = 6
    start = threading.Barrier(workers)
    versions: list[int] = []

    def worker() -> None:
        engine = make_engine(store_url)
        store = PolicyStore(engine)
        start.wait()
        versions.append(store.ensure_default(policy(80)).version)
        engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine = make_engine(store_url)
    history = PolicyStore(engine).history()
    engine.dispose()
    assert [v.version for v in history] == [1]
    assert versions == [1] * workers


# ---- journaled score log ------------------------------------------------------------------------------------------


def test_journaled_appends_reach_the_database_and_the_journal_goes_away_on_close(
    engine: Engine, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    log = ScoreLog(engine, journal)
    asyncio.run(log.append([record("a"), record("b", "L-2")]))
    assert [(r.request_id, r.lead_id) for r in log.read()] == [("a", "L-1"), ("b", "L-2")]
    log.close()
    assert list(journal.glob("*journal-*")) == []  # no journal file left (the folder's lock file stays)


def test_a_dead_processs_journal_is_replayed_once_and_a_torn_line_ignored(engine: Engine, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    committed = ScoreLog(engine)
    asyncio.run(committed.append([record("already-in-db")]))
    committed.close()
    # What a killed worker leaves: acknowledged lines (one of them already inserted) and a half-written last line.
    lines = [json.dumps(record_row(record(r)), default=str) for r in ("already-in-db", "only-in-journal")]
    (journal / "journal-4242-deadbeef.jsonl").write_text("\n".join(lines) + '\n{"request_id": "torn')
    log = ScoreLog(engine, journal)
    try:
        assert log.recovered == 1
        assert Counter(r.request_id for r in log.read()) == {"already-in-db": 1, "only-in-journal": 1}
        assert not (journal / "journal-4242-deadbeef.jsonl").exists()
    finally:
        log.close()


def test_a_live_processs_journal_is_left_alone(engine: Engine, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    alive = ScoreLog(engine, journal)
    try:
        other = ScoreLog(engine, journal)  # a second worker starting beside a running one
        assert other.recovered == 0
        other.close()
        assert len(list(journal.glob("journal-*.jsonl"))) == 1  # the running worker's journal is still there
    finally:
        alive.close()


def test_many_records_in_one_append_land_in_order_with_their_times(engine: Engine, tmp_path: Path) -> None:
    # More records than one SQLite statement carries: they are split, and every one reads back as appended.
    log = ScoreLog(engine, tmp_path / "journal")
    try:
        written = [
            ScoreRecord(f"batch-{i // 250}", f"L-{i}", SCORED_AT + dt.timedelta(microseconds=37 * i), "7", 3,
                        f'{{"lead": {{"lead_id": "L-{i}"}}}}', {"fit": {"score": i}})
            for i in range(700)
        ]  # fmt: skip
        asyncio.run(log.append(written[:300]))
        asyncio.run(log.append(written[300:]))
        back = log.read()
        assert [r.lead_id for r in back] == [r.lead_id for r in written]
        assert [r.scored_at for r in back] == [r.scored_at for r in written]
        assert back[699].inputs == {"lead": {"lead_id": "L-699"}} and back[699].outputs == {"fit": {"score": 699}}
    finally:
        log.close()
