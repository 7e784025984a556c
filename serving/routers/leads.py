"""A stored lead read back, scored from its stored history (by id, at any past moment), or erased."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import ValidationError
from sqlalchemy import select

from serving.ingest_schemas import HistoricScoreOut, LeadErased, LeadTimeline, StoredTouchOut
from serving.routers.ingest import LeadId, RuntimeDep
from serving.schemas import Lead, LeadToScore, ScoreRequest, ScoreResponse, Timestamp, canonical_request
from serving.scoring import contract_of, limit_problems, score_one
from serving.state import AdminAuth, IngestAuth, ModelDep, ScoringAuth, ServiceState, StateDep
from timeline.erasure import erase_lead
from timeline.history import scoring_requests
from timeline.reads import lead_view
from timeline.schema import leads

router = APIRouter(prefix="/v1", tags=["leads"])
JSON = "application/json"
# How many touches and rescores GET /v1/leads/{lead_id} shows by default, and at most.
SHOWN_DEFAULT = 50
SHOWN_MAX = 1000


def _not_stored(lead_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no lead {lead_id!r} is stored")


@router.get("/leads/{lead_id}", summary="A stored lead and its timeline", response_model=LeadTimeline,
            dependencies=[IngestAuth], responses={404: {"description": "No such lead is stored."}})  # fmt: skip
def get_lead(
    lead_id: LeadId,
    state: StateDep,
    touches: Annotated[int, Query(ge=0, le=SHOWN_MAX, description="How many of the latest touches to show.")] = (
        SHOWN_DEFAULT
    ),
    history: Annotated[int, Query(ge=0, le=SHOWN_MAX, description="How many of the latest rescores to show.")] = (
        SHOWN_DEFAULT
    ),
) -> LeadTimeline:
    """Profile, account, identities, the latest touches, the current score with its reasons, and the score history.

    Takes an ingest or admin key: the answer holds what the CRM stored about a person.
    """
    with state.score_log.engine.connect() as conn:
        view = lead_view(conn, lead_id, touch_limit=touches, history_limit=history)
    if view is None:
        raise _not_stored(lead_id)
    return LeadTimeline(
        lead=Lead.model_validate(view.lead),
        updated_at=view.updated_at,
        account_traits=view.account_traits,
        anonymous_ids=view.anonymous_ids,
        touch_count=view.touch_count,
        touches=[StoredTouchOut(**vars_of(t)) for t in view.touches],
        score=view.score,
        scored_at=view.scored_at,
        rescore_pending=view.rescore_pending,
        score_history=[HistoricScoreOut(**vars_of(h)) for h in view.history],
    )


def vars_of(item: Any) -> dict[str, Any]:
    """A slotted dataclass's fields as a dict (dataclasses.asdict would deep-copy every property object)."""
    return {name: getattr(item, name) for name in item.__slots__}


@router.get("/leads/{lead_id}/score", summary="Score a stored lead from its history", response_model=ScoreResponse,
            dependencies=[ScoringAuth],
            responses={404: {"description": "No such lead is stored (or it did not exist yet at as_of)."},
                       409: {"description": "The stored history cannot be scored by the model in use."}})  # fmt: skip
async def score_by_id(
    lead_id: LeadId,
    state: StateDep,
    model: ModelDep,
    as_of: Annotated[
        Timestamp | None,
        Query(description="Score as of this past moment, from what was known then (point in time); default: now."),
    ] = None,
) -> Response:
    """The answer POST /v1/score gives for the lead's stored profile, touches and colleagues, logged the same way.

    With `as_of`, only what was stored as having happened by then counts: touches, stamps and colleagues after it
    are left out, so the answer is the one the lead would have got at that moment.
    """
    if model.export is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the model in use reads an export's columns, not the stored "
                            "lead timeline: score by id needs a lead-contract model")  # fmt: skip
    if state.score_log.engine.dialect.name == "sqlite":
        # A local file read of a millisecond or less, as scoring itself runs on the event loop (serving.fast): the
        # thread hop would cost a third of it. A networked store's round trips are waited for in a thread.
        body = _stored_request(state, lead_id, as_of)
    else:
        body = await asyncio.to_thread(_stored_request, state, lead_id, as_of)
    request: LeadToScore | None = canonical_request(body)
    try:
        request = request or ScoreRequest.model_validate(body)
    except ValidationError as err:
        problems = err.errors(include_url=False, include_input=False)
        refused = [{**p, "loc": ["query", "as_of"]} for p in problems if p["loc"][:1] == ("as_of",)]
        if refused:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, refused) from None
        detail = f"the stored history of {lead_id!r} is not a valid score request: {problems}"
        raise HTTPException(status.HTTP_409_CONFLICT, detail) from None
    refusals = limit_problems(request, state.settings, ["stored"], contract_of(model))
    if refusals:
        raise HTTPException(
            status.HTTP_409_CONFLICT, [{**p, "msg": f"the stored history: {p['msg']}"} for p in refusals]
        )
    raw = msgspec.json.encode(body)
    return Response(content=await score_one(state, request, raw), media_type=JSON)


def _stored_request(state: ServiceState, lead_id: str, as_of: dt.datetime | None) -> dict[str, Any]:
    settings = state.settings
    with state.score_log.engine.connect() as conn:
        bodies = scoring_requests(conn, [lead_id], as_of, max_activities=settings.max_activities,
                                  max_colleagues=settings.max_colleagues)  # fmt: skip
        if lead_id in bodies:
            return bodies[lead_id]
        created = conn.execute(select(leads.c.created_at).where(leads.c.lead_id == lead_id)).scalar()
    if created is None:
        raise _not_stored(lead_id)
    when = "" if as_of is None else f" ({as_of:%Y-%m-%dT%H:%M:%SZ})"
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"lead {lead_id!r} was created after as_of{when}")


@router.delete("/leads/{lead_id}", summary="Erase a lead (GDPR article 17)", response_model=LeadErased,
               dependencies=[AdminAuth],
               responses={404: {"description": "Nothing about this lead is stored."}})  # fmt: skip
def delete_lead(lead_id: LeadId, state: StateDep, runtime: RuntimeDep) -> LeadErased:
    """Delete the lead, its touches, identities, scores, score history, queued webhooks and the score log's requests.

    In one transaction, recorded as an erasure that keeps only the counts. The lead's colleagues are rescored (their
    buying group lost a member). Score-log archives already written to Parquet are not rewritten: see the retention
    guide. Takes an admin key.
    """
    # Requests still in the score log's journal reach the table first, so that the erasure deletes them too.
    state.score_log.flush()
    now = dt.datetime.now(dt.UTC)
    erasure = runtime.write(
        state.score_log.engine, lambda conn: erase_lead(conn, lead_id, requested_by="admin", now=now)
    )
    if not erasure.found:
        raise _not_stored(lead_id)
    return LeadErased(lead_id=lead_id, deleted=erasure.counts, colleagues_requeued=erasure.colleagues)
