"""Inputs built to hurt: deep nesting, control characters, padding, huge values. Each gets a worded 4xx, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from serving.schemas import MAX_PROPERTY_DEPTH
from serving.store import score_log
from tests.serving.conftest import SCORING
from tests.serving.test_api import example, problems, service

JSON = {**SCORING, "Content-Type": "application/json"}


def nested(depth: int) -> dict[str, Any]:
    """A properties object `depth` levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def with_properties(properties: object) -> dict[str, Any]:
    body = example()
    body["activities"][0]["properties"] = properties
    return body


def test_touch_properties_may_nest_up_to_the_limit_and_no_deeper(client: TestClient) -> None:
    fine = client.post("/v1/score", json=with_properties(nested(MAX_PROPERTY_DEPTH)), headers=SCORING)
    assert fine.status_code == 200, fine.text
    refused = client.post("/v1/score", json=with_properties(nested(MAX_PROPERTY_DEPTH + 1)), headers=SCORING)
    assert problems(refused) == {
        "body.activities.0.properties": f"Value error, nested deeper than {MAX_PROPERTY_DEPTH} levels"
    }
    listed = client.post("/v1/score", json=with_properties({"items": [[[[[[[[[[[1]]]]]]]]]]]}), headers=SCORING)
    assert "body.activities.0.properties" in problems(listed)


def _deep_body(levels: int) -> str:
    text = json.dumps(with_properties({"x": "__DEEP__"}))
    return text.replace('"__DEEP__"', '{"a":' * levels + "1" + "}" * levels)


def test_a_body_nested_beyond_any_parser_gets_a_422_on_both_paths(client: TestClient) -> None:
    deep = _deep_body(1000)
    # With a Content-Length (the fast path reads it first) ...
    answered = client.post("/v1/score", content=deep, headers=JSON)
    assert answered.status_code == 422, answered.text
    assert "nested" in answered.text

    # ... and chunked, which goes to FastAPI's own parser.
    def chunks() -> Iterator[bytes]:
        yield deep.encode()

    chunked = client.post("/v1/score", content=chunks(), headers=JSON)
    assert chunked.status_code == 422, chunked.text
    assert "nested too deeply" in chunked.text


def test_control_characters_in_ids_are_refused_naming_the_field(client: TestClient) -> None:
    for field, value in (("lead_id", "L-1\x00"), ("account_id", "ACME\x1b[31m")):
        refused = client.post("/v1/score", json=example(**{field: value}), headers=SCORING)
        assert problems(refused) == {f"body.lead.{field}": "Value error, must not contain control characters "
                                                            "(U+0000 to U+001F, U+007F)"}  # fmt: skip


def test_a_body_padded_with_white_space_is_logged_without_it(client: TestClient) -> None:
    compact = json.dumps(example(lead_id="L-padded"), separators=(",", ":"))
    padded = compact.replace(",", "," + " " * 50_000).replace(":", ":\n" + "\t" * 20_000, 3)
    assert len(padded) > 1_000_000
    response = client.post("/v1/score", content=padded, headers=JSON)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    log = service(client).score_log
    [record] = log.read(request_id=request_id)
    assert record.inputs == json.loads(compact)  # the request exactly
    with log.engine.connect() as conn:  # as stored: its content, not its padding
        stored = conn.execute(select(score_log.c.inputs).where(score_log.c.request_id == request_id)).scalar_one()
    assert len(stored) == len(compact)


def test_a_422_shows_a_huge_input_cut_short(client: TestClient) -> None:
    huge = "x" * 1_500_000
    refused: httpx.Response = client.post("/v1/score", json=example(industry=huge), headers=SCORING)
    assert refused.status_code == 422
    assert len(refused.content) < 5_000
    [problem] = refused.json()["detail"]
    assert problem["loc"] == ["body", "lead", "industry"] and "1,500,000 characters" in problem["input"]
