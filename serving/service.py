"""Scoring requests: features through the training code path, calibrated scores, routing, reasons, the score log."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import numpy as np

from features.reasons import Reason
from features.scoring import LeadScore
from serving.model import LoadedModel
from serving.policy import RoutingPolicy
from serving.schemas import (
    FitScore,
    ReadinessScore,
    ReasonOut,
    Reasons,
    Route,
    ScoreRequest,
    ScoreResponse,
)
from serving.store import PolicyVersion, ScoreRecord


def new_request_id() -> str:
    """A unique, sortable-enough id for one API call."""
    return uuid.uuid4().hex


def feature_row(model: LoadedModel, request: ScoreRequest, now: dt.datetime) -> np.ndarray:
    """The lead's feature row as of the request's as_of (default now), with the very code training used."""
    lead = request.lead.record()
    colleagues = [c.record() for c in request.colleagues]
    activities = [
        {
            "lead_id": a.lead_id or request.lead.lead_id,
            "occurred_at": a.occurred_at,
            "activity_type": a.activity_type,
        }
        for a in request.activities
    ]
    return model.scorer.builder.transform_records(lead, activities, request.as_of or now, colleagues)


def _reasons(reasons: Sequence[Reason]) -> list[ReasonOut]:
    return [ReasonOut(group=r.group, impact=r.impact, label=r.label) for r in reasons]


def to_response(
    score: LeadScore, policy: PolicyVersion, model: LoadedModel, request_id: str, scored_at: dt.datetime
) -> ScoreResponse:
    """Apply the routing policy to a lead's scores."""
    rules: RoutingPolicy = policy.policy
    grade = rules.grade(score.fit_score)
    stage = rules.stage(score.readiness_probability)
    cell, sla = rules.route(grade, stage)
    return ScoreResponse(
        request_id=request_id,
        lead_id=score.lead_id,
        fit=FitScore(probability=round(score.fit_probability, 6), score=score.fit_score, grade=grade),
        readiness=ReadinessScore(
            probability=round(score.readiness_probability, 6), score=score.readiness_score, stage=stage
        ),
        route=Route(queue=cell.queue, priority=cell.priority, sla_hours=sla),
        reasons=Reasons(fit=_reasons(score.fit_reasons), behaviour=_reasons(score.behaviour_reasons)),
        model_version=model.version,
        thresholds_version=policy.version,
        scored_at=scored_at,
    )


def score_requests(
    model: LoadedModel, policy: PolicyVersion, requests: Sequence[ScoreRequest], *, top_k: int, request_id: str
) -> list[ScoreResponse]:
    """Score many leads: one feature row each, then both boosters once for all rows (fast for batches)."""
    now = dt.datetime.now(dt.UTC)
    rows = np.vstack([feature_row(model, r, now) for r in requests])
    # One thread: on a busy 2-core box LightGBM's thread pool costs more than it saves for a few rows.
    threads = 1 if len(requests) < 64 else 0
    scores = model.scorer.score_features([r.lead.lead_id for r in requests], rows, top_k=top_k, threads=threads)
    return [to_response(s, policy, model, request_id, now) for s in scores]


def log_records(
    requests: Sequence[ScoreRequest], responses: Sequence[ScoreResponse], raw_inputs: Sequence[str] | None = None
) -> list[ScoreRecord]:
    """What the score log keeps for each scored lead: the full input (verbatim when given) and output, both versions."""
    inputs: Sequence[str | dict[str, object]] = raw_inputs or [req.model_dump(mode="json") for req in requests]
    return [
        ScoreRecord(
            request_id=resp.request_id,
            lead_id=resp.lead_id,
            scored_at=resp.scored_at,
            model_version=resp.model_version,
            thresholds_version=resp.thresholds_version,
            inputs=raw,
            outputs=resp.model_dump_json(),
        )
        for raw, resp in zip(inputs, responses, strict=True)
    ]
