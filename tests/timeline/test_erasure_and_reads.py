"""A stored lead read back and erased, on SQLite and PostgreSQL: everything about the person goes, nothing else."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.stores import store_url_fixture  # noqa: F401 (a fixture)
from timeline.engine import make_engine
from timeline.erasure import erase_lead
from timeline.event_map import load_event_map
from timeline.ingest import SegmentMessage, TouchIn, add_touches, apply_events, upsert_lead
from timeline.outbox import create_subscription, emit_score_events
from timeline.reads import lead_view
from timeline.schema import (
    erasures,
    identities,
    lead_scores,
    leads,
    rescore_queue,
    score_history,
    score_log,
    touches,
    webhook_deliveries,
)
from timeline.scores import ScoreState, record_scores

NOW = dt.datetime(2025, 6, 10, 12, 0, tzinfo=dt.UTC)
CREATED = dt.datetime(2025, 5, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    store = make_engine(store_url)
    yield store
    store.dispose()


def score(fit: float, queue: str = "nurture") -> ScoreState:
    response = {"fit": {"score": fit, "grade": "B"}, "route": {"queue": queue}, "model_version": "3",
                "thresholds_version": 1, "reasons": {"fit": [{"feature": "industry"}]}}  # fmt: skip
    return ScoreState(fit, "B", 0.2, 20.0, "mql", queue, "3", 1, response)


def count(engine: Engine, table: Any, **where: str) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def at(day: int) -> dt.datetime:
    return dt.datetime(2025, 6, day, 12, tzinfo=dt.UTC)


def seed(engine: Engine) -> None:
    """Two colleagues at ACME; Ann was a visitor (anon-1) before she identified, and has a score and a webhook."""
    event_map = load_event_map(None)
    with engine.begin() as conn:
        create_subscription(conn, "http://127.0.0.1:9/hook", ["lead.routed"], 0.0, now=NOW)
        upsert_lead(conn, "ann", {"created_at": CREATED, "account_id": "ACME", "industry": "software"}, now=NOW)
        upsert_lead(conn, "bob", {"created_at": CREATED, "account_id": "ACME"}, now=NOW)
        add_touches(
            conn, [TouchIn(at(1), "page_view", anonymous_id="anon-1", properties={"path": "/pricing"})], now=NOW
        )
        apply_events(conn, [SegmentMessage(type="identify", user_id="ann", anonymous_id="anon-1")], event_map, now=NOW)
        add_touches(conn, [TouchIn(at(2), "demo_request", lead_id="ann"), TouchIn(at(3), "email_open", lead_id="bob")],
                    now=NOW)  # fmt: skip
        before = record_scores(conn, [("ann", score(40.0), "touch"), ("bob", score(30.0), "touch")], NOW)
        record_scores(conn, [("ann", score(80.0, "sales"), "touch")], NOW + dt.timedelta(minutes=1))
        emit_score_events(conn, "ann", score(40.0), score(80.0, "sales"), now=NOW)
        assert before == {"ann": None, "bob": None}
        conn.execute(score_log.insert(), [
            {"request_id": "r1", "lead_id": who, "scored_at": NOW, "model_version": "3", "thresholds_version": 1,
             "inputs": json.dumps({"lead": {"lead_id": who}}), "outputs": "{}"} for who in ("ann", "bob")
        ])  # fmt: skip
        conn.execute(rescore_queue.delete())


def test_a_stored_lead_reads_back_with_its_identities_touches_newest_first_and_score_history(engine: Engine) -> None:
    seed(engine)
    with engine.connect() as conn:
        view = lead_view(conn, "ann", touch_limit=1, history_limit=10)
        assert lead_view(conn, "nobody", touch_limit=1, history_limit=10) is None
    assert view is not None
    assert view.lead["account_id"] == "ACME" and view.lead["industry"] == "software"
    assert view.anonymous_ids == ["anon-1"]
    assert view.touch_count == 2 and [t.activity_type for t in view.touches] == ["demo_request"]
    assert view.score is not None and view.score["route"]["queue"] == "sales" and view.score["reasons"]
    assert [h.fit_score for h in view.history] == [80.0, 40.0]  # newest first
    assert not view.rescore_pending


def test_an_erasure_deletes_everything_about_the_lead_and_leaves_its_colleague_alone(engine: Engine) -> None:
    seed(engine)
    colleague = {t.name: count(engine, t, lead_id="bob") for t in (leads, touches, lead_scores, score_history,
                                                                    score_log)}  # fmt: skip
    with engine.begin() as conn:
        erasure = erase_lead(conn, "ann", requested_by="admin", now=NOW)
    assert erasure.counts == {
        "leads": 1, "touches": 2, "identities": 1, "lead_scores": 1, "score_history": 2, "rescore_queue": 0,
        "webhook_deliveries": 1, "score_log": 1,
    }  # fmt: skip
    for table in (leads, touches, identities, lead_scores, score_history, webhook_deliveries, score_log):
        assert count(engine, table, lead_id="ann") == 0, table.name
    assert count(engine, touches, anonymous_id="anon-1") == 0  # what she did as a visitor goes too
    assert {t.name: count(engine, t, lead_id="bob") for t in (leads, touches, lead_scores, score_history,
                                                              score_log)} == colleague  # fmt: skip
    # The colleague's buying group lost a member: rescored.
    with engine.connect() as conn:
        assert list(conn.execute(select(rescore_queue.c.lead_id, rescore_queue.c.cause))) == [("bob", "colleague")]
        recorded = conn.execute(select(erasures)).one()
    assert json.loads(recorded.counts) == erasure.counts and recorded.requested_by == "admin"
    assert "ann" not in " ".join(str(value) for value in recorded)  # the record holds no personal data


def test_erasing_what_is_not_stored_finds_nothing_and_records_nothing(engine: Engine) -> None:
    seed(engine)
    with engine.begin() as conn:
        assert erase_lead(conn, "ann", requested_by="admin", now=NOW).found
    with engine.begin() as conn:
        again = erase_lead(conn, "ann", requested_by="admin", now=NOW)
    assert not again.found and count(engine, erasures) == 1
