"""The Python client (leadscore.client) against the real service in-process: its answers parse into the typed models.

Here rather than in tests/leadscore because it needs the serving fixtures (a registered model and the app).
"""

from __future__ import annotations

import copy
from typing import cast

import pytest
from fastapi.testclient import TestClient

from leadscore.client import (
    LeadscoreClient,
    LeadscoreHTTPError,
    LeadscoreInputError,
    Retry,
    ScoreRequestBody,
    ScoreResponse,
)
from serving.schemas import EXAMPLE_REQUEST
from tests.factories import activities_frame, lead, leads_frame
from tests.serving.conftest import SCORING_KEY


def _client(client: TestClient, api_key: str | None = SCORING_KEY, **kwargs: object) -> LeadscoreClient:
    return LeadscoreClient(http=client, api_key=api_key, retry=Retry(attempts=1), **kwargs)  # type: ignore[arg-type]


def test_tables_are_scored_and_answers_parse_into_the_typed_models(client: TestClient) -> None:
    leads = leads_frame(
        lead("C1", account_id="acme", created_at="2025-01-06T10:00:00Z", mql_at="2025-01-20T09:00:00Z"),
        lead("C2", account_id="acme", created_at="2025-01-10T08:00:00Z", industry=None, employee_count=None),
        lead("C3", account_id="globex", created_at="2025-01-08T12:00:00Z"),
    )
    activities = activities_frame(
        ("C1", "2025-01-07T10:00:00Z", "page_view"),
        ("C1", "2025-01-28T10:00:00Z", "demo_request"),
        ("C2", "2025-01-27T09:00:00Z", "webinar_attended"),
        ("C3", "2025-01-09T10:00:00Z", "email_open"),
    )
    # Batches of two: the three leads take two batch requests.
    answers = _client(client, batch_size=2).score_tables(leads, activities, as_of="2025-02-01T00:00:00Z")
    assert [a.lead_id for a in answers] == ["C1", "C2", "C3"]
    for answer in answers:
        assert isinstance(answer, ScoreResponse)
        assert 0 <= answer.fit.probability <= 1 and 0 <= answer.readiness.score <= 100
        assert answer.route.queue in {"sales", "sdr", "nurture", "disqualify"}
        assert answer.reasons.fit or answer.reasons.behaviour
    assert answers[0].request_id == answers[1].request_id != answers[2].request_id  # one id per batch request


def test_one_lead_is_scored(client: TestClient) -> None:
    answer = _client(client).score(cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST)))
    assert answer.lead_id == EXAMPLE_REQUEST["lead"]["lead_id"]
    assert answer.model_version and answer.thresholds_version >= 1


def test_the_services_422_names_the_field_and_the_lead(client: TestClient) -> None:
    bad = cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST))
    bad["activities"][1]["activity_type"] = "carrier_pigeon"
    good = cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST))
    good["lead"]["lead_id"] = "L-2000"
    with pytest.raises(LeadscoreInputError) as raised:
        _client(client).score_batch([good, bad])
    [problem] = raised.value.problems
    assert problem.path == ("body", "leads", 1, "activities", 1, "activity_type")
    assert problem.lead_id == "L-1042" and "page_view" in problem.message


def test_a_wrong_key_is_refused_without_retrying(client: TestClient) -> None:
    with pytest.raises(LeadscoreHTTPError) as raised:
        LeadscoreClient(http=client, api_key="wrong", retry=Retry(attempts=3, backoff=5.0)).score(
            cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST))
        )
    assert raised.value.status_code == 401


def test_per_item_batches_score_the_valid_leads_and_refuse_the_others_with_their_fields(client: TestClient) -> None:
    good = [cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST)) for _ in range(3)]
    for i, request in enumerate(good):
        request["lead"]["lead_id"] = f"L-{3000 + i}"
    bad = cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST))
    bad["lead"]["lead_id"] = "L-bad"
    bad["activities"][1]["activity_type"] = "carrier_pigeon"
    # Batches of two: the refused lead is the second of the second batch, the fourth request.
    results = _client(client, batch_size=2).score_items([good[0], good[1], good[2], bad])
    assert [(r.index, r.lead_id, r.status) for r in results] == [
        (0, "L-3000", "scored"), (1, "L-3001", "scored"), (2, "L-3002", "scored"), (3, "L-bad", "refused"),
    ]  # fmt: skip
    scores = [r.score for r in results if r.score is not None]
    assert all(isinstance(s, ScoreResponse) for s in scores)
    assert [s.lead_id for s in scores] == ["L-3000", "L-3001", "L-3002"]
    assert scores[0].request_id == scores[1].request_id != scores[2].request_id  # one request id per batch request
    [problem] = results[3].problems
    assert problem.loc == ("body", "leads", 3, "activities", 1, "activity_type") and "page_view" in problem.msg
    # The same leads all or nothing: the batch holding the invalid lead is refused whole.
    with pytest.raises(LeadscoreInputError) as raised:
        _client(client, batch_size=2).score_batch([good[0], good[1], good[2], bad])
    assert [a.lead_id for a in raised.value.answered] == ["L-3000", "L-3001"]
    assert [p.path for p in raised.value.problems] == [("body", "leads", 3, "activities", 1, "activity_type")]


def test_per_item_scores_are_in_the_score_log(client: TestClient) -> None:
    request = cast(ScoreRequestBody, copy.deepcopy(EXAMPLE_REQUEST))
    request["lead"]["lead_id"] = "L-items-logged"
    [result] = _client(client).score_items([request])
    assert result.score is not None
    state = client.app.state.service  # type: ignore[attr-defined]
    [record] = state.score_log.read(lead_id="L-items-logged")
    assert record.request_id == result.score.request_id
