"""Rescore on change through the app: a queued lead gets the score POST /v1/score gives its stored history."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, select

from serving.app import create_app
from serving.rescore import RescoreOutcome, Rescorer, ignore_scored
from serving.state import ServiceState
from tests.postgres import fresh_database
from tests.serving.conftest import ADMIN, SCORING, Registry, service_settings
from timeline.engine import make_engine
from timeline.history import scoring_requests
from timeline.queue import enqueue
from timeline.schema import leads, rescore_queue, score_history, touches
from timeline.scores import ScoreState, current_score

# A rescore starts within a poll (0.2 s) of the change and takes a few milliseconds; the margin is for a busy machine.
WAIT_SECONDS = 15.0
DAY = dt.timedelta(days=1)
# Stored times sit half an hour off whole hours and days. The features count a stamp from the second after it and
# read as_of to the second, so a time exactly N days back can read "N-1 days" in a rescore a moment later and "N days"
# in the request after it: the labels compared below would flip on the boundary, not on a change in the code.
OFF_THE_HOUR = dt.timedelta(minutes=30)
PROFILE = {
    "industry": "Software", "employee_count": 850, "annual_revenue": 120_000_000.0, "country": "US",
    "region": "North America", "job_title": "Director of IT", "seniority": "director", "department": "it",
    "email_domain": "acme.com", "source": "organic search", "channel": "inbound",
}  # fmt: skip
Found = TypeVar("Found")


@pytest.fixture(scope="module")
def app_client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service of its own, on a fresh store, with its rescorer running in the background."""
    app = create_app(service_settings(registry, tmp_path_factory.mktemp("rescore")))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def store(app_client: TestClient) -> Iterator[Engine]:
    """Another engine on the service's store, as the ingest API (another worker, another replica) writes it."""
    engine = make_engine(_state(app_client).settings.store_url)
    yield engine
    engine.dispose()


def _state(client: TestClient) -> ServiceState:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    return state


def _rescorer(client: TestClient) -> Rescorer:
    rescorer: Rescorer = client.app.state.rescorer  # type: ignore[attr-defined]
    return rescorer


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ago(days: float) -> dt.datetime:
    """About `days` before now (half an hour more: see OFF_THE_HOUR)."""
    return dt.datetime.now(dt.UTC) - days * DAY - OFF_THE_HOUR


def add_lead(conn: Connection, lead_id: str, *, account_id: str | None = None, **stamps: dt.datetime) -> None:
    """A lead created about 30 days ago, stored as the ingest API stores it."""
    created = ago(30)
    conn.execute(
        leads.insert().values(lead_id=lead_id, account_id=account_id, created_at=created, updated_at=created,
                              **PROFILE, **stamps)
    )  # fmt: skip


def add_touch(conn: Connection, lead_id: str, activity_type: str, days_ago: float) -> None:
    at = ago(days_ago)
    conn.execute(
        touches.insert().values(touch_key=uuid.uuid4().hex, lead_id=lead_id, occurred_at=at,
                                activity_type=activity_type, received_at=at)
    )  # fmt: skip


def wait_for(what: str, probe: Callable[[], Found | None]) -> Found:
    """Poll `probe` until it finds something (not None), for up to WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {WAIT_SECONDS} s")


def stored_score(store: Engine, lead_id: str, history_rows: int = 1) -> ScoreState:
    """The lead's score, once its history has `history_rows` rows."""

    def probe() -> ScoreState | None:
        with store.connect() as conn:
            if len(history(conn, lead_id)) < history_rows:
                return None
            return current_score(conn, lead_id)

    return wait_for(f"score of {lead_id}", probe)


def history(conn: Connection, lead_id: str) -> list[Any]:
    query = select(score_history).where(score_history.c.lead_id == lead_id).order_by(score_history.c.id)
    return list(conn.execute(query))


def queue_row(store: Engine, lead_id: str) -> Any:
    with store.connect() as conn:
        return conn.execute(select(rescore_queue).where(rescore_queue.c.lead_id == lead_id)).first()


def failed_row(store: Engine, lead_id: str) -> Any:
    """The lead's queue row once a rescore of it failed (None before)."""
    row = queue_row(store, lead_id)
    return row if row is not None and row.attempts > 0 else None


JSON = {"Content-Type": "application/json"}


def posted(client: TestClient, store: Engine, lead_id: str) -> dict[str, Any]:
    """What POST /v1/score answers for the lead's stored history now."""
    with store.connect() as conn:
        body = scoring_requests(conn, [lead_id])[lead_id]
    response = client.post("/v1/score", content=msgspec.json.encode(body), headers={**SCORING, **JSON})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_same_answer(stored: dict[str, Any], answered: dict[str, Any]) -> None:
    """Two answers for one history: the same but for the request's id and time (and the drift of seconds since).

    Readiness reads "days since" each touch: the moments between the rescore and the request move it a hair.
    """
    for answer in (stored, answered):
        answer.pop("request_id")
        answer.pop("scored_at")
    for answer in (stored, answered):
        if answer["readiness"] is not None:
            answer["readiness"]["probability"] = round(answer["readiness"]["probability"], 3)
        for side in answer["reasons"].values():
            for reason in side:
                reason["impact"] = round(reason["impact"], 2)
    assert stored == answered


def test_a_queued_lead_gets_the_score_post_score_gives_its_history(app_client: TestClient, store: Engine) -> None:
    lead_id = new_id("L")
    with store.begin() as conn:  # the change and its rescore commit together, as the ingest API writes them
        add_lead(conn, lead_id, mql_at=ago(10))
        add_touch(conn, lead_id, "content_download", 20)
        add_touch(conn, lead_id, "pricing_page_view", 2)
        enqueue(conn, [lead_id], "touch")
    state = stored_score(store, lead_id)
    assert state.response["lead_id"] == lead_id and state.response["lifecycle"]["stage"] == "mql"
    assert (state.fit_score, state.grade, state.queue) == (
        state.response["fit"]["score"], state.response["fit"]["grade"], state.response["route"]["queue"]
    )  # fmt: skip
    assert_same_answer(dict(state.response), posted(app_client, store, lead_id))
    with store.connect() as conn:
        [row] = history(conn, lead_id)
    assert (row.cause, row.grade, row.queue) == ("touch", state.grade, state.queue)
    assert queue_row(store, lead_id) is None


def test_each_change_rescores_the_lead_again(app_client: TestClient, store: Engine) -> None:
    lead_id = new_id("L")
    with store.begin() as conn:
        add_lead(conn, lead_id)
        add_touch(conn, lead_id, "page_view", 5)
        enqueue(conn, [lead_id], "touch")
    first = stored_score(store, lead_id)
    with store.begin() as conn:
        for days_ago in (0.5, 0.4, 0.3):
            add_touch(conn, lead_id, "demo_request", days_ago)
        enqueue(conn, [lead_id], "touch")
    second = stored_score(store, lead_id, history_rows=2)
    assert second.response["request_id"] != first.response["request_id"]
    assert second.readiness_probability is not None and first.readiness_probability is not None
    assert second.readiness_probability > first.readiness_probability  # demo requests raise readiness
    assert_same_answer(dict(second.response), posted(app_client, store, lead_id))


def test_a_colleagues_touch_reaches_the_leads_rescore(app_client: TestClient, store: Engine) -> None:
    account, lead_id, colleague = new_id("ACME"), new_id("L"), new_id("L")
    with store.begin() as conn:
        add_lead(conn, lead_id, account_id=account)
        add_lead(conn, colleague, account_id=account)
        add_touch(conn, colleague, "webinar_attended", 1)
        enqueue(conn, [colleague], "touch")
        enqueue(conn, [lead_id], "colleague")  # the buying group's figures of the lead changed
    state = stored_score(store, lead_id)
    with store.connect() as conn:
        body = scoring_requests(conn, [lead_id])[lead_id]
        [row] = history(conn, lead_id)
    assert [a.get("lead_id") for a in body["activities"]] == [colleague]
    assert row.cause == "colleague"
    assert_same_answer(dict(state.response), posted(app_client, store, lead_id))
    stored_score(store, colleague)


def test_a_lead_that_cannot_be_scored_fails_alone_and_stays_queued(app_client: TestClient, store: Engine) -> None:
    good, refused, unreadable = new_id("L"), new_id("L"), new_id("L")
    with store.begin() as conn:
        add_lead(conn, good)
        add_lead(conn, refused)
        add_touch(conn, refused, "fax_received", 1)  # not an activity type the score API takes
        add_lead(conn, unreadable)
        conn.execute(leads.update().where(leads.c.lead_id == unreadable).values(custom="{not json"))
        enqueue(conn, [refused, unreadable, good], "touch")
    stored_score(store, good)
    for lead_id in (refused, unreadable):
        row = wait_for("failed attempt", partial(failed_row, store, lead_id))
        assert row.claimed_by is None and row.attempts == 1
        assert row.due_at.replace(tzinfo=dt.UTC) > dt.datetime.now(dt.UTC)  # backed off, never dropped
        with store.connect() as conn:
            assert current_score(conn, lead_id) is None


def test_an_erased_lead_leaves_the_queue_unscored(app_client: TestClient, store: Engine) -> None:
    gone = new_id("L")
    with store.begin() as conn:
        enqueue(conn, [gone], "touch")  # its lead row was erased before the rescore
    wait_for("completion", lambda: True if queue_row(store, gone) is None else None)
    with store.connect() as conn:
        assert current_score(conn, gone) is None and history(conn, gone) == []


def test_on_scored_sees_before_and_after_and_its_failure_undoes_the_score(
    app_client: TestClient, store: Engine
) -> None:
    rescorer = _rescorer(app_client)
    seen: list[tuple[str, ScoreState | None, ScoreState]] = []
    refused = new_id("L")

    def hook(conn: Connection, lead_id: str, before: ScoreState | None, after: ScoreState) -> None:
        if lead_id == refused:
            raise RuntimeError("the outbox is full")
        # In the transaction that stores the score: it is already there to read.
        assert current_score(conn, lead_id) == after
        seen.append((lead_id, before, after))

    lead_id = new_id("L")
    rescorer.on_scored = hook
    try:
        with store.begin() as conn:
            add_lead(conn, lead_id)
            add_lead(conn, refused)
            enqueue(conn, [lead_id, refused], "profile")
        first = stored_score(store, lead_id)
        with store.begin() as conn:
            add_touch(conn, lead_id, "meeting_booked", 0.1)
            enqueue(conn, [lead_id], "touch")
        second = stored_score(store, lead_id, history_rows=2)
        wait_for("failed attempt", lambda: failed_row(store, refused))
    finally:
        rescorer.on_scored = ignore_scored
    # The failed lead's batch was stored again lead by lead: its first transaction, rolled back, saw the lead too.
    pairs = [(before, after) for seen_id, before, after in seen if seen_id == lead_id]
    assert (None, first) in pairs and (first, second) in pairs
    assert all(pair in [(None, first), (first, second)] for pair in pairs)
    with store.connect() as conn:
        assert current_score(conn, refused) is None and history(conn, refused) == []  # its transaction rolled back


def test_the_sweep_queues_unscored_open_leads_for_a_rescore(app_client: TestClient, store: Engine) -> None:
    lead_id, won = new_id("L"), new_id("L")
    with store.begin() as conn:  # stored without a rescore queued (as by an import, or an older version)
        add_lead(conn, lead_id)
        add_lead(conn, won, won_at=ago(1))
    _rescorer(app_client).sweep()  # (the service's own hourly sweep may have come first: the same either way)
    stored_score(store, lead_id)
    with store.connect() as conn:
        assert [row.cause for row in history(conn, lead_id)] == ["sweep"]
        assert current_score(conn, won) is None  # closed: nothing to keep current


def test_metrics_show_the_rescore_queue(app_client: TestClient, store: Engine) -> None:
    lead_id = new_id("L")
    with store.begin() as conn:
        add_lead(conn, lead_id)
        enqueue(conn, [lead_id], "touch")
    stored_score(store, lead_id)
    _rescorer(app_client).observe()
    text = app_client.get("/metrics", headers=ADMIN).text
    assert 'leadscore_rescores_total{outcome="scored"}' in text
    assert "leadscore_rescore_backlog" in text and "leadscore_rescore_oldest_due_seconds" in text


def test_a_rescorer_on_postgresql_stores_scores_and_completes_erased_leads(app_client: TestClient) -> None:
    with fresh_database() as name:
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        try:
            lead_id, colleague, gone = new_id("L"), new_id("L"), new_id("L")
            with engine.begin() as conn:
                add_lead(conn, lead_id, account_id="ACME")
                add_lead(conn, colleague, account_id="ACME")
                add_touch(conn, colleague, "demo_request", 1)
                enqueue(conn, [lead_id, gone], "colleague")
            rescorer = Rescorer(_state(app_client), engine=engine, worker_id="pg-worker")
            assert rescorer.rescore_batch() == RescoreOutcome(scored=1, gone=1)
            with engine.connect() as conn:
                state = current_score(conn, lead_id)
                assert state is not None and [row.cause for row in history(conn, lead_id)] == ["colleague"]
                assert conn.execute(select(rescore_queue)).all() == []
            assert_same_answer(dict(state.response), posted(app_client, engine, lead_id))
            assert rescorer.rescore_batch() == RescoreOutcome()  # nothing left
        finally:
            engine.dispose()


def test_an_export_model_leaves_the_queue_alone_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.begin() as conn:
        enqueue(conn, ["L-1"], "touch")
    export_model = SimpleNamespace(export=object())
    state = SimpleNamespace(holder=SimpleNamespace(ready=True, current=export_model),
                            score_log=SimpleNamespace(engine=engine))  # fmt: skip
    rescorer = Rescorer(cast(ServiceState, state))
    with caplog.at_level(logging.WARNING, logger="serving.rescore"):
        assert rescorer.rescore_batch() == RescoreOutcome()
        assert rescorer.rescore_batch() == RescoreOutcome()
        assert rescorer.sweep() == 0
    said = [r.getMessage() for r in caplog.records if "not rescoring" in r.getMessage()]
    assert len(said) == 1 and "export" in said[0]
    with engine.connect() as conn:
        [row] = conn.execute(select(rescore_queue)).all()
    assert row.claimed_by is None and row.attempts == 0
    engine.dispose()
