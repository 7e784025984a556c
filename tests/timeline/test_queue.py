"""The rescore queue on SQLite and PostgreSQL: claims and leases, changes while scoring, failures, the sweep."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select

from tests.postgres import fresh_database
from timeline.engine import make_engine, stored_time
from timeline.queue import (
    RETRY_MAX_SECONDS,
    backlog,
    claim,
    complete,
    enqueue,
    fail,
    oldest_due,
    release,
    retry_delay,
    sweep,
)
from timeline.schema import leads, rescore_queue
from timeline.scores import ScoreState, record_scores

LEASE = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A new, empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        yield engine
        engine.dispose()
        return
    with fresh_database() as name:
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        try:
            yield engine
        finally:
            engine.dispose()


def queued(engine: Engine) -> dict[str, dict[str, object]]:
    """The queue's rows by lead."""
    with engine.connect() as conn:
        return {row.lead_id: row._asdict() for row in conn.execute(select(rescore_queue))}


def soon() -> dt.datetime:
    """A moment just after everything enqueued so far became due (enqueue stamps the wall clock)."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


def test_a_claim_takes_due_free_rows_and_a_second_claimer_finds_them_held(engine: Engine) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with engine.begin() as conn:
        enqueue(conn, ["a", "b"], "touch")
        enqueue(conn, ["c"], "profile", due_at=later)
    now = soon()
    taken = claim(engine, "w1", 10, LEASE, now)
    assert sorted(c.lead_id for c in taken) == ["a", "b"]  # c is not due yet
    assert {(c.generation, c.cause, c.attempts, c.claimed_by) for c in taken} == {(1, "touch", 0, "w1")}
    assert claim(engine, "w2", 10, LEASE, now) == []
    rows = queued(engine)
    assert rows["a"]["claimed_by"] == "w1" and rows["c"]["claimed_by"] is None
    with engine.connect() as conn:
        assert backlog(conn, now) == 2  # being rescored is still to do
        assert backlog(conn, later + dt.timedelta(seconds=1)) == 3


def test_a_claim_takes_at_most_limit_rows_earliest_due_first(engine: Engine) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with engine.begin() as conn:
        for i, lead_id in enumerate(["late", "early", "middle"]):
            enqueue(conn, [lead_id], "touch", due_at=start + dt.timedelta(minutes={0: 3, 1: 1, 2: 2}[i]))
    assert [c.lead_id for c in claim(engine, "w1", 2, LEASE, soon())] == ["early", "middle"]
    with engine.connect() as conn:
        assert oldest_due(conn, soon()) == start + dt.timedelta(minutes=1)


def test_complete_removes_the_rows_it_scored(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, ["a", "b"], "touch")
    taken = claim(engine, "w1", 10, LEASE, soon())
    with engine.begin() as conn:
        complete(conn, taken)
        assert backlog(conn, soon()) == 0
    assert queued(engine) == {}


def test_a_change_while_claimed_keeps_the_row_for_another_rescore(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, ["a", "b"], "touch")
    taken = claim(engine, "w1", 10, LEASE, soon())
    with engine.begin() as conn:
        enqueue(conn, ["a"], "lifecycle")  # arrives while w1 scores generation 1
    with engine.begin() as conn:
        complete(conn, taken)
    rows = queued(engine)
    assert list(rows) == ["a"]
    assert rows["a"]["claimed_by"] is None and rows["a"]["generation"] == 2
    [again] = claim(engine, "w2", 10, LEASE, soon())  # due at once: free, and its due time kept
    assert (again.lead_id, again.generation, again.cause) == ("a", 2, "lifecycle")
    with engine.begin() as conn:
        complete(conn, [again])
    assert queued(engine) == {}


def test_a_lease_that_ran_out_lets_another_worker_take_the_row(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, ["a"], "touch")
    now = soon()
    [first] = claim(engine, "w1", 10, LEASE, now)
    assert claim(engine, "w2", 10, LEASE, now + dt.timedelta(seconds=LEASE - 1)) == []
    [second] = claim(engine, "w2", 10, LEASE, now + dt.timedelta(seconds=LEASE + 1))
    assert (second.lead_id, second.claimed_by) == ("a", "w2")
    release(engine, [first])  # the first worker, late: the row is no longer its to give back
    assert queued(engine)["a"]["claimed_by"] == "w2"
    with engine.begin() as conn:
        complete(conn, [second])
    assert queued(engine) == {}


def test_release_gives_claimed_rows_back_unchanged(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, ["a"], "touch")
    taken = claim(engine, "w1", 10, LEASE, soon())
    release(engine, taken)
    [again] = claim(engine, "w2", 10, LEASE, soon())
    assert (again.lead_id, again.generation, again.attempts) == ("a", 1, 0)


def test_concurrent_claimers_never_take_the_same_lead(engine: Engine) -> None:
    lead_ids = [f"lead-{i:04d}" for i in range(400)]
    with engine.begin() as conn:
        enqueue(conn, lead_ids, "sweep")
    now = soon()
    taken: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            while batch := claim(engine, f"w{worker}", 7, LEASE, now):
                taken[worker] += [c.lead_id for c in batch]
                with engine.begin() as conn:
                    complete(conn, batch)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    claims = Counter(lead_id for worker in taken for lead_id in worker)
    assert [lead_id for lead_id, n in claims.items() if n > 1] == []
    assert sorted(claims) == lead_ids
    assert sum(1 for worker in taken if worker) > 1, "one thread took every lead: the test showed no concurrency"
    assert queued(engine) == {}


# Only PostgreSQL: on SQLite, writers take turns, so a second claim waits for the first transaction to end.
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_postgresql_claims_skip_rows_another_transaction_is_claiming(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, [f"lead-{i}" for i in range(10)], "touch")
    now = soon()
    with engine.connect() as first, engine.connect() as second, first.begin():
        held = claim(first, "w1", 4, LEASE, now)  # locked and marked, not yet committed
        with second.begin():
            second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # SKIP LOCKED never waits: this never fires
            others = claim(second, "w2", 100, LEASE, now)
    assert len(held) == 4 and len(others) == 6
    assert not {c.lead_id for c in held} & {c.lead_id for c in others}


def test_a_failure_backs_off_exponentially_and_never_drops_the_lead(engine: Engine) -> None:
    with engine.begin() as conn:
        enqueue(conn, ["a"], "touch")
    now = soon()
    [first] = claim(engine, "w1", 10, LEASE, now)
    fail(engine, [first], "the model refused it", now)
    row = queued(engine)["a"]
    assert row["attempts"] == 1 and row["claimed_by"] is None
    assert stored_time(row["due_at"]) == now + retry_delay(1)  # type: ignore[arg-type]
    assert claim(engine, "w1", 10, LEASE, now + retry_delay(1) - dt.timedelta(seconds=1)) == []
    then = now + retry_delay(1)
    [second] = claim(engine, "w1", 10, LEASE, then)
    assert second.attempts == 1
    fail(engine, [second], "again", then)
    assert stored_time(queued(engine)["a"]["due_at"]) == then + retry_delay(2)  # type: ignore[arg-type]
    assert retry_delay(2) == 2 * retry_delay(1)
    assert retry_delay(100) == dt.timedelta(seconds=RETRY_MAX_SECONDS)
    with engine.begin() as conn:  # a new change is rescored at once, however long the backoff
        enqueue(conn, ["a"], "touch")
    [third] = claim(engine, "w1", 10, LEASE, soon())
    assert (third.attempts, third.generation) == (2, 2)


def _add_lead(conn: Connection, lead_id: str, at: dt.datetime, **stamps: dt.datetime) -> None:
    conn.execute(leads.insert().values(lead_id=lead_id, created_at=at, updated_at=at, **stamps))


def _state(fit: float) -> ScoreState:
    return ScoreState(
        fit_score=fit, grade="B", readiness_probability=0.1, readiness_score=40.0, stage="nurture", queue="nurture",
        model_version="1", thresholds_version=1, response={"fit": {"score": fit}},
    )  # fmt: skip


def test_the_sweep_queues_open_leads_that_are_unscored_or_stale(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    created = now - 30 * day
    with engine.begin() as conn:
        _add_lead(conn, "unscored", created)
        _add_lead(conn, "stale", created, mql_at=created + day)
        _add_lead(conn, "fresh", created)
        _add_lead(conn, "sql", created, mql_at=created + day, sql_at=created + 2 * day)
        _add_lead(conn, "recycled", created, lost_at=created + day, recycled_at=created + 2 * day)
        _add_lead(conn, "requalified", created, lost_at=created + day, recycled_at=created + 2 * day,
                  requalified_at=created + 3 * day)  # fmt: skip
        _add_lead(conn, "won", created, sql_at=created + day, won_at=created + 2 * day)
        _add_lead(conn, "lost", created, mql_at=created + day, lost_at=created + 2 * day)
        _add_lead(conn, "wins-tomorrow", created, sql_at=created + day, won_at=now + day)
        _add_lead(conn, "queued", created)
        enqueue(conn, ["queued"], "touch")
        record_scores(conn, [("stale", _state(50), "touch"), ("won", _state(60), "touch")], now - 2 * day)
        record_scores(conn, [("fresh", _state(70), "touch")], now - dt.timedelta(hours=1))
    assert sweep(engine, now, day, page=2) == 6
    rows = queued(engine)
    swept = {lead_id for lead_id, row in rows.items() if row["cause"] == "sweep"}
    # Open: not won, and not lost unless recycled since (an SQL is open; a win tomorrow is not a win yet).
    assert swept == {"unscored", "stale", "sql", "recycled", "requalified", "wins-tomorrow"}
    assert rows["queued"]["cause"] == "touch" and rows["queued"]["generation"] == 1  # left as it was
    assert sweep(engine, now, day) == 0  # idempotent: everything it would queue is queued
