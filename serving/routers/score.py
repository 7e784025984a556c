"""POST /v1/score and /v1/score/batch as documented: FastAPI's validation, then the service's scoring.

Most requests never reach these endpoints: the fast path (serving.fast) answers valid, canonical ones before
FastAPI sees them, and hands everything else here, so that every refusal is worded by FastAPI and these models.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from features.export import ExportBuilder
from serving.export_schemas import ExportRequests, parse_body
from serving.model import LoadedModel
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


def _refuse(problems: list[Problem]) -> None:
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


@router.post("/score", summary="Score and route one lead", response_model=ScoreResponse)
async def score(body: ScoreRequest, state: StateDep, model: ModelDep, request: Request) -> Response:
    """Fit and readiness scores, grade, stage, route and top reasons for one lead, as of now (or `as_of`)."""
    _refuse(limit_problems(body, state.settings, ["body"], contract_of(model)))
    return Response(content=await score_one(state, body, await request.body()), media_type=JSON)


@router.post("/score/batch", summary="Score and route many leads", response_model=BatchResponse)
async def score_batch(body: BatchRequest, state: StateDep, model: ModelDep) -> Response:
    """Scores for up to the configured batch limit of leads, in request order, under one request id."""
    _refuse(batch_problems(body.leads, state.settings, contract_of(model)))
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
        _refuse([{"loc": ["body", "leads"], "msg": f"at most {state.settings.max_batch} leads per batch, got "
                  f"{len(body.leads)}", "type": "too_long"}])  # fmt: skip
    with gc_paused():
        content, scored, inputs = score_items(state, model, body.leads)
    await log_and_count(state, scored, inputs)
    return Response(content=content, media_type=JSON)


# An export model's leads come to the same documented routes (POST /v1/score, /v1/score/batch): the app hands them
# here while such a model is in use (serving.app.ScoreService), where the model's own request models read them.
EXPORT_PATHS = {"/v1/score": "/v1/score/export", "/v1/score/batch": "/v1/score/export/batch"}


def _export_requests(model: LoadedModel) -> ExportRequests:
    if model.export is None:
        # The model was replaced by a lead contract model between the routing of this request and now.
        raise HTTPException(status.HTTP_409_CONFLICT, "the model in use changed kind meanwhile; send the request again")
    return model.export


def _builder(model: LoadedModel) -> ExportBuilder | None:
    builder = model.scorer.builder
    return builder if isinstance(builder, ExportBuilder) else None


@router.post("/score/export", include_in_schema=False)
async def score_export(state: StateDep, model: ModelDep, request: Request) -> Response:
    """POST /v1/score for an export model: one lead's columns, validated by the model's request model."""
    raw = await request.body()
    body = parse_body(_export_requests(model).single, raw, _builder(model))
    return Response(content=await score_one(state, body, raw), media_type=JSON)


@router.post("/score/export/batch", include_in_schema=False)
async def score_export_batch(state: StateDep, model: ModelDep, request: Request) -> Response:
    """POST /v1/score/batch for an export model."""
    body = parse_body(_export_requests(model).batch, await request.body(), _builder(model))
    leads = body.leads  # type: ignore[attr-defined]  # the batch model is built at load (export_requests)
    if len(leads) > state.settings.max_batch:
        _refuse([{"loc": ["body", "leads"], "msg": f"at most {state.settings.max_batch} leads per batch, got "
                  f"{len(leads)}", "type": "too_long"}])  # fmt: skip
    with gc_paused():
        content, scored = score_many(state, model, leads)
    await log_and_count(state, scored, [r.model_dump(mode="json", by_alias=True) for r in leads])
    return Response(content=content, media_type=JSON)
