"""API keys are matched whole: a prefix, an extension or an empty value of a valid key opens nothing."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import ADMIN, ADMIN_KEY, SCORING, SCORING_KEY

# Routes a scoring key opens, each with a valid body so that only the key decides the answer.
SCORING_ROUTES = [
    ("POST", "/v1/score", EXAMPLE_REQUEST),
    ("POST", "/v1/score/batch", {"leads": [EXAMPLE_REQUEST]}),
    ("GET", "/v1/model", None),
    ("GET", "/v1/thresholds", None),
]
# Near misses of a real key: what a key check comparing only part of the key, or only up to the shorter of the two
# lengths, would let in. None of them is a key.
NEAR_MISSES = {
    "scoring key less its last character": SCORING_KEY[:-1],
    "first character of the scoring key": SCORING_KEY[:1],
    "half the scoring key": SCORING_KEY[: len(SCORING_KEY) // 2],
    "scoring key with a character appended": SCORING_KEY + "x",
    "scoring key twice": SCORING_KEY * 2,
    "admin key less its last character": ADMIN_KEY[:-1],
    "first character of the admin key": ADMIN_KEY[:1],
    "admin key with a character appended": ADMIN_KEY + "x",
    "empty key": "",
}


def call(client: TestClient, method: str, path: str, body: dict[str, Any] | None, key: str) -> int:
    status: int = client.request(method, path, json=body, headers={"X-API-Key": key}).status_code
    return status


@pytest.mark.parametrize(("method", "path", "body"), SCORING_ROUTES)
@pytest.mark.parametrize("headers", [SCORING, ADMIN], ids=["scoring key", "admin key"])
def test_the_whole_key_opens_the_scoring_routes(
    client: TestClient, headers: dict[str, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    # The control for the near misses below: the same requests succeed with the real keys.
    assert call(client, method, path, body, headers["X-API-Key"]) == 200


@pytest.mark.parametrize(("method", "path", "body"), SCORING_ROUTES)
@pytest.mark.parametrize("key", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_a_near_miss_of_a_key_may_not_score(
    client: TestClient, key: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    assert call(client, method, path, body, key) == 401


@pytest.mark.parametrize("key", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_a_near_miss_of_a_key_may_not_reload(client: TestClient, key: str) -> None:
    # 401, not 403: a near miss of the scoring key is no scoring key either.
    response = client.post("/v1/admin/reload", headers={"X-API-Key": key})
    assert response.status_code == 401, response.text
    assert "X-API-Key" in response.json()["detail"]


@pytest.mark.parametrize(
    "key", [ADMIN_KEY[:-1], ADMIN_KEY[:1], ADMIN_KEY + "x", ""], ids=["less last", "first char", "appended", "empty"]
)
def test_a_near_miss_of_the_admin_key_may_not_change_thresholds(client: TestClient, key: str) -> None:
    # The body is the policy in force, so that only the key decides (and a wrongly accepted key changes nothing).
    policy = client.get("/v1/thresholds", headers=SCORING).json()["policy"]
    response = client.put("/v1/thresholds", json={"policy": policy, "reason": "auth test"}, headers={"X-API-Key": key})
    assert response.status_code == 401, response.text
