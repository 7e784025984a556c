"""POST /v1/score and /v1/score/batch as documented: FastAPI's validation, then the service's scoring.

Most requests never reach these endpoints: the fast path (serving.fast) answers valid, canonical ones before
FastAPI sees them, and hands everything else here, so that every refusal is worded by FastAPI and these models.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from serving.schemas import BatchRequest, BatchResponse, ItemsRequest, ItemsResponse, ScoreRequest, ScoreResponse
from serving.scoring import (
    Problem,
    batch_problems,
    contract_of,
    limit_problems,
    log_and_count,
    score_items,
    score_many,
    score_one,
)
from serving.service import gc_paused
from serving.state import ModelDep, ScoringAuth, StateDep

router = APIRouter(prefix="/v1", tags=["score"], dependencies=[ScoringAuth])
JSON = "application/json"


def refuse(problems: list[Problem]) -> None:
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


@router.post("/score", summary="Score and route one lead", response_model=ScoreResponse)
async def score(body: ScoreRequest, state: StateDep, model: ModelDep, request: Request) -> Response:
    """Fit and readiness scores, grade, stage, route and top reasons for one lead, as of now (or `as_of`)."""
    refuse(limit_problems(body, state.settings, ["body"], contract_of(model)))
    return Response(content=await score_one(state, body, await request.body()), media_type=JSON)


@router.post("/score/batch", summary="Score and route many leads", response_model=BatchResponse)
async def score_batch(body: BatchRequest, state: StateDep, model: ModelDep) -> Response:
    """Scores for up to the configured batch limit of leads, in request order, under one request id."""
    refuse(batch_problems(body.leads, state.settings, contract_of(model)))
    with gc_paused():
        content, scored = score_many(state, model, body.leads)
    await log_and_count(state, scored, [r.model_dump(mode="json") for r in body.leads])
    return Response(content=content, media_type=JSON)


@router.post("/score/batch/items", summary="Score many leads, each answered or refused on its own",
             response_model=ItemsResponse)  # fmt: skip
async def score_items_endpoint(body: ItemsRequest, state: StateDep, model: ModelDep) -> Response:
    """The per-item mode of the batch: each lead is validated alone, and answered or refused on its own.

    The valid leads are scored (under one request id) and the others refused with their problems, in request order.
    Only a batch over the limit is refused whole.
    """
    if len(body.leads) > state.settings.max_batch:
        refuse([{"loc": ["body", "leads"], "msg": f"at most {state.settings.max_batch} leads per batch, got "
                  f"{len(body.leads)}", "type": "too_long"}])  # fmt: skip
    with gc_paused():
        content, scored, inputs = score_items(state, model, body.leads)
    await log_and_count(state, scored, inputs)
    return Response(content=content, media_type=JSON)
