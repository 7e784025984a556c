"""The service's answer for a scored lead: the routing policy in force, with the cut-offs of the lead's segment."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

import pytest

from features.scoring import LeadScore
from serving.model import LoadedModel
from serving.policy import RoutingPolicy
from serving.schemas import Lead
from serving.service import to_response
from serving.store import PolicyVersion
from tests.serving.test_policy import SEGMENTED

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
POLICY = PolicyVersion(
    version=7, created_at=NOW, author="ops", reason="segments", policy=RoutingPolicy.model_validate(SEGMENTED)
)
# to_response reads only the model's version; no scorer is needed to route given scores.
MODEL = LoadedModel(scorer=cast(Any, None), name="lead-scorer", alias="champion", version="3", run_id=None,
                    trained_at=None)  # fmt: skip


def answer(fit_score: float, readiness_probability: float, **lead: Any) -> dict[str, Any]:
    """The service's answer for a lead with these scores (its model grade and stage say A and nurture: ignored)."""
    score = LeadScore(
        lead_id="L-1", fit_probability=0.3, fit_score=fit_score, fit_grade="A",
        readiness_probability=readiness_probability, readiness_score=50.0, readiness_stage="nurture",
        fit_reasons=[], behaviour_reasons=[],
    )  # fmt: skip
    person = Lead.model_validate({"lead_id": "L-1", "created_at": "2025-01-06T10:00:00Z", **lead})
    scored = to_response(score, person, POLICY, MODEL, "req-1", NOW)
    body: dict[str, Any] = json.loads(scored.response)
    assert scored.queue == body["route"]["queue"] and scored.thresholds_version == body["thresholds_version"] == 7
    return body


@pytest.mark.parametrize(
    ("lead", "fit_score", "probability", "grade", "stage", "route"),
    [
        # The CRM's spelling of the region still finds the segment; its grade cut-offs make 88 a C.
        ({"region": " Emea", "source": "Organic Search"}, 88.0, 0.15, "C", "nurture",
         {"queue": "nurture", "priority": 5, "sla_hours": None, "segment": "region=emea"}),
        # The webinar segment's stage cut-offs make 0.15 an SQL.
        ({"region": "North America", "source": "Webinar"}, 88.0, 0.15, "A", "SQL",
         {"queue": "sales", "priority": 1, "sla_hours": 4.0, "segment": "source=webinar"}),
        ({"region": "North America", "source": "webinar"}, 60.0, 0.07, "B", "MQL",
         {"queue": "sdr", "priority": 3, "sla_hours": 24.0, "segment": "source=webinar"}),
        # No segment: the policy's own cut-offs.
        ({"region": "North America", "source": "organic search"}, 88.0, 0.15, "A", "nurture",
         {"queue": "nurture", "priority": 4, "sla_hours": None, "segment": None}),
        ({}, 60.0, 0.3, "B", "MQL", {"queue": "sdr", "priority": 3, "sla_hours": 24.0, "segment": None}),
    ],
)  # fmt: skip
def test_the_answer_grades_stages_and_routes_with_the_leads_segment(
    lead: dict[str, Any], fit_score: float, probability: float, grade: str, stage: str, route: dict[str, Any]
) -> None:
    body = answer(fit_score, probability, **lead)
    assert (body["fit"]["grade"], body["readiness"]["stage"]) == (grade, stage)
    assert body["route"] == route
    assert (body["fit"]["score"], body["readiness"]["probability"]) == (fit_score, probability)
