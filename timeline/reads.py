"""One stored lead as a CRM reads it back: profile, account, identities, recent touches, score and its history."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from timeline.engine import stored_time
from timeline.history import lead_record
from timeline.schema import accounts, identities, lead_scores, leads, rescore_queue, score_history, touches


@dataclass(frozen=True, slots=True)
class StoredTouch:
    """A stored touch as the lead's timeline shows it."""

    occurred_at: dt.datetime
    activity_type: str
    properties: dict[str, Any] | None
    activity_id: str | None
    anonymous_id: str | None
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HistoricScore:
    """One row of a lead's score history."""

    scored_at: dt.datetime
    cause: str
    fit_score: float
    grade: str
    readiness_probability: float | None
    readiness_score: float | None
    stage: str | None
    queue: str
    model_version: str
    thresholds_version: int


@dataclass(frozen=True, slots=True)
class LeadView:
    """Everything stored about one lead, newest first where it is a list."""

    lead: dict[str, Any]  # the score API's lead object
    updated_at: dt.datetime
    account_traits: dict[str, Any] | None
    anonymous_ids: list[str]
    touch_count: int
    touches: list[StoredTouch]
    score: dict[str, Any] | None  # the stored answer, as POST /v1/score gave it
    scored_at: dt.datetime | None
    rescore_pending: bool
    history: list[HistoricScore]


def lead_view(conn: Connection, lead_id: str, *, touch_limit: int, history_limit: int) -> LeadView | None:
    """The stored lead with its `touch_limit` latest touches and `history_limit` latest scores; None if not stored."""
    row = conn.execute(select(leads).where(leads.c.lead_id == lead_id)).first()
    if row is None:
        return None
    traits = None
    if row.account_id is not None:
        text = conn.execute(select(accounts.c.traits).where(accounts.c.account_id == row.account_id)).scalar()
        traits = json.loads(text) if text else None
    anonymous = conn.execute(
        select(identities.c.anonymous_id).where(identities.c.lead_id == lead_id).order_by(identities.c.first_seen_at)
    ).scalars()
    count = conn.execute(select(func.count()).select_from(touches).where(touches.c.lead_id == lead_id)).scalar_one()
    recent = conn.execute(
        select(touches)
        .where(touches.c.lead_id == lead_id)
        .order_by(touches.c.occurred_at.desc(), touches.c.id.desc())
        .limit(touch_limit)
    )
    score = conn.execute(select(lead_scores).where(lead_scores.c.lead_id == lead_id)).first()
    pending = conn.execute(select(rescore_queue.c.lead_id).where(rescore_queue.c.lead_id == lead_id)).first()
    history = conn.execute(
        select(score_history)
        .where(score_history.c.lead_id == lead_id)
        .order_by(score_history.c.scored_at.desc(), score_history.c.id.desc())
        .limit(history_limit)
    )
    return LeadView(
        lead=lead_record(row),
        updated_at=stored_time(row.updated_at),
        account_traits=traits,
        anonymous_ids=list(anonymous),
        touch_count=count,
        touches=[
            StoredTouch(
                occurred_at=stored_time(t.occurred_at),
                activity_type=t.activity_type,
                properties=json.loads(t.properties) if t.properties else None,
                activity_id=t.activity_id,
                anonymous_id=t.anonymous_id,
                received_at=stored_time(t.received_at),
            )
            for t in recent
        ],
        score=None if score is None else json.loads(score.response),
        scored_at=None if score is None else stored_time(score.scored_at),
        rescore_pending=pending is not None,
        history=[
            HistoricScore(
                scored_at=stored_time(h.scored_at),
                cause=h.cause,
                fit_score=h.fit_score,
                grade=h.grade,
                readiness_probability=h.readiness_probability,
                readiness_score=h.readiness_score,
                stage=h.stage,
                queue=h.queue,
                model_version=h.model_version,
                thresholds_version=h.thresholds_version,
            )
            for h in history
        ],
    )
