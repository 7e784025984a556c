"""Stored scores on SQLite and PostgreSQL: each lead's current score, its history, and the score it replaced."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.postgres import fresh_database
from timeline.engine import make_engine, stored_time
from timeline.schema import score_history
from timeline.scores import current_score, record_scores, state_of_response

ANSWER = {
    "request_id": "r1",
    "lead_id": "a",
    "fit": {"probability": 0.31, "score": 72.5, "grade": "B"},
    "readiness": {"probability": 0.12, "score": 55.0, "stage": "warm"},
    "route": {"queue": "nurture", "priority": 3, "sla_hours": None, "segment": None},
    "model_version": "7",
    "thresholds_version": 2,
}


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


def test_a_score_state_reads_the_answer_of_the_score_api() -> None:
    state = state_of_response(ANSWER)
    assert (state.fit_score, state.grade, state.queue) == (72.5, "B", "nurture")
    assert (state.readiness_probability, state.readiness_score, state.stage) == (0.12, 55.0, "warm")
    assert (state.model_version, state.thresholds_version, state.response) == ("7", 2, ANSWER)
    closed = state_of_response({**ANSWER, "readiness": None})  # a won or lost lead: readiness does not apply
    assert (closed.readiness_probability, closed.readiness_score, closed.stage) == (None, None, None)


def test_record_scores_keeps_the_latest_and_every_one_in_the_history(engine: Engine) -> None:
    first = state_of_response(ANSWER)
    second = state_of_response({**ANSWER, "fit": {"probability": 0.5, "score": 90.0, "grade": "A"}})
    earlier = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    later = earlier + dt.timedelta(hours=1)
    with engine.begin() as conn:
        assert record_scores(conn, [("a", first, "touch"), ("b", first, "sweep")], earlier) == {"a": None, "b": None}
    with engine.begin() as conn:
        before = record_scores(conn, [("a", second, "lifecycle")], later)
    assert before == {"a": first}
    with engine.connect() as conn:
        assert current_score(conn, "a") == second
        assert current_score(conn, "b") == first
        assert current_score(conn, "nobody") is None
        history = conn.execute(
            select(score_history.c.lead_id, score_history.c.scored_at, score_history.c.cause, score_history.c.grade)
            .order_by(score_history.c.id)
        ).all()  # fmt: skip
    assert [(h.lead_id, stored_time(h.scored_at), h.cause, h.grade) for h in history] == [
        ("a", earlier, "touch", "B"), ("b", earlier, "sweep", "B"), ("a", later, "lifecycle", "A"),
    ]  # fmt: skip


def test_record_scores_stores_nothing_for_no_scores(engine: Engine) -> None:
    with engine.begin() as conn:
        assert record_scores(conn, [], dt.datetime.now(dt.UTC)) == {}
        assert conn.execute(select(score_history)).all() == []
