"""A stored lead through the API: read back, scored by id (now and at a past moment), and erased."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from serving.app import create_app
from tests.serving.conftest import ADMIN, SCORING, Registry, service_settings
from timeline.schema import erasures, score_log

INGEST = {"X-API-Key": "ingest-key-for-leads"}
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def api(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service of its own, with one ACME buying group stored: Dana (a visitor before she identified) and Sam."""
    settings = service_settings(registry, tmp_path_factory.mktemp("leads"), ingest_keys=[INGEST["X-API-Key"]])
    with TestClient(create_app(settings)) as client:
        profile = {"account_id": "ACME", "industry": "Software", "employee_count": 900, "seniority": "director",
                   "department": "it", "email_domain": "acme.com"}  # fmt: skip
        assert client.put("/v1/leads/dana", json={**profile, "created_at": iso(30)}, headers=INGEST).status_code == 201
        sam = {"account_id": "ACME", "created_at": iso(40), "seniority": "manager"}
        assert client.put("/v1/leads/sam", json=sam, headers=INGEST).status_code == 201
        visit = {"type": "page", "anonymousId": "cookie-1", "name": "Pricing", "timestamp": iso(12),
                 "properties": {"path": "/pricing"}}  # fmt: skip
        identify = {"type": "identify", "anonymousId": "cookie-1", "userId": "dana", "timestamp": iso(11)}
        assert client.post("/v1/events", json={"batch": [visit, identify]}, headers=INGEST).status_code == 200
        touches = [
            {"lead_id": "dana", "occurred_at": iso(10), "activity_type": "webinar_attended"},
            {"lead_id": "dana", "occurred_at": iso(1), "activity_type": "demo_request"},
            {"lead_id": "sam", "occurred_at": iso(3), "activity_type": "pricing_page_view"},
        ]
        assert client.post("/v1/activities", json={"activities": touches}, headers=INGEST).status_code == 200
        yield client


def rescore_all(client: TestClient) -> None:
    rescorer = client.app.state.rescorer  # type: ignore[attr-defined]
    while rescorer.rescore_batch().claimed:
        pass


def stateless(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/score", json=body, headers=SCORING)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_a_stored_lead_reads_back_with_its_timeline_and_current_score(api: TestClient) -> None:
    rescore_all(api)
    answer = api.get("/v1/leads/dana", params={"touches": 2}, headers=INGEST)
    assert answer.status_code == 200, answer.text
    timeline = answer.json()
    assert timeline["lead"]["account_id"] == "ACME" and timeline["anonymous_ids"] == ["cookie-1"]
    # Three touches stored (the visit before identify joined her history); the latest two shown, newest first.
    assert timeline["touch_count"] == 3
    assert [t["activity_type"] for t in timeline["touches"]] == ["demo_request", "webinar_attended"]
    assert timeline["score"]["lead_id"] == "dana" and timeline["score"]["reasons"]["fit"]
    assert timeline["score_history"] and not timeline["rescore_pending"]
    assert timeline["score_history"][0]["queue"] == timeline["score"]["route"]["queue"]


def test_reading_a_lead_takes_an_ingest_or_admin_key_and_an_unknown_one_is_a_404(api: TestClient) -> None:
    assert api.get("/v1/leads/dana").status_code == 401
    assert api.get("/v1/leads/dana", headers=SCORING).status_code == 403
    assert api.get("/v1/leads/dana", headers=ADMIN).status_code == 200
    missing = api.get("/v1/leads/nobody", headers=INGEST)
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    assert api.get("/v1/leads/dana", params={"touches": -1}, headers=INGEST).status_code == 422


def test_score_by_id_answers_as_the_stateless_api_does_with_the_same_history(api: TestClient) -> None:
    by_id = api.get("/v1/leads/dana/score", headers=SCORING)
    assert by_id.status_code == 200, by_id.text
    stored = api.get("/v1/leads/dana", headers=INGEST).json()
    colleague = api.get("/v1/leads/sam", headers=INGEST).json()
    body = {
        "lead": stored["lead"],
        "colleagues": [colleague["lead"]],
        "activities": [{"occurred_at": t["occurred_at"], "activity_type": t["activity_type"],
                        **({"properties": t["properties"]} if t["properties"] else {})} for t in stored["touches"]]
        + [{"occurred_at": t["occurred_at"], "activity_type": t["activity_type"], "lead_id": "sam"}
           for t in colleague["touches"]],
    }  # fmt: skip
    expected = stateless(api, body)
    assert by_id.json()["readiness"]["probability"] == pytest.approx(expected["readiness"]["probability"], abs=1e-9)
    assert by_id.json()["fit"] == expected["fit"] and by_id.json()["route"] == expected["route"]
    # Logged as the stateless API logs: the audit trail has the history it was scored from.
    with api.app.state.service.score_log.engine.connect() as conn:  # type: ignore[attr-defined]
        api.app.state.service.score_log.flush()  # type: ignore[attr-defined]
        logged = conn.execute(select(score_log.c.inputs).where(score_log.c.lead_id == "dana")).scalars().all()
    assert any("demo_request" in inputs for inputs in logged)


def test_score_by_id_as_of_a_past_moment_sees_only_what_had_happened_then(api: TestClient) -> None:
    as_of = iso(5)  # after the webinar, before the demo request and Sam's pricing view
    by_id = api.get("/v1/leads/dana/score", params={"as_of": as_of}, headers=SCORING)
    assert by_id.status_code == 200, by_id.text
    stored = api.get("/v1/leads/dana", headers=INGEST).json()
    sam = api.get("/v1/leads/sam", headers=INGEST).json()["lead"]
    earlier = [t for t in stored["touches"] if t["occurred_at"] <= as_of]
    assert [t["activity_type"] for t in earlier] == ["webinar_attended", "pricing_page_view"]  # the visit, mapped
    activities = [{"occurred_at": t["occurred_at"], "activity_type": t["activity_type"],
                   **({"properties": t["properties"]} if t["properties"] else {})} for t in earlier]  # fmt: skip
    body = {"lead": stored["lead"], "colleagues": [sam], "as_of": as_of, "activities": activities}
    expected = stateless(api, body)
    assert by_id.json()["readiness"]["probability"] == pytest.approx(expected["readiness"]["probability"], abs=1e-9)
    now = api.get("/v1/leads/dana/score", headers=SCORING).json()
    # The demo request came later: the past score has no demo among its reasons, today's does.
    assert not any(r["group"] == "demo_request" for r in by_id.json()["reasons"]["behaviour"])
    assert any(r["group"] == "demo_request" for r in now["reasons"]["behaviour"])


def test_score_by_id_refuses_what_it_cannot_answer_with_a_4xx_naming_why(api: TestClient) -> None:
    assert api.get("/v1/leads/dana/score").status_code == 401
    assert api.get("/v1/leads/dana/score", headers=INGEST).status_code == 401  # an ingest key does not score
    unknown = api.get("/v1/leads/nobody/score", headers=SCORING)
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    before = api.get("/v1/leads/dana/score", params={"as_of": iso(100)}, headers=SCORING)
    assert before.status_code == 404 and "created after as_of" in before.json()["detail"]
    for garbage in ("1969-12-31T00:00:00Z", "yesterday"):
        refused = api.get("/v1/leads/dana/score", params={"as_of": garbage}, headers=SCORING)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "as_of"], refused.text


def test_an_erasure_takes_an_admin_key_deletes_the_lead_everywhere_and_is_recorded(api: TestClient) -> None:
    assert api.put("/v1/leads/gone", json={"account_id": "ACME", "created_at": iso(3)}, headers=INGEST).status_code
    api.post("/v1/activities", json={"activities": [{"lead_id": "gone", "occurred_at": iso(1),
                                                     "activity_type": "email_open"}]}, headers=INGEST)  # fmt: skip
    rescore_all(api)
    assert api.get("/v1/leads/gone/score", headers=SCORING).status_code == 200  # a logged request to erase too
    assert api.delete("/v1/leads/gone", headers=INGEST).status_code == 403
    assert api.delete("/v1/leads/gone", headers=SCORING).status_code == 403
    erased = api.delete("/v1/leads/gone", headers=ADMIN)
    assert erased.status_code == 200, erased.text
    deleted = erased.json()["deleted"]
    assert deleted["leads"] == 1 and deleted["touches"] == 1 and deleted["lead_scores"] == 1
    assert deleted["score_log"] >= 1 and erased.json()["colleagues_requeued"] == 2
    assert api.get("/v1/leads/gone", headers=INGEST).status_code == 404
    assert api.get("/v1/leads/gone/score", headers=SCORING).status_code == 404
    assert api.delete("/v1/leads/gone", headers=ADMIN).status_code == 404  # nothing left: nothing to erase
    engine = api.app.state.service.score_log.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(score_log.c.lead_id == "gone")).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(erasures)).scalar_one() == 1
    # The colleagues still score, without her.
    assert api.get("/v1/leads/dana/score", headers=SCORING).status_code == 200
