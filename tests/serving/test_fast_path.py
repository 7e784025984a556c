"""The fast path of the score routes: canonical twins of the request models, grouped single-lead scoring, batch JSON."""

from __future__ import annotations

import asyncio
import copy
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.schemas import (
    EXAMPLE_REQUEST,
    Activity,
    BatchRequest,
    BatchResponse,
    CanonicalActivity,
    CanonicalBatchRequest,
    CanonicalLead,
    CanonicalScoreRequest,
    Lead,
    ScoreRequest,
    ScoreResponse,
    parse_canonical,
)
from serving.service import Coalescer, batch_json
from serving.state import ServiceState
from tests.serving.conftest import ADMIN, SCORING

# Spellings of times and activity types: canonical ones, ones only the reference models accept, and wrong ones.
STAMPS = [
    "2025-05-02T09:15:00Z", "2025-05-02T09:15:00+00:00", "2025-05-02T09:15:00.123456Z", "2025-05-02 09:15:00Z",
    "2025-05-02T09:15:00", "2025-05-02T11:15:00+02:00", "2025-05-02", 1746177300, 1746177300.5, "1970-01-02T00:00:00Z",
    "1970-01-01T23:59:59Z", "2100-01-01T00:00:00Z", "2100-01-01T00:00:00.000001Z", "2025-02-30T10:00:00Z", "",
    "yesterday", None, "2025-05-02T09:15:00-00:00", "2025-05-02T09:15:00.1234567Z", "2025-05-02T09:15:00 Z",
]  # fmt: skip
TYPES = ["demo_request", "Demo Request", "page-view", " email_open ", "PRICING_PAGE_VIEW", "carrier_pigeon", "", 3]
IDS = ["L-1042", "L-1043", " L-1042 ", "L-9999", None, "", "x" * 300]
NUMBERS = [None, 0, 850, -1, 10_000_001, 1.5, 3.0, "850", True, 1e13, 2e13]
TEXTS = [None, "Software", "  Software  ", "\u2003Software\x85", "\x1cSoftware", "", "x" * 300, 5, "\u00e9t\u00e9"]

touch = st.fixed_dictionaries(
    {"occurred_at": st.sampled_from(STAMPS), "activity_type": st.sampled_from(TYPES)},
    optional={
        "lead_id": st.sampled_from(IDS),
        "properties": st.sampled_from([None, {}, {"page": "/pricing"}, {" page ": " /pricing "}, 3]),
    },
)
person = st.fixed_dictionaries(
    {"lead_id": st.sampled_from(["L-1042", "L-1043", "L-1044"]), "created_at": st.sampled_from(STAMPS)},
    optional={
        "account_id": st.sampled_from(IDS),
        "industry": st.sampled_from(TEXTS),
        "employee_count": st.sampled_from(NUMBERS),
        "annual_revenue": st.sampled_from(NUMBERS),
        "mql_at": st.sampled_from(STAMPS),
        "sql_at": st.sampled_from(STAMPS),
        "lost_at": st.sampled_from(STAMPS),
        "recycled_at": st.sampled_from(STAMPS),
        "custom": st.sampled_from(
            [{}, {"tier": "gold"}, {" tier ": " gold "}, {"tier": 1, " tier": 2}, {"employee_count": 5}]
        ),
        "favourite_colour": st.just("teal"),
    },
)
request = st.fixed_dictionaries(
    {"lead": person},
    optional={
        "activities": st.lists(touch, max_size=4),
        "colleagues": st.lists(person, max_size=2),
        "as_of": st.sampled_from(STAMPS),
        "priority": st.just("high"),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=request)
def test_what_the_canonical_twin_accepts_the_reference_model_accepts_to_the_same_values(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    canonical = parse_canonical(CanonicalScoreRequest, raw)
    try:
        reference = ScoreRequest.model_validate(json.loads(raw))  # what FastAPI does with the body
    except ValidationError:
        assert canonical is None, "the fast path accepted a request the API refuses"
        return
    if canonical is not None:
        assert json.loads(msgspec.json.encode(canonical)) == reference.model_dump(mode="json")


def _same_verdict(body: dict[str, Any]) -> dict[str, Any] | None:
    """The twin's reading of `body`, asserted to agree with the reference model's (None: the twin hands it over)."""
    raw = json.dumps(body).encode()
    canonical = parse_canonical(CanonicalScoreRequest, raw)
    try:
        reference = ScoreRequest.model_validate(json.loads(raw)).model_dump(mode="json")
    except ValidationError:
        assert canonical is None, "the fast path accepted a request the API refuses"
        return None
    if canonical is not None:
        assert json.loads(msgspec.json.encode(canonical)) == reference
    return reference


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({"occurred_at": "2100-01-01T00:00:00.000001Z"}, False),  # after the latest time the API takes
        ({"occurred_at": "1969-12-31T23:59:59Z"}, False),  # before the earliest
        ({"occurred_at": "2025-05-02T11:15:00+02:00"}, True),  # another zone: the reference way, same instant
        ({"lead_id": "L-1042"}, True),  # the lead's own id, named
        ({"lead_id": " L-1042 "}, True),  # named with white space the reference strips
        ({"lead_id": "L-9999"}, False),  # neither the lead nor a colleague
        ({"properties": {" page ": " /pricing "}}, True),  # keys stripped as the reference strips them
        ({"properties": {"page": 1, " page": 2}}, True),  # keys that collide once stripped: the reference decides
    ],
)
def test_every_touch_is_checked_as_the_reference_model_checks_it(change: dict[str, Any], accepted: bool) -> None:
    # The last of several touches differs: what the twin checks for all touches at once must still catch it.
    body = copy.deepcopy(EXAMPLE_REQUEST)
    body["activities"][-1].update(change)
    assert (_same_verdict(body) is not None) == accepted


def test_the_documented_example_takes_the_fast_path_and_crm_spellings_do_not() -> None:
    raw = json.dumps(EXAMPLE_REQUEST).encode()
    assert parse_canonical(CanonicalScoreRequest, raw) is not None
    assert parse_canonical(CanonicalBatchRequest, json.dumps({"leads": [EXAMPLE_REQUEST] * 3}).encode()) is not None
    spelt = copy.deepcopy(EXAMPLE_REQUEST)
    spelt["activities"][0]["activity_type"] = "Content Download"
    assert parse_canonical(CanonicalScoreRequest, json.dumps(spelt).encode()) is None
    ScoreRequest.model_validate(spelt)  # still valid: the reference models score it
    assert parse_canonical(CanonicalBatchRequest, json.dumps({"leads": []}).encode()) is None
    assert parse_canonical(CanonicalScoreRequest, b'{"lead": {') is None


def test_answers_are_exactly_the_documented_response_models(client: TestClient) -> None:
    spelt = copy.deepcopy(EXAMPLE_REQUEST)
    spelt["activities"][0]["activity_type"] = "Content Download"  # the reference way
    won = copy.deepcopy(EXAMPLE_REQUEST)
    won["lead"].update(sql_at="2025-05-25T10:00:00Z", won_at="2025-06-01T12:00:00Z")  # readiness null
    won_spelt = copy.deepcopy(won)
    won_spelt["activities"][0]["activity_type"] = "Content Download"
    for body in (EXAMPLE_REQUEST, spelt, won, won_spelt):
        for path, payload, model in (
            ("/v1/score", body, ScoreResponse),
            ("/v1/score/batch", {"leads": [body, EXAMPLE_REQUEST]}, BatchResponse),
        ):
            raw = client.post(path, json=payload, headers=SCORING).content
            # Same keys, values and types as the model declares: nothing missing, nothing extra.
            assert json.loads(raw) == json.loads(model.model_validate_json(raw).model_dump_json())
    assert json.loads(batch_json("r", [])) == {"request_id": "r", "scores": []}


def test_a_batch_is_logged_with_the_reference_models_normal_form(client: TestClient) -> None:
    leads = [copy.deepcopy(EXAMPLE_REQUEST) for _ in range(2)]
    leads[1]["activities"][0]["activity_type"] = "Content Download"  # this batch goes the reference way
    for batch in ({"leads": leads[:1]}, {"leads": leads}):
        scored = client.post("/v1/score/batch", json=batch, headers=SCORING).json()
        state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
        logged = state.score_log.read(request_id=scored["request_id"])
        expected = BatchRequest.model_validate(batch).model_dump(mode="json")["leads"]
        assert [r.inputs for r in logged] == expected


def test_concurrent_single_requests_get_their_own_answers_and_log_records(client: TestClient) -> None:
    bodies = [copy.deepcopy(EXAMPLE_REQUEST) for _ in range(12)]
    for i, body in enumerate(bodies):
        body["lead"]["lead_id"] = f"C-{i}"
        body["lead"]["employee_count"] = 10 + 97 * i
        body["activities"] = body["activities"][: i % 4]
    alone = [client.post("/v1/score", json=b, headers=SCORING).json() for b in bodies]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda b: client.post("/v1/score", json=b, headers=SCORING).json(), bodies))
    assert len({r["request_id"] for r in together}) == len(bodies)
    for one, grouped in zip(alone, together, strict=True):
        assert {k: v for k, v in grouped.items() if k not in ("request_id", "scored_at")} == {
            k: v for k, v in one.items() if k not in ("request_id", "scored_at")
        }
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    for body, scored in zip(bodies, together, strict=True):
        [record] = state.score_log.read(request_id=scored["request_id"])
        assert record.inputs == body and record.outputs == scored


def test_coalescer_groups_waiting_calls_and_a_bad_item_fails_alone() -> None:
    groups: list[list[int]] = []

    async def work(items: list[int]) -> list[int]:
        groups.append(items)
        if 13 in items:
            raise ValueError("unlucky")
        return [2 * item for item in items]

    async def scenario() -> list[int | str]:
        coalescer: Coalescer[int, int] = Coalescer()

        async def call(item: int) -> int | str:
            try:
                return await coalescer.run(item, work)
            except ValueError as err:
                return str(err)

        first = await asyncio.gather(*(call(i) for i in (1, 2, 3)))
        second = await asyncio.gather(*(call(i) for i in (4, 13, 5)))
        return [*first, *second, await call(6)]

    assert asyncio.run(scenario()) == [2, 4, 6, 8, "unlucky", 10, 12]
    assert groups == [[1, 2, 3], [4, 13, 5], [4], [13], [5], [6]]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-a-key"}])
def test_malformed_json_without_a_key_is_still_422_first(client: TestClient, headers: dict[str, str]) -> None:
    # FastAPI reads the body before it checks the key: the fast path leaves such requests to it.
    response = client.post("/v1/score", content='{"lead": {', headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def _fast_path_counts(client: TestClient) -> dict[str, float]:
    counts = {"answered": 0.0, "handed_over": 0.0}
    for line in client.get("/metrics", headers=ADMIN).text.splitlines():
        for outcome in counts:
            if line.startswith(f'leadscore_fast_path_total{{outcome="{outcome}"}}'):
                counts[outcome] = float(line.split()[-1])
    return counts


def test_canonical_requests_take_the_fast_path_and_the_rest_get_the_same_scores_from_fastapi(
    client: TestClient,
) -> None:
    spelt = copy.deepcopy(EXAMPLE_REQUEST)
    spelt["activities"][0]["activity_type"] = "Content Download"
    spelt["lead"]["industry"] = " Software "
    before = _fast_path_counts(client)
    fast = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()
    between = _fast_path_counts(client)
    slow = client.post("/v1/score", json=spelt, headers=SCORING).json()
    after = _fast_path_counts(client)
    assert between == {"answered": before["answered"] + 1, "handed_over": before["handed_over"]}
    assert after == {"answered": between["answered"], "handed_over": between["handed_over"] + 1}
    same = {k: v for k, v in fast.items() if k not in ("request_id", "scored_at")}
    assert same == {k: v for k, v in slow.items() if k not in ("request_id", "scored_at")}


def test_a_canonical_check_that_breaks_hands_the_request_over_instead_of_failing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: object) -> bool:
        raise RuntimeError("a bug in the twin")

    expected = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING).json()
    monkeypatch.setattr("serving.schemas._canonicalise", broken)
    before = _fast_path_counts(client)
    response = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING)
    assert response.status_code == 200
    assert response.json()["fit"] == expected["fit"] and response.json()["reasons"] == expected["reasons"]
    assert _fast_path_counts(client)["handed_over"] == before["handed_over"] + 1


@pytest.mark.parametrize(
    ("twin", "reference"),
    [
        (CanonicalLead, Lead),
        (CanonicalActivity, Activity),
        (CanonicalScoreRequest, ScoreRequest),
        (CanonicalBatchRequest, BatchRequest),
    ],
)
def test_each_twin_declares_the_fields_of_its_reference_model(twin: type[msgspec.Struct], reference: type) -> None:
    # A field added to a request model without its twin would send every request to the slow path (or worse).
    assert twin.__struct_fields__ == tuple(reference.model_fields)
