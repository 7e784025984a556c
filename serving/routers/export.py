"""POST /v1/score and /v1/score/batch for an export model: one lead's columns, read by the model's request models.

While an export model is in use, the app marks score requests for these routes (serving.app.ScoreService); they
answer under the same paths as the lead contract's routes, which keep their documented bodies and their fast path.
The OpenAPI document describes the export model's bodies instead (serving.export_schemas.export_openapi).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from features.export import ExportBuilder
from serving.export_schemas import ExportRequests, parse_body
from serving.model import LoadedModel
from serving.routers.score import JSON, refuse
from serving.scoring import log_and_count, score_many, score_one
from serving.service import gc_paused
from serving.state import ModelDep, ScoringAuth, StateDep

# The ASGI scope key that marks a score request for an export model.
EXPORT_SCOPE = "leadscore.export_model"


class ExportRoute(APIRoute):
    """A route that matches only requests marked for an export model (and so comes before the contract's own)."""

    def matches(self, scope: Scope) -> tuple[Match, MutableMapping[str, Any]]:
        """No match unless the app marked the request (EXPORT_SCOPE)."""
        if not scope.get(EXPORT_SCOPE):
            return Match.NONE, {}
        return super().matches(scope)


router = APIRouter(prefix="/v1", tags=["score"], dependencies=[ScoringAuth], route_class=ExportRoute)


def _export_requests(model: LoadedModel) -> ExportRequests:
    if model.export is None:
        # The model was replaced by a lead contract model between the routing of this request and now.
        raise HTTPException(status.HTTP_409_CONFLICT, "the model in use changed kind meanwhile; send the request again")
    return model.export


def _builder(model: LoadedModel) -> ExportBuilder | None:
    builder = model.scorer.builder
    return builder if isinstance(builder, ExportBuilder) else None


@router.post("/score", include_in_schema=False)
async def score_export(state: StateDep, model: ModelDep, request: Request) -> Response:
    """POST /v1/score for an export model: one lead's columns, validated by the model's request model."""
    raw = await request.body()
    body = parse_body(_export_requests(model).single, raw, _builder(model))
    return Response(content=await score_one(state, body, raw), media_type=JSON)


@router.post("/score/batch", include_in_schema=False)
async def score_export_batch(state: StateDep, model: ModelDep, request: Request) -> Response:
    """POST /v1/score/batch for an export model."""
    body = parse_body(_export_requests(model).batch, await request.body(), _builder(model))
    leads = body.leads  # type: ignore[attr-defined]  # the batch model is built at load (export_requests)
    if len(leads) > state.settings.max_batch:
        refuse([{"loc": ["body", "leads"], "msg": f"at most {state.settings.max_batch} leads per batch, got "
                  f"{len(leads)}", "type": "too_long"}])  # fmt: skip
    with gc_paused():
        content, scored = score_many(state, model, leads)
    await log_and_count(state, scored, [r.model_dump(mode="json", by_alias=True) for r in leads])
    return Response(content=content, media_type=JSON)
