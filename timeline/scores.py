"""Each stored lead's current score and its score history."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select
from sqlalchemy.dialects import postgresql, sqlite

from timeline.schema import lead_scores, score_history


@dataclass(frozen=True, slots=True)
class ScoreState:
    """What a lead's score says, as stored in lead_scores: what webhooks compare before and after a rescore."""

    fit_score: float
    grade: str
    readiness_probability: float | None
    readiness_score: float | None
    stage: str | None
    queue: str
    model_version: str
    thresholds_version: int
    response: dict[str, Any]  # the whole answer, as POST /v1/score gives it


def state_of_response(response: Mapping[str, Any]) -> ScoreState:
    """The ScoreState of an answer as POST /v1/score gives it (a ScoreResponse, as JSON)."""
    readiness = response.get("readiness") or {}
    return ScoreState(
        fit_score=float(response["fit"]["score"]),
        grade=str(response["fit"]["grade"]),
        readiness_probability=readiness.get("probability"),
        readiness_score=readiness.get("score"),
        stage=readiness.get("stage"),
        queue=str(response["route"]["queue"]),
        model_version=str(response["model_version"]),
        thresholds_version=int(response["thresholds_version"]),
        response=dict(response),
    )


def record_scores(
    conn: Connection, scored: Sequence[tuple[str, ScoreState, str]], now: dt.datetime
) -> dict[str, ScoreState | None]:
    """Store new scores (lead, score, cause): each lead's current score and a row of its history; the scores before.

    In the caller's transaction, so that what reacts to a change of score (webhooks, the rescore queue) commits with
    it. A lead listed twice keeps its last score and gets a history row for each.
    """
    if not scored:
        return {}
    now = now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)  # SQLite keeps no zone: UTC digits
    lead_ids = list(dict.fromkeys(lead_id for lead_id, _, _ in scored))
    before: dict[str, ScoreState | None] = dict.fromkeys(lead_ids)
    found = conn.execute(select(lead_scores).where(lead_scores.c.lead_id.in_(lead_ids)))
    before.update({row.lead_id: _state(row) for row in found})
    latest = {lead_id: state for lead_id, state, _ in scored}
    current = [{"lead_id": lead_id, "scored_at": now, **_columns(state)} for lead_id, state in latest.items()]
    dialect = conn.dialect.name
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(lead_scores)
    elif dialect == "sqlite":
        statement = sqlite.insert(lead_scores)
    else:
        raise NotImplementedError(f"lead scores are stored on SQLite and PostgreSQL, not {dialect}")
    changed = {name: statement.excluded[name] for name in current[0] if name != "lead_id"}
    conn.execute(statement.on_conflict_do_update(index_elements=[lead_scores.c.lead_id], set_=changed), current)
    history = [
        {"lead_id": lead_id, "scored_at": now, "cause": cause, **_columns(state, with_response=False)}
        for lead_id, state, cause in scored
    ]
    conn.execute(score_history.insert(), history)
    return before


def current_score(conn: Connection, lead_id: str) -> ScoreState | None:
    """The lead's stored score (None: never scored, or erased)."""
    row = conn.execute(select(lead_scores).where(lead_scores.c.lead_id == lead_id)).first()
    return None if row is None else _state(row)


def _columns(state: ScoreState, *, with_response: bool = True) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "model_version": state.model_version,
        "thresholds_version": state.thresholds_version,
        "fit_score": state.fit_score,
        "grade": state.grade,
        "readiness_probability": state.readiness_probability,
        "readiness_score": state.readiness_score,
        "stage": state.stage,
        "queue": state.queue,
    }
    if with_response:
        columns["response"] = json.dumps(state.response, separators=(",", ":"), default=str)
    return columns


def _state(row: Row[Any]) -> ScoreState:
    return ScoreState(
        fit_score=row.fit_score,
        grade=row.grade,
        readiness_probability=row.readiness_probability,
        readiness_score=row.readiness_score,
        stage=row.stage,
        queue=row.queue,
        model_version=row.model_version,
        thresholds_version=row.thresholds_version,
        response=json.loads(row.response),
    )
