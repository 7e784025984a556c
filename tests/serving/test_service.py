"""The service's answer for a scored lead: the routing policy in force, with the cut-offs of the lead's segment."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

import pytest

from features.reasons import Reason
from features.scoring import LeadScore
from serving.model import LoadedModel
from serving.policy import RoutingPolicy
from serving.schemas import Lead
from serving.service import to_response
from serving.store import PolicyVersion
from tests.serving.test_policy import SEGMENTED

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
REASON = Reason(group="g", side="fit", impact=0.5, label="a reason")
POLICY = PolicyVersion(
    version=7, created_at=NOW, author="ops", reason="segments", policy=RoutingPolicy.model_validate(SEGMENTED)
)
# to_response reads only the model's version; no scorer is needed to route given scores.
MODEL = LoadedModel(scorer=cast(Any, None), name="lead-scorer", alias="champion", version="3", run_id=None,
                    trained_at=None)  # fmt: skip


def answer(fit_score: float, readiness_probability: float, lifecycle_stage: str = "mql", **lead: Any) -> dict[str, Any]:
    """The service's answer for a lead with these scores (its model grade and stage say A and nurture: ignored)."""
    score = LeadScore(
        lead_id="L-1", fit_probability=0.3, fit_score=fit_score, fit_grade="A",
        readiness_probability=readiness_probability, readiness_score=50.0, readiness_stage="nurture",
        fit_reasons=[REASON], behaviour_reasons=[REASON], lifecycle_stage=lifecycle_stage,
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


# A lead whose lifecycle stage is past the readiness question: routed by its stage, whatever its scores.
CLOSED = [
    ("won", {"sql_at": "2025-03-01T00:00:00Z", "won_at": "2025-05-20T09:00:00Z"},
     {"queue": "customer", "priority": 5, "sla_hours": None, "segment": None},
     "won on 2025-05-20: readiness applies to open leads only"),
    ("sql", {"sql_at": "2025-03-01T00:00:00Z"},
     {"queue": "owner", "priority": 3, "sla_hours": None, "segment": None},
     "sales-qualified (SQL) on 2025-03-01: readiness applies to open leads only"),
    ("requalified", {"sql_at": "2025-02-01T00:00:00Z", "lost_at": "2025-03-01T00:00:00Z",
                     "recycled_at": "2025-04-01T00:00:00Z", "requalified_at": "2025-05-01T00:00:00Z"},
     {"queue": "owner", "priority": 3, "sla_hours": None, "segment": None},
     "requalified (an opportunity again) on 2025-05-01: readiness applies to open leads only"),
    ("lost", {"sql_at": "2025-02-01T00:00:00Z", "lost_at": "2025-03-01T00:00:00Z"},
     {"queue": "nurture", "priority": 5, "sla_hours": None, "segment": None},
     "lost and not recycled on 2025-03-01: readiness applies to open leads only"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "stamps", "route", "note"), CLOSED)
def test_a_lead_past_the_readiness_question_is_routed_by_its_lifecycle_stage(
    stage: str, stamps: dict[str, str], route: dict[str, Any], note: str
) -> None:
    # Scores that would make an A-grade SQL, priority 1 in sales, in a segment: none of it applies.
    body = answer(95.0, 0.9, stage, region="North America", source="webinar", **stamps)
    assert body["readiness"] is None
    assert body["route"] == route
    assert body["lifecycle"] == {
        "stage": stage, "since": stamps[f"{stage}_at"], "readiness_applies": False, "note": note,
    }  # fmt: skip
    # Fit still speaks (expansion, win-back); behaviour reasons explain readiness, which says nothing here.
    assert body["fit"]["grade"] == "A" and body["fit"]["score"] == 95.0
    assert body["reasons"] == {
        "fit": [{"group": "g", "impact": 0.5, "label": "a reason"}],
        "behaviour": [],
        "context": [],
    }


@pytest.mark.parametrize(
    ("stage", "stamps"),
    [
        ("lead", {}),
        ("mql", {"mql_at": "2025-03-01T00:00:00Z"}),
        ("sal", {"mql_at": "2025-03-01T00:00:00Z", "sal_at": "2025-03-02T00:00:00Z"}),
        ("recycled", {"sql_at": "2025-02-01T00:00:00Z", "lost_at": "2025-03-01T00:00:00Z",
                      "recycled_at": "2025-04-01T00:00:00Z"}),
    ],
)  # fmt: skip
def test_an_open_lead_is_routed_by_its_scores_as_before(stage: str, stamps: dict[str, str]) -> None:
    body = answer(88.0, 0.9, stage, **stamps)
    assert body["readiness"] == {"probability": 0.9, "score": 50.0, "stage": "SQL"}
    assert body["route"] == {"queue": "sales", "priority": 1, "sla_hours": 4.0, "segment": None}
    since = stamps.get(f"{stage}_at", "2025-01-06T10:00:00Z")  # a new lead: since its creation
    assert body["lifecycle"] == {"stage": stage, "since": since, "readiness_applies": True, "note": None}
    assert len(body["reasons"]["behaviour"]) == 1


def test_a_closed_lead_keeps_its_score_out_of_the_readiness_figures() -> None:
    score = LeadScore(
        lead_id="L-1", fit_probability=0.3, fit_score=70.0, fit_grade="B", readiness_probability=0.2,
        readiness_score=40.0, readiness_stage="MQL", fit_reasons=[], behaviour_reasons=[], lifecycle_stage="won",
    )  # fmt: skip
    person = Lead.model_validate({"lead_id": "L-1", "created_at": "2025-01-06T10:00:00Z",
                                  "won_at": "2025-05-01T00:00:00Z"})  # fmt: skip
    scored = to_response(score, person, POLICY, MODEL, "req-1", NOW)
    assert (scored.queue, scored.fit_score, scored.readiness_score) == ("customer", 70.0, None)
