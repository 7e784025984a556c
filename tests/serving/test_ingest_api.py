"""The ingest API through the app: keys, leads, touches stored once, Segment events, bad input, backpressure."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import OperationalError

from serving.app import create_app
from serving.routers.ingest import runtime as ingest_runtime
from serving.schemas import EXAMPLE_REQUEST
from serving.settings import Settings
from tests.serving.conftest import ADMIN, SCORING, Registry, service_settings
from timeline.engine import make_engine
from timeline.event_map import EventMapError
from timeline.schema import identities, leads, rescore_queue, touches

INGEST_KEY = "ingest-key-for-tests"
INGEST = {"X-API-Key": INGEST_KEY}
PROPERTY_BYTES = 1024


@pytest.fixture(scope="module")
def ingest_client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service of its own (these tests write leads), with an ingest key and a small per-touch property limit."""
    settings = service_settings(
        registry, tmp_path_factory.mktemp("ingest"), ingest_keys=[INGEST_KEY], max_touch_property_bytes=PROPERTY_BYTES,
        max_ingest_batch=50,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def store(client: TestClient) -> Engine:
    engine: Engine = client.app.state.service.score_log.engine  # type: ignore[attr-defined]
    return engine


def rows(client: TestClient, table: Any) -> int:
    with store(client).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def lead_touches(client: TestClient, lead_id: str | None) -> list[str]:
    query = select(touches.c.activity_type).order_by(touches.c.occurred_at)
    query = query.where(touches.c.lead_id.is_(None) if lead_id is None else touches.c.lead_id == lead_id)
    with store(client).connect() as conn:
        return list(conn.execute(query).scalars())


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CREATED = iso(NOW - dt.timedelta(days=20))


def day(days_ago: float) -> str:
    return iso(NOW - dt.timedelta(days=days_ago))


def put(client: TestClient, lead_id: str, body: dict[str, Any]) -> Any:
    return client.put(f"/v1/leads/{lead_id}", json=body, headers=INGEST)


def detail(response: Any) -> dict[str, Any]:
    """The one problem of a refusal."""
    problems = response.json()["detail"]
    assert len(problems) == 1, problems
    problem: dict[str, Any] = problems[0]
    return problem


# ---- keys --------------------------------------------------------------------------------------------------------


def test_ingest_takes_an_ingest_or_admin_key_and_a_scoring_key_is_told_why_not(ingest_client: TestClient) -> None:
    body = {"created_at": CREATED}
    assert ingest_client.put("/v1/leads/K1", json=body).status_code == 401
    assert ingest_client.put("/v1/leads/K1", json=body, headers={"X-API-Key": INGEST_KEY[:-1]}).status_code == 401
    scoring = ingest_client.put("/v1/leads/K1", json=body, headers=SCORING)
    assert scoring.status_code == 403 and "may score but not ingest" in scoring.json()["detail"]
    assert "K1" not in lead_ids(ingest_client)
    assert put(ingest_client, "K1", body).status_code == 201
    assert ingest_client.put("/v1/leads/K2", json=body, headers=ADMIN).status_code == 201
    # An ingest key is not a scoring key.
    assert ingest_client.post("/v1/score", json=EXAMPLE_REQUEST, headers=INGEST).status_code == 401


def lead_ids(client: TestClient) -> set[str]:
    with store(client).connect() as conn:
        return set(conn.execute(select(leads.c.lead_id)).scalars())


# ---- leads -------------------------------------------------------------------------------------------------------


def test_put_creates_then_changes_only_the_fields_sent(ingest_client: TestClient) -> None:
    created = put(ingest_client, "P1", {"created_at": CREATED, "industry": "Software", "employee_count": 300})
    assert created.status_code == 201, created.text
    assert created.json()["created"] and created.json()["lead"]["industry"] == "Software"
    changed = put(ingest_client, "P1", {"employee_count": 320, "industry": None, "mql_at": day(3)})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["changed"] == {
        "employee_count": {"before": 300, "after": 320},
        "industry": {"before": "Software", "after": None},
        "mql_at": {"before": None, "after": day(3)},
    }
    assert body["lead"]["employee_count"] == 320 and body["lead"]["industry"] is None
    with store(ingest_client).connect() as conn:
        queued = conn.execute(select(rescore_queue.c.cause).where(rescore_queue.c.lead_id == "P1")).scalar_one()
    assert queued == "lifecycle"


def test_a_stamp_moving_back_is_a_409_naming_the_field_and_the_stored_value(ingest_client: TestClient) -> None:
    assert put(ingest_client, "P2", {"created_at": CREATED, "mql_at": day(5), "sql_at": day(2)}).status_code == 201
    back = put(ingest_client, "P2", {"sql_at": day(4)})
    assert back.status_code == 409
    problem = detail(back)
    assert problem["loc"] == ["body", "sql_at"] and day(2) in problem["msg"] and "only move forward" in problem["msg"]
    cleared = put(ingest_client, "P2", {"mql_at": None})
    assert cleared.status_code == 409 and "cannot be cleared" in detail(cleared)["msg"]
    moved = put(ingest_client, "P2", {"created_at": day(1)})
    assert moved.status_code == 409 and detail(moved)["loc"] == ["body", "created_at"]
    missing = put(ingest_client, "P3", {"industry": "retail"})
    assert missing.status_code == 422 and detail(missing)["loc"] == ["body", "created_at"]


def test_bulk_is_all_or_nothing(ingest_client: TestClient) -> None:
    leads_sent = [{"lead_id": f"B{i}", "created_at": CREATED} for i in range(3)] + [{"lead_id": "B3"}]
    refused = ingest_client.post("/v1/leads/bulk", json={"leads": leads_sent}, headers=INGEST)
    assert refused.status_code == 422 and detail(refused)["loc"] == ["body", "leads", 3, "created_at"]
    assert not {"B0", "B1", "B2"} & lead_ids(ingest_client)
    done = ingest_client.post("/v1/leads/bulk", json={"leads": leads_sent[:3]}, headers=INGEST)
    assert done.status_code == 200 and done.json()["created"] == 3
    too_many = [{"lead_id": f"X{i}", "created_at": CREATED} for i in range(51)]
    over = ingest_client.post("/v1/leads/bulk", json={"leads": too_many}, headers=INGEST)
    assert over.status_code == 422 and "at most 50" in detail(over)["msg"]


# ---- touches -----------------------------------------------------------------------------------------------------


def touch(lead_id: str, days_ago: float, kind: str = "email_open", **extra: Any) -> dict[str, Any]:
    return {"lead_id": lead_id, "occurred_at": day(days_ago), "activity_type": kind, **extra}


def test_touches_are_idempotent(ingest_client: TestClient) -> None:
    assert put(ingest_client, "T1", {"created_at": CREATED}).status_code == 201
    batch = [
        touch("T1", 2, activity_id="evt-1"),
        touch("T1", 1, "Pricing Page View"),
        touch("T1", 1, "pricing_page_view"),
    ]
    first = ingest_client.post("/v1/activities", json={"activities": batch}, headers=INGEST)
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 2, "duplicates": 1, "lead_ids": ["T1"]}
    again = ingest_client.post("/v1/activities", json={"activities": batch}, headers=INGEST)
    assert again.json() == {"stored": 0, "duplicates": 3, "lead_ids": []}
    assert lead_touches(ingest_client, "T1") == ["email_open", "pricing_page_view"]


@pytest.mark.parametrize(
    ("bad", "status", "field", "words"),
    [
        (touch("T9", 1), 404, "lead_id", "'T9' is not stored"),
        (touch("T2", -2), 422, "occurred_at", "ahead of now"),
        (touch("T2", 0) | {"occurred_at": "1969-07-20T20:17:00Z"}, 422, "occurred_at", "between 1970"),
        (touch("T2", 1, "telepathy"), 422, "activity_type", "Input should be"),
        (touch("T2", 1, properties={"note": "x" * PROPERTY_BYTES}), 422, "properties", f"at most {PROPERTY_BYTES:,}"),
        ({"occurred_at": day(1), "activity_type": "email_open"}, 422, None, "needs lead_id"),
    ],
    ids=["unknown lead", "future", "before 1970", "unknown type", "oversized properties", "nobody's"],
)
def test_bad_touches_are_refused_naming_the_index_and_nothing_is_stored(
    ingest_client: TestClient, bad: dict[str, Any], status: int, field: str | None, words: str
) -> None:
    put(ingest_client, "T2", {"created_at": CREATED})
    before = rows(ingest_client, touches)
    batch = [touch("T2", 3), touch("T2", 2), touch("T2", 1, "demo_request"), bad]
    response = ingest_client.post("/v1/activities", json={"activities": batch}, headers=INGEST)
    assert response.status_code == status, response.text
    problem = detail(response)
    assert problem["loc"][:3] == ["body", "activities", 3] and words in problem["msg"], problem
    if field is not None:
        assert problem["loc"] == ["body", "activities", 3, field]
    assert rows(ingest_client, touches) == before


# ---- Segment -----------------------------------------------------------------------------------------------------


def events(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/events", json=body, headers=INGEST)


def test_a_visitor_is_identified_and_the_touches_become_the_leads(ingest_client: TestClient) -> None:
    pages = [
        {"type": "page", "anonymousId": "cookie-7", "name": "Pricing", "timestamp": day(3), "messageId": "p1"},
        {"type": "page", "anonymousId": "cookie-7", "properties": {"path": "/docs"}, "timestamp": day(2),
         "messageId": "p2"},
    ]  # fmt: skip
    first = events(ingest_client, {"batch": pages})
    assert first.status_code == 200, first.text
    assert first.json()["touches_stored"] == 2 and lead_touches(ingest_client, None)[-2:] == [
        "pricing_page_view", "page_view",
    ]  # fmt: skip
    identify = {
        "type": "identify", "userId": "S1", "anonymousId": "cookie-7", "timestamp": day(1), "messageId": "i1",
        "traits": {"email": "sam@initech.example", "title": "VP Engineering", "industry": "software"},
        "context": {"ip": "203.0.113.9"}, "integrations": {"All": True},
    }  # fmt: skip
    identified = events(ingest_client, identify)
    assert identified.status_code == 200, identified.text
    assert identified.json()["identified"] == 2 and identified.json()["leads_changed"] == ["S1"]
    assert lead_touches(ingest_client, "S1") == ["pricing_page_view", "page_view"]
    demo = {"type": "track", "anonymousId": "cookie-7", "event": "Demo Requested", "timestamp": day(0.5)}
    assert events(ingest_client, demo).json()["touches_stored"] == 1
    assert lead_touches(ingest_client, "S1")[-1] == "demo_request"
    assert events(ingest_client, {"batch": pages}).json()["duplicates"] == 2  # messageId: stored once
    grouped = events(
        ingest_client, {"type": "group", "userId": "S1", "groupId": "INITECH", "traits": {"employees": 90}}
    )
    assert grouped.status_code == 200
    with store(ingest_client).connect() as conn:
        row = conn.execute(select(leads).where(leads.c.lead_id == "S1")).one()
        assert (
            conn.execute(select(identities.c.lead_id).where(identities.c.anonymous_id == "cookie-7")).scalar() == "S1"
        )
    assert (row.account_id, row.employee_count, row.email_domain) == ("INITECH", 90, "initech.example")


def test_an_alias_of_two_known_leads_is_a_409_and_nothing_is_stored(ingest_client: TestClient) -> None:
    put(ingest_client, "A1", {"created_at": CREATED})
    put(ingest_client, "A2", {"created_at": CREATED})
    before = rows(ingest_client, touches)
    batch = [
        {"type": "track", "userId": "A1", "event": "Email Opened", "timestamp": day(1)},
        {"type": "alias", "previousId": "A2", "userId": "A1"},
    ]
    conflict = events(ingest_client, {"batch": batch})
    assert conflict.status_code == 409
    problem = detail(conflict)
    assert problem["loc"] == ["body", "batch", 1, "previousId"] and "merge two stored leads" in problem["msg"]
    assert rows(ingest_client, touches) == before


def test_unknown_events_are_counted_and_reported(ingest_client: TestClient) -> None:
    put(ingest_client, "U1", {"created_at": CREATED})
    batch = [{"type": "track", "userId": "U1", "event": "Widget Spun", "timestamp": day(1)} for _ in range(2)]
    applied = events(ingest_client, {"batch": batch})
    assert applied.status_code == 200
    assert applied.json()["unmapped"] == [{"kind": "track", "name": "Widget Spun", "count": 2}]
    report = ingest_client.get("/v1/events/unmapped", headers=INGEST).json()
    assert report["unknown"] == "ignore"
    assert [(e["name"], e["count"]) for e in report["events"] if e["kind"] == "track"] == [("Widget Spun", 2)]


def test_unknown_events_are_refused_when_the_map_says_so(ingest_client: TestClient) -> None:
    runtime = ingest_client.app.state.ingest  # type: ignore[attr-defined]
    strict = runtime.event_map.model_copy(update={"unknown": "refuse"})
    put(ingest_client, "U2", {"created_at": CREATED})
    before = rows(ingest_client, touches)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "event_map", strict)
        batch = [
            {"type": "track", "userId": "U2", "event": "Demo Requested", "timestamp": day(1)},
            {"type": "track", "userId": "U2", "event": "Widget Spun", "timestamp": day(1)},
        ]
        refused = events(ingest_client, {"batch": batch})
    assert refused.status_code == 422
    problem = detail(refused)
    assert problem["loc"] == ["body", "batch", 1, "event"] and "'Widget Spun' is not in the event map" in problem["msg"]
    assert rows(ingest_client, touches) == before


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"type": "track", "userId": "nobody", "event": "Email Opened"}, ["body", "userId"], "not stored"),
        (
            {"type": "track", "anonymousId": "c", "event": "Email Opened", "timestamp": "1960-01-01T00:00:00Z"},
            ["body", "timestamp"],
            "between 1970",
        ),
        ({"type": "shout", "userId": "x"}, ["body", "type"], "Input should be"),
        (
            {"batch": [{"type": "identify", "userId": "x", "traits": {"employees": "lots"}}]},
            ["body", "batch", 0, "traits", "employees"],
            "not a number",
        ),
        ({"type": "group", "userId": "nobody", "groupId": "G"}, ["body", "userId"], "not stored"),
        ({"type": "track", "userId": "x", "batch": []}, ["body"], "not both"),
    ],
    ids=["unknown user", "before 1970", "unknown type", "bad trait", "group of nobody", "both"],
)
def test_bad_messages_are_refused_naming_the_field(
    ingest_client: TestClient, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    response = events(ingest_client, body)
    assert response.status_code in (404, 422), response.text
    problem = detail(response)
    assert problem["loc"] == loc and words in problem["msg"], problem


# ---- the event map and backpressure ------------------------------------------------------------------------------


def test_a_bad_event_map_fails_the_start_naming_the_entry(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("track:\n  Demo Requested: demo\n")
    with pytest.raises(EventMapError, match="'Demo Requested' maps to 'demo'"):
        create_app(service_settings(registry, tmp_path, event_map=str(path)))


def test_ingest_answers_429_while_the_rescore_backlog_is_too_long(registry: Registry, tmp_path: Path) -> None:
    # No keys at all: the service is open, ingest included (as scoring is).
    settings = service_settings(registry, tmp_path, api_keys=[], admin_keys=[], max_rescore_backlog=2)
    with TestClient(create_app(settings)) as client:
        client.app.state.ingest.backlog_seconds = 0.0  # type: ignore[attr-defined]  # count on every request here
        sent = {"leads": [{"lead_id": f"Q{i}", "created_at": CREATED} for i in range(3)]}
        assert client.post("/v1/leads/bulk", json=sent).status_code == 200  # 3 rescores now wait
        refused = client.post("/v1/activities", json={"activities": [touch("Q1", 1)]})
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert "nothing was stored" in refused.json()["detail"]
        assert rows(client, touches) == 0
        with store(client).begin() as conn:
            conn.execute(rescore_queue.delete())  # the rescore worker caught up
        assert client.post("/v1/activities", json={"activities": [touch("Q1", 1)]}).status_code == 200


def test_the_backlog_is_counted_once_per_interval_not_per_request(registry: Registry, tmp_path: Path) -> None:
    settings = service_settings(registry, tmp_path, api_keys=[], admin_keys=[], max_rescore_backlog=1)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.ingest  # type: ignore[attr-defined]
        runtime.backlog_seconds = 3600.0  # an interval no test outlasts: the first count (0 waiting) stands
        for lead_id in ("C1", "C2", "C3"):
            assert client.put(f"/v1/leads/{lead_id}", json={"created_at": CREATED}).status_code == 201
        runtime.backlog_seconds = 0.0  # the interval is over: three rescores wait, more than 1
        assert client.put("/v1/leads/C4", json={"created_at": CREATED}).status_code == 429
        assert "C4" not in lead_ids(client)


def test_429_while_rescores_wait_too_long_but_not_for_the_sweep(registry: Registry, tmp_path: Path) -> None:
    settings = service_settings(registry, tmp_path, api_keys=[], admin_keys=[], max_rescore_lag_seconds=5,
                                rescore_poll_seconds=60)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        client.app.state.ingest.backlog_seconds = 0.0  # type: ignore[attr-defined]
        minute_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        waiting = {"lead_id": "OLD", "cause": "touch", "enqueued_at": minute_ago, "due_at": minute_ago,
                   "generation": 1, "attempts": 0}  # fmt: skip
        with store(client).begin() as conn:
            conn.execute(rescore_queue.insert().values(**waiting))
        refused = client.put("/v1/leads/LAG1", json={"created_at": CREATED})
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert "LEADSCORE_MAX_RESCORE_LAG_SECONDS=5" in refused.json()["detail"]
        assert "LAG1" not in lead_ids(client)
        # The same wait for a rescore the sweep queued (an aged score, not a change) holds nothing back.
        with store(client).begin() as conn:
            conn.execute(rescore_queue.update().values(cause="sweep"))
        assert client.put("/v1/leads/LAG1", json={"created_at": CREATED}).status_code == 201


class _DeadlockError(Exception):
    """What a driver raises for a transaction the database aborted (PostgreSQL names it by its SQLSTATE)."""

    sqlstate = "40P01"  # deadlock_detected


@pytest.mark.parametrize("fault", [_DeadlockError("deadlock detected"), sqlite3.OperationalError("database is locked")])
def test_a_transaction_the_database_aborted_runs_again(tmp_path: Path, fault: Exception) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    runtime = ingest_runtime(Settings.model_construct())
    attempts: list[int] = []

    def work(conn: Connection) -> str:
        attempts.append(1)
        conn.execute(leads.insert().values(lead_id=f"R{len(attempts)}", created_at=NOW, updated_at=NOW))
        if len(attempts) == 1:
            raise OperationalError("INSERT ...", {}, fault)
        return "done"

    assert runtime.write(engine, work) == "done" and len(attempts) == 2
    assert lead_ids_of(engine) == {"R2"}  # the aborted attempt left nothing behind
    runtime_error = OperationalError("INSERT ...", {}, ValueError("disk full"))

    def failing(conn: Connection) -> None:
        raise runtime_error

    with pytest.raises(OperationalError):  # any other fault is not retried
        runtime.write(engine, failing)
    engine.dispose()


def lead_ids_of(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(leads.c.lead_id)).scalars())
