"""The score API in-process: response shape, score log, batch order, auth, validation errors, limits, service routes."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from features.bots import BotLimits
from features.scoring import GRADES, READINESS_STAGES
from serving.policy import QUEUES, RoutingPolicy
from serving.schemas import EXAMPLE_REQUEST, ScoreRequest
from serving.service import counting_now, request_lead
from serving.state import ServiceState
from tests.conftest import Trained
from tests.serving.conftest import ADMIN, SCORING, Registry
from tests.serving.test_policy import DEFAULT_ROUTES
from training.quality import MIN_HOLDOUT_POSITIVES, quality_warnings

RESPONSE_FIELDS = {
    "request_id", "lead_id", "fit", "readiness", "lifecycle", "route", "reasons", "model_version", "thresholds_version",
    "scored_at", "notes",
}  # fmt: skip
# Routes that need a key, each with a valid body so that only the key decides the answer.
PROTECTED = [
    ("POST", "/v1/score", EXAMPLE_REQUEST),
    ("POST", "/v1/score/batch", {"leads": [EXAMPLE_REQUEST]}),
    ("GET", "/v1/model", None),
    ("POST", "/v1/admin/reload", None),
]


def example(**lead: Any) -> dict[str, Any]:
    """The documented example request (a fresh copy), with lead fields changed by `lead`."""
    body = copy.deepcopy(EXAMPLE_REQUEST)
    body["lead"].update(lead)
    return body


def minimal(lead_id: str, **lead: Any) -> dict[str, Any]:
    """A request with only what is required: a lead id and its creation time."""
    return {"lead": {"lead_id": lead_id, "created_at": "2025-01-06T10:00:00Z", **lead}, "as_of": "2025-06-01T00:00:00Z"}


def service(client: TestClient) -> ServiceState:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    return state


def problems(response: httpx.Response) -> dict[str, str]:
    """422 details as {"body.lead.created_at": message}."""
    assert response.status_code == 422, response.text
    return {".".join(str(part) for part in p["loc"]): p["msg"] for p in response.json()["detail"]}


def post_raw(client: TestClient, text: str, path: str = "/v1/score") -> httpx.Response:
    response: httpx.Response = client.post(path, content=text, headers={**SCORING, "Content-Type": "application/json"})
    return response


# ---- scoring ----------------------------------------------------------------------------------------------------


def test_score_returns_the_documented_shape(client: TestClient, registry: Registry) -> None:
    response = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_FIELDS
    assert body["lead_id"] == "L-1042" and body["request_id"]
    assert 0.0 <= body["fit"]["probability"] <= 1.0 and 0.0 <= body["fit"]["score"] <= 100.0
    assert body["fit"]["grade"] in GRADES
    assert 0.0 <= body["readiness"]["probability"] <= 1.0 and 0.0 <= body["readiness"]["score"] <= 100.0
    assert body["readiness"]["stage"] in READINESS_STAGES
    assert body["route"]["queue"] in QUEUES and 1 <= body["route"]["priority"] <= 5
    assert set(body["reasons"]) == {"fit", "behaviour", "context"}
    for side, reasons in body["reasons"].items():
        assert 1 <= len(reasons) <= (2 if side == "context" else 3)
        assert all(set(r) == {"group", "impact", "label"} and r["label"] for r in reasons)
    assert body["model_version"] == registry.version
    assert body["thresholds_version"] == service(client).policy().version


def test_the_models_default_policy_is_stored_as_version_1(client: TestClient, trained: Trained) -> None:
    # Read from the store, not from the answers: other tests of the session's service may have saved later versions.
    first = service(client).policies.get(1)
    assert first is not None and first.author == "leadscore"
    assert first.policy == RoutingPolicy.from_cutoffs(trained.result.scorer.cutoffs)


def test_route_applies_the_policy_in_force(client: TestClient) -> None:
    body = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()
    policy = service(client).policy()
    assert body["thresholds_version"] == policy.version
    # The expected route worked out from the cut-offs by hand, not with the policy's own grade/stage/route.
    grades, stages = policy.policy.grades, policy.policy.stages
    score, probability = body["fit"]["score"], body["readiness"]["probability"]
    grade = next((g for g, cut in (("A", grades.A), ("B", grades.B), ("C", grades.C)) if score >= cut), "D")
    stage = "SQL" if probability >= stages.SQL else "MQL" if probability >= stages.MQL else "nurture"
    [(queue, priority, sla)] = [route for g, s, *route in DEFAULT_ROUTES if (g, s) == (grade, stage)]
    assert (body["fit"]["grade"], body["readiness"]["stage"]) == (grade, stage)
    assert body["route"] == {"queue": queue, "priority": priority, "sla_hours": sla, "segment": None}


# Leads past the readiness question, as of the example's 2025-06-03: routed by lifecycle stage, readiness null.
CLOSED_LEADS = [
    ({"sql_at": "2025-05-25T10:00:00Z", "won_at": "2025-06-01T12:00:00Z"}, "won", "customer", "won on 2025-06-01"),
    ({"sql_at": "2025-05-25T10:00:00Z"}, "sql", "owner", "sales-qualified (SQL) on 2025-05-25"),
    ({"sql_at": "2025-05-21T10:00:00Z", "lost_at": "2025-05-25T10:00:00Z"}, "lost", "nurture",
     "lost and not recycled on 2025-05-25"),
    ({"sql_at": "2025-05-21T10:00:00Z", "lost_at": "2025-05-22T10:00:00Z", "recycled_at": "2025-05-23T10:00:00Z",
      "requalified_at": "2025-06-02T10:00:00Z"}, "requalified", "owner", "requalified (an opportunity again)"),
]  # fmt: skip


@pytest.mark.parametrize(("stamps", "stage", "queue", "note"), CLOSED_LEADS)
def test_a_closed_lead_gets_no_readiness_and_its_lifecycle_route(
    client: TestClient, stamps: dict[str, str], stage: str, queue: str, note: str
) -> None:
    body = client.post("/v1/score", json=example(**stamps), headers=SCORING).json()
    assert set(body) == RESPONSE_FIELDS
    assert body["readiness"] is None
    lifecycle = body["lifecycle"]
    assert (lifecycle["stage"], lifecycle["readiness_applies"]) == (stage, False)
    assert lifecycle["since"] == stamps[f"{stage}_at"]
    assert lifecycle["note"].startswith(note) and lifecycle["note"].endswith("readiness applies to open leads only")
    rules = service(client).policy().policy
    cell, sla = rules.lifecycle_routes[stage], rules.sla_hours[queue]  # type: ignore[index]
    assert body["route"] == {"queue": queue, "priority": cell.priority, "sla_hours": sla, "segment": None}
    assert body["route"]["priority"] > 1  # no new priority-1 hand-off to sales
    assert body["fit"]["grade"] in GRADES and body["reasons"]["fit"] and body["reasons"]["behaviour"] == []


def test_a_lost_then_recycled_lead_and_an_open_lead_are_scored_by_readiness(client: TestClient) -> None:
    recycled = example(
        sql_at="2025-05-21T10:00:00Z", lost_at="2025-05-22T10:00:00Z", recycled_at="2025-05-23T10:00:00Z"
    )
    for body, stage, since in (
        (recycled, "recycled", "2025-05-23T10:00:00Z"),
        (example(), "mql", "2025-05-20T10:00:00Z"),
    ):
        answer = client.post("/v1/score", json=body, headers=SCORING).json()
        assert answer["lifecycle"] == {"stage": stage, "since": since, "readiness_applies": True, "note": None}
        assert 0.0 <= answer["readiness"]["probability"] <= 1.0 and answer["reasons"]["behaviour"]
        rules = service(client).policy().policy
        grade, ready = rules.grade(answer["fit"]["score"]), rules.stage(answer["readiness"]["probability"])
        assert answer["route"]["queue"] == rules.route(grade, ready)[0].queue


def test_score_log_keeps_input_output_and_both_versions(client: TestClient) -> None:
    body = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()
    [record] = service(client).score_log.read(request_id=body["request_id"])
    assert record.lead_id == "L-1042"
    assert record.model_version == body["model_version"]
    assert record.thresholds_version == body["thresholds_version"]
    assert record.outputs == body
    assert record.inputs["lead"]["lead_id"] == "L-1042"
    assert len(record.inputs["activities"]) == len(EXAMPLE_REQUEST["activities"])


def test_request_ids_are_uuid7s_that_sort_by_time(client: TestClient) -> None:
    # Time-ordered ids keep the score log's request_id index appending at its end as the log grows.
    ids = []
    for _ in range(3):
        ids.append(client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()["request_id"])
        time.sleep(0.002)  # past the millisecond that orders them
    ids.append(client.post("/v1/score/batch", json={"leads": [EXAMPLE_REQUEST]}, headers=SCORING).json()["request_id"])
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and parsed.hex == value
        assert abs((parsed.int >> 80) / 1000 - time.time()) < 60  # its first 48 bits: Unix milliseconds


def test_batch_keeps_request_order_and_matches_single_scores(client: TestClient) -> None:
    leads = [
        minimal("B-3", industry="Software", employee_count=5000, seniority="vp"),
        minimal("B-1", industry="Retail", employee_count=4),
        example(lead_id="B-2"),
    ]
    response = client.post("/v1/score/batch", json={"leads": leads}, headers=SCORING)
    assert response.status_code == 200, response.text
    batch = response.json()
    assert [s["lead_id"] for s in batch["scores"]] == ["B-3", "B-1", "B-2"]
    assert {s["request_id"] for s in batch["scores"]} == {batch["request_id"]}
    for lead, scored in zip(leads, batch["scores"], strict=True):
        single = client.post("/v1/score", json=lead, headers=SCORING).json()
        assert scored["fit"] == single["fit"] and scored["readiness"] == single["readiness"]
    logged = service(client).score_log.read(request_id=batch["request_id"])
    assert [r.lead_id for r in logged] == ["B-3", "B-1", "B-2"]


def test_unseen_category_values_are_scored_not_refused(client: TestClient) -> None:
    scores = []
    for industry in ("Quantum Basket Weaving", "Underwater Cartography"):
        body = example(industry=industry, country="Atlantis", source="carrier pigeon", seniority="wizard")
        response = client.post("/v1/score", json=body, headers=SCORING)
        assert response.status_code == 200, response.text
        scores.append(response.json()["fit"]["probability"])
    assert scores[0] == scores[1]  # every unseen value is the same "other" to the model


def test_activity_types_are_accepted_in_crm_spellings(client: TestClient) -> None:
    body = example()
    body["activities"][2]["activity_type"] = "Demo Request"
    body["activities"][1]["activity_type"] = "pricing-page-view"
    response = client.post("/v1/score", json=body, headers=SCORING)
    assert response.status_code == 200, response.text
    reference = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()
    assert response.json()["readiness"] == reference["readiness"]


PAGES = ("page_view", "pricing_page_view")


def bot_lead(lead_id: str) -> dict[str, Any]:
    """A lead with 2,000 touches, 650 of them in the 30 days before as_of: bursts of 50 page views, 1 s apart.

    Every two or three days a burst alternates between the pricing page and others; 9 days pass between the older
    bursts and the recent ones.
    """
    as_of = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    starts = [as_of - dt.timedelta(days=2 + 2 * k, hours=3) for k in range(13)]  # in the last 30 days
    starts += [as_of - dt.timedelta(days=35 + 3 * k, hours=5) for k in range(27)]  # before
    touches = [
        {"occurred_at": (start + dt.timedelta(seconds=s)).isoformat(), "activity_type": PAGES[s % 2]}
        for start in starts
        for s in range(50)
    ]
    body = minimal(lead_id, industry="Software", employee_count=800, seniority="director", department="it")
    body["activities"] = touches
    return body


def test_a_bot_like_lead_is_answered_with_a_note_and_not_sql_ready(client: TestClient, trained: Trained) -> None:
    body = bot_lead("L-bot")
    as_of = dt.datetime.fromisoformat(body["as_of"])
    recent = [t for t in body["activities"] if as_of - dt.datetime.fromisoformat(t["occurred_at"]) <= dt.timedelta(30)]
    assert (len(body["activities"]), len(recent)) == (2000, 650)
    response = client.post("/v1/score", json=body, headers=SCORING)
    assert response.status_code == 200, response.text
    answer = response.json()
    # The first 10 views of each kind in the first burst of each series are kept (a person could have made them);
    # after that, page views of either kind are not trusted while the bursts keep coming back within a week.
    assert answer["notes"] == ["1,960 touches look automated and were ignored"]
    assert answer["readiness"]["stage"] != "SQL"
    batch = client.post("/v1/score/batch", json={"leads": [body, minimal("L-quiet")]}, headers=SCORING).json()
    assert [s["notes"] for s in batch["scores"]] == [answer["notes"], []]
    assert batch["scores"][0]["readiness"] == answer["readiness"]
    # The same touches, all counted, would send the lead to sales as SQL-ready: the filter is what keeps it out.
    scorer = copy.copy(trained.result.scorer)
    scorer.builder = copy.copy(scorer.builder)
    scorer.builder.bot_limits = BotLimits(burst_touches=10**6, daily_touches=10**6)
    [unfiltered] = scorer.score_requests([request_lead(ScoreRequest.model_validate(body), as_of)])
    assert unfiltered.ignored_touches == 0
    assert unfiltered.readiness_stage == "SQL" and unfiltered.readiness_probability > answer["readiness"]["probability"]


def test_touches_marked_as_bots_are_ignored_and_noted(client: TestClient) -> None:
    body = example(lead_id="L-marked")
    marks = [{"bot": True}, {"is_bot": "true"}, {"Is Bot Activity": True}, {"isBot": False}]
    for touch, properties in zip(body["activities"], marks, strict=True):
        touch["properties"] = properties
    answer = client.post("/v1/score", json=body, headers=SCORING).json()
    # The fourth touch is a colleague's (and not marked): only the lead's own touches are counted in the note.
    assert answer["notes"] == ["3 touches look automated and were ignored"]
    assert client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()["notes"] == []


# ---- auth -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-a-key"}, {"X-API-Key": ""}])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_or_wrong_key_is_401(
    client: TestClient, headers: dict[str, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]


def test_scoring_key_may_not_reload(client: TestClient) -> None:
    response = client.post("/v1/admin/reload", headers=SCORING)
    assert response.status_code == 403
    assert "may score but not administer" in response.json()["detail"]


def _reloads(client: TestClient, outcome: str) -> float:
    """The service's count of reloads with this outcome so far."""
    found = re.search(
        rf'^leadscore_model_reloads_total{{outcome="{outcome}"}} (\S+)$',
        client.get("/metrics", headers=ADMIN).text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_admin_key_reloads_and_may_score(client: TestClient, registry: Registry) -> None:
    before = _reloads(client, "ok")
    response = client.post("/v1/admin/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "reloaded": True, "model_version": registry.version, "previous_version": registry.version, "error": None,
    }  # fmt: skip
    assert client.post("/v1/score", json=EXAMPLE_REQUEST, headers=ADMIN).status_code == 200
    assert _reloads(client, "ok") == before + 1


# ---- validation: 422 naming the field ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["employee_count", "annual_revenue"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_naming_the_field(client: TestClient, field: str, literal: str) -> None:
    text = json.dumps(example(**{field: 1})).replace(f'"{field}": 1', f'"{field}": {literal}')
    assert literal in text
    found = problems(post_raw(client, text))
    assert list(found) == [f"body.lead.{field}"]
    assert "finite number" in found[f"body.lead.{field}"]


@pytest.mark.parametrize(
    ("where", "value"), [("created_at", "2025-02-30T10:00:00Z"), ("mql_at", "2025-13-01"), ("won_at", "yesterday")]
)
def test_impossible_dates_are_422(client: TestClient, where: str, value: str) -> None:
    found = problems(client.post("/v1/score", json=example(**{where: value}), headers=SCORING))
    assert f"body.lead.{where}" in found


@pytest.mark.parametrize("stamp", ["1900-01-01T00:00:00Z", "2150-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"])
def test_times_outside_1970_to_2100_are_422(client: TestClient, stamp: str) -> None:
    body = example()
    body["activities"][0]["occurred_at"] = stamp
    body["as_of"] = stamp
    found = problems(client.post("/v1/score", json=body, headers=SCORING))
    assert set(found) == {"body.activities.0.occurred_at", "body.as_of"}
    assert all("must lie between 1970-01-02 and 2100-01-01" in msg for msg in found.values())


def test_unknown_activity_type_lists_the_accepted_values(client: TestClient) -> None:
    body = example()
    body["activities"][1]["activity_type"] = "carrier_pigeon"
    found = problems(client.post("/v1/score", json=body, headers=SCORING))
    message = found["body.activities.1.activity_type"]
    assert "'page_view'" in message and "'demo_request'" in message and "'unsubscribe'" in message


@pytest.mark.parametrize(
    ("lead", "message"),
    [
        ({"mql_at": "2025-05-20T10:00:00Z", "sql_at": "2025-05-10T10:00:00Z"}, "sql_at is earlier than mql_at"),
        ({"created_at": "2025-06-01T00:00:00Z"}, "mql_at is earlier than created_at"),
        ({"recycled_at": "2025-05-25T10:00:00Z"}, "recycled_at needs lost_at"),
    ],
)
def test_lifecycle_out_of_order_is_422(client: TestClient, lead: dict[str, str], message: str) -> None:
    found = problems(client.post("/v1/score", json=example(**lead), headers=SCORING))
    assert message in found["body.lead"]


def test_activity_of_an_unknown_colleague_is_422(client: TestClient) -> None:
    body = example()
    body["activities"][3]["lead_id"] = "L-9999"
    found = problems(client.post("/v1/score", json=body, headers=SCORING))
    assert "activities[3].lead_id 'L-9999' is neither the lead nor a colleague" in found["body"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda b: b["lead"].update(favourite_colour="teal"), "body.lead.favourite_colour"),
        (lambda b: b.update(priority="high"), "body.priority"),
        (lambda b: b["activities"][0].update(channel="web"), "body.activities.0.channel"),
    ],
)
def test_unknown_fields_are_422(client: TestClient, change: Any, where: str) -> None:
    body = example()
    change(body)
    found = problems(client.post("/v1/score", json=body, headers=SCORING))
    assert found[where] == "Extra inputs are not permitted"


def test_custom_attribute_may_not_replace_a_lead_field(client: TestClient) -> None:
    # Was a 500: record() put custom attributes over the validated fields and the feature code met a string.
    found = problems(client.post("/v1/score", json=example(custom={"employee_count": "lots"}), headers=SCORING))
    assert "custom attribute 'employee_count' is a lead field" in found["body.lead.custom"]


def test_custom_attributes_must_be_declared_in_the_models_contract(client: TestClient) -> None:
    # The default contract declares no custom attributes: any is refused by name (a typed one would be checked).
    found = problems(client.post("/v1/score", json=example(custom={"crm_tier": "gold"}), headers=SCORING))
    assert "not a declared custom attribute" in found["body.lead.custom.crm_tier"]


def test_unpaired_surrogate_is_422_not_500(client: TestClient) -> None:
    # Was a 500: FastAPI's handler echoed the input back and could not encode it as UTF-8.
    text = json.dumps(example(industry="PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800")
    found = problems(post_raw(client, text))
    assert "body.lead.industry" in found


def test_malformed_json_is_422(client: TestClient) -> None:
    assert post_raw(client, '{"lead": {').status_code == 422


# ---- limits -----------------------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = service(client).settings.max_body_bytes
    body = example(job_title="x" * 200)
    body["activities"] = [{"occurred_at": "2025-05-02T09:15:00Z", "activity_type": "page_view"}] * (limit // 60)
    text = json.dumps(body)
    assert len(text) > limit
    response = post_raw(client, text)
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body exceeds the limit of {limit} bytes"}
    # Counted under its route, though refused before routing (it was "unmatched").
    assert 'leadscore_http_requests_total{route="/v1/score",status="413"}' in client.get("/metrics", headers=ADMIN).text


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    # Was a 400: without Content-Length the limit is hit while FastAPI reads the body, which turned it into 400.
    limit = service(client).settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65_536 + 2):
            yield b" " * 65_536

    response = client.post("/v1/score", content=chunks(), headers={**SCORING, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body exceeds the limit of {limit} bytes"}


def test_batch_over_the_limit_is_422(client: TestClient) -> None:
    limit = service(client).settings.max_batch
    leads = [minimal(f"L-{i}") for i in range(limit + 1)]
    found = problems(client.post("/v1/score/batch", json={"leads": leads}, headers=SCORING))
    assert found == {"body.leads": f"at most {limit} leads per batch, got {limit + 1}"}


def test_empty_batch_is_422(client: TestClient) -> None:
    assert "body.leads" in problems(client.post("/v1/score/batch", json={"leads": []}, headers=SCORING))


def test_too_many_activities_is_422_naming_the_lead(client: TestClient) -> None:
    limit = service(client).settings.max_activities
    body = minimal("L-busy")
    body["activities"] = [{"occurred_at": "2025-05-02T09:15:00Z", "activity_type": "email_open"}] * (limit + 1)
    found = problems(client.post("/v1/score/batch", json={"leads": [minimal("L-ok"), body]}, headers=SCORING))
    assert found == {"body.leads.1.activities": f"at most {limit} activities per lead"}


# ---- service routes ---------------------------------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient, registry: Registry) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz", headers=ADMIN)
    assert ready.status_code == 200
    details = ready.json()
    assert details["ready"] is True and details["model_version"] == registry.version
    assert details["last_reload_error"] is None and details["thresholds_error"] is None
    assert details["score_log"]["journal_error"] is None and details["score_log"]["rejected"] == 0


def test_health_details_and_metrics_need_a_monitoring_or_admin_key(client: TestClient) -> None:
    # A probe gets the status without a key; what the service runs on, and business volumes, need one.
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {
        "ready": True, "model_version": None, "last_reload_error": None, "thresholds_error": None, "score_log": None,
    }  # fmt: skip
    assert client.get("/readyz", headers=SCORING).json()["score_log"] is None  # a CRM's key is no monitoring key
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=SCORING).status_code == 401
    assert client.get("/metrics", headers=ADMIN).status_code == 200
    # Prometheus sends its credentials as a bearer token.
    bearer = {"Authorization": f"Bearer {ADMIN['X-API-Key']}"}
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN['X-API-Key'][:-1]}"}).status_code == 401


def test_metrics_count_requests_and_routes(client: TestClient) -> None:
    queue = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()["route"]["queue"]
    text = client.get("/metrics", headers=ADMIN).text
    assert 'leadscore_http_requests_total{route="/v1/score",status="200"}' in text
    assert f'leadscore_routes_total{{queue="{queue}"}}' in text
    assert "leadscore_http_request_seconds_bucket" in text and "leadscore_score_bucket" in text


def test_model_info_reports_version_and_metrics(client: TestClient, registry: Registry, trained: Trained) -> None:
    response = client.get("/v1/model", headers=SCORING)
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["name"], info["alias"], info["version"]) == ("lead-scorer", "champion", registry.version)
    assert info["thresholds_version"] == service(client).policy().version
    expected = trained.result.scorer.metadata["metrics"]
    for task in ("readiness", "fit"):
        assert info["holdout_metrics"][task]["roc_auc"] == pytest.approx(expected[task]["roc_auc"])
        assert info["holdout_metrics"][task]["n"] > 0
    assert info["features"]["fit"] and info["features"]["engagement"]


def test_model_info_lists_the_quality_warnings_training_logged(client: TestClient, trained: Trained) -> None:
    info = client.get("/v1/model", headers=SCORING).json()
    expected = [w.message for w in quality_warnings(trained.result)]
    assert info["quality_warnings"] == expected
    # The session's small funnel holds too few wins to judge its fit model: the service must say so.
    if trained.result.fit.metrics["model"]["positives"] < MIN_HOLDOUT_POSITIVES:
        assert any(message.startswith("fit model: ") for message in info["quality_warnings"])


def test_a_demo_request_made_this_very_second_counts_in_a_score_as_of_now(client: TestClient) -> None:
    """A CRM (or the rescore on change) scoring a lead the moment its demo request arrives sees that request."""
    now = dt.datetime.now(dt.UTC)
    lead = {"lead_id": "L-fresh", "created_at": (now - dt.timedelta(days=3)).isoformat(), "seniority": "director"}
    demo = {"occurred_at": now.isoformat(), "activity_type": "demo_request"}
    before = client.post("/v1/score", json={"lead": lead, "activities": []}, headers=SCORING).json()
    fresh = client.post("/v1/score", json={"lead": lead, "activities": [demo]}, headers=SCORING).json()
    assert fresh["readiness"]["probability"] > before["readiness"]["probability"]
    assert any(r["group"] == "demo_request" for r in fresh["reasons"]["behaviour"]), fresh["reasons"]
    # An explicit as_of is point in time as ever: a touch of as_of's own second is not counted.
    at = now.replace(microsecond=500_000)
    same_second = {"occurred_at": at.replace(microsecond=0).isoformat(), "activity_type": "demo_request"}
    explicit = client.post("/v1/score", json={"lead": lead, "activities": [same_second], "as_of": at.isoformat()},
                           headers=SCORING).json()  # fmt: skip
    assert not any(r["group"] == "demo_request" for r in explicit["reasons"]["behaviour"])


def test_scoring_as_of_now_counts_what_is_known_and_ignores_what_is_ahead() -> None:
    now = dt.datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    assert counting_now(now, []) == now
    assert counting_now(now, [now - dt.timedelta(hours=1)]) == now  # counted long ago
    assert counting_now(now, [now]) == dt.datetime(2025, 6, 1, 12, 0, 2, tzinfo=dt.UTC)
    on_the_second = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert counting_now(now, [on_the_second]) == dt.datetime(2025, 6, 1, 12, 0, 1, tzinfo=dt.UTC)
    assert counting_now(now, [now + dt.timedelta(hours=2)]) == now  # a touch ahead of the clock waits for its time
