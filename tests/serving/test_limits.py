"""The service's default limits agree with each other on realistic leads, and a batch can be scored per item."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from leadscore.client import build_requests
from serving.settings import Settings
from tests.conftest import Trained
from tests.serving.conftest import SCORING
from tests.serving.test_api import example, minimal

# Room left in the body limit by a full batch of typical leads: leads vary, and a batch of heavy ones must fit too.
MARGIN = 0.15


def test_a_full_batch_of_realistic_leads_fits_the_body_limit(trained: Trained) -> None:
    """Leads as a CRM sends them (the client builds them from the contract's tables): with colleagues at the same
    account, every touch of theirs and their colleagues' before as_of, after a year and a half of history."""
    leads, activities = trained.leads, trained.activities
    as_of = activities["occurred_at"].max()
    requests = build_requests(leads, activities, as_of=as_of)
    sizes = np.array([len(json.dumps(r, separators=(",", ":"))) for r in requests])
    defaults = Settings.model_construct()
    rng = np.random.default_rng(0)
    # The heaviest of 20 random full batches.
    batch = max(sizes[rng.choice(len(sizes), defaults.max_batch, replace=False)].sum() for _ in range(20))
    assert batch < defaults.max_body_bytes * (1 - MARGIN), f"{batch:,} bytes for {defaults.max_batch} leads"
    assert any(r["colleagues"] for r in requests) and sizes.mean() > 1_000  # realistic: buying groups, histories


def _items(client: TestClient, leads: list[Any]) -> dict[str, Any]:
    response = client.post("/v1/score/batch/items", json={"leads": leads}, headers=SCORING)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_malformed_lead_is_refused_alone_in_the_per_item_mode(client: TestClient) -> None:
    bad_time = minimal("L-bad", created_at="2025-02-30T10:00:00Z")
    leads = [example(lead_id="L-a"), bad_time, "not a lead", minimal("L-c", employee_count=-5), minimal("L-d")]
    answer = _items(client, leads)
    assert (answer["scored"], answer["refused"]) == (2, 3)
    results = answer["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == ["scored", "refused", "refused", "refused", "scored"]
    assert [r["lead_id"] for r in results] == ["L-a", "L-bad", None, "L-c", "L-d"]
    assert results[0]["score"]["request_id"] == answer["request_id"] == results[4]["score"]["request_id"]
    assert {tuple(p["loc"]) for p in results[1]["problems"]} == {("body", "leads", 1, "lead", "created_at")}
    assert {tuple(p["loc"]) for p in results[3]["problems"]} == {("body", "leads", 3, "lead", "employee_count")}
    assert results[2]["problems"][0]["loc"] == ["body", "leads", 2]
    # The same leads, all or nothing: the whole batch is refused.
    whole = client.post("/v1/score/batch", json={"leads": leads}, headers=SCORING)
    assert whole.status_code == 422


def test_the_per_item_answer_scores_exactly_as_the_batch_does(client: TestClient) -> None:
    leads = [example(lead_id=f"L-{i}") for i in range(3)]
    batch = client.post("/v1/score/batch", json={"leads": leads}, headers=SCORING).json()["scores"]
    items = [r["score"] for r in _items(client, leads)["results"]]

    def comparable(score: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in score.items() if k not in ("request_id", "scored_at")}

    assert [comparable(s) for s in items] == [comparable(s) for s in batch]


def test_per_item_batches_keep_the_batch_limit(client: TestClient) -> None:
    limit = Settings.model_construct().max_batch
    response = client.post("/v1/score/batch/items", json={"leads": [{}] * (limit + 1)}, headers=SCORING)
    assert response.status_code == 422 and f"at most {limit} leads" in response.text


def test_per_item_scores_are_logged(client: TestClient) -> None:
    state = client.app.state.service  # type: ignore[attr-defined]
    answer = _items(client, [example(lead_id="L-logged"), {"lead": {}}])
    records = state.score_log.read(request_id=answer["request_id"])
    assert [r.lead_id for r in records] == ["L-logged"]
    assert isinstance(records[0].inputs, dict) and records[0].inputs["lead"]["lead_id"] == "L-logged"
