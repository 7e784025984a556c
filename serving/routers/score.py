"""POST /v1/score and /v1/score/batch: score, route and log leads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.routing import APIRoute

from features.spec import LeadContract
from serving.model import LoadedModel
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    CanonicalBatchRequest,
    CanonicalScoreRequest,
    Lead,
    LeadToScore,
    ScoreRequest,
    ScoreResponse,
    parse_canonical,
)
from serving.service import batch_json, gc_paused, log_records, new_request_id, score_requests
from serving.settings import Settings
from serving.state import ModelDep, ScoringAuth, ServiceState, StateDep, service_state
from serving.store import ScoreRecord

FastPath = Callable[[Request], Awaitable[Response | None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
_FAST_PATHS: dict[Callable[..., Any], FastPath] = {}


def _fast_path(fast: FastPath) -> Callable[[Endpoint], Endpoint]:
    """Give an endpoint a fast path: tried first, and answering only what it can score as it stands."""

    def register(endpoint: Endpoint) -> Endpoint:
        _FAST_PATHS[endpoint] = fast
        return endpoint

    return register


class _FastPathRoute(APIRoute):
    """FastAPI's route, answered first by the endpoint's fast path when it has one.

    A fast path scores requests that are authorised, valid, canonical and within the limits, reading the body once
    with pydantic-core and skipping FastAPI's parsing and dependencies, and returns None for anything else. FastAPI's
    own handling of the endpoint then answers those exactly as it always did: the same 401, 413, 422 and 503 in the
    same order, and the same scores for valid requests in other spellings. The endpoint stays the documented one.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, behind the endpoint's fast path."""
        handler = super().get_route_handler()
        fast = _FAST_PATHS.get(self.endpoint)
        if fast is None:
            return handler

        async def fast_first(request: Request) -> Response:
            response = await fast(request)
            return response if response is not None else await handler(request)

        return fast_first


router = APIRouter(prefix="/v1", tags=["score"], dependencies=[ScoringAuth], route_class=_FastPathRoute)


def _custom_problems(lead: Lead, contract: LeadContract, where: list[str | int]) -> list[dict[str, object]]:
    """Custom attributes must be declared in the model's lead contract, with a value of the declared type."""
    if not lead.custom:
        return []
    declared = {c.name: c for c in contract.custom_attributes}
    problems: list[dict[str, object]] = []
    for name, value in lead.custom.items():
        loc = [*where, "custom", name]
        spec = declared.get(name)
        if spec is None:
            accepted = ", ".join(declared) or "none are declared"
            problems.append({"loc": loc, "msg": f"not a declared custom attribute (declared: {accepted})",
                             "type": "extra_forbidden"})  # fmt: skip
        elif value is not None and spec.dtype in ("int", "float") and not isinstance(value, float | int):
            problems.append({"loc": loc, "msg": f"must be a number ({spec.dtype})", "type": "float_type"})
        elif value is not None and spec.dtype == "category" and not isinstance(value, str):
            problems.append({"loc": loc, "msg": "must be a string (category)", "type": "string_type"})
    return problems


def _limit_problems(
    request: LeadToScore, settings: Settings, where: str, contract: LeadContract
) -> list[dict[str, object]]:
    loc: list[str | int] = [int(p) if p.isdigit() else p for p in where.split(".")]
    problems = _custom_problems(request.lead, contract, [*loc, "lead"])
    for i, colleague in enumerate(request.colleagues):
        problems += _custom_problems(colleague, contract, [*loc, "colleagues", i])
    if len(request.activities) > settings.max_activities:
        problems.append(
            {"loc": [*loc, "activities"], "msg": f"at most {settings.max_activities} activities per lead",
             "type": "too_long"}
        )  # fmt: skip
    if len(request.colleagues) > settings.max_colleagues:
        problems.append(
            {"loc": [*loc, "colleagues"], "msg": f"at most {settings.max_colleagues} colleagues per lead",
             "type": "too_long"}
        )  # fmt: skip
    return problems


def _check_limits(request: LeadToScore, settings: Settings, where: str, contract: LeadContract) -> None:
    problems = _limit_problems(request, settings, where, contract)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


def _json_body(request: Request) -> bool:
    """The request declares a JSON body the way FastAPI reads as JSON (the common spellings; others go to FastAPI)."""
    content_type = request.headers.get("content-type", "")
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _ready_to_score(request: Request) -> tuple[ServiceState, LoadedModel] | None:
    """State and model when the request may score and a model is loaded; None leaves the answer to FastAPI."""
    state = service_state(request)
    if (
        not _json_body(request)
        or not state.holder.ready
        or not state.may_score(request.headers.get("x-api-key") or None)
    ):
        return None
    return state, state.holder.current


async def _score_one(state: ServiceState, body: LeadToScore, raw: bytes) -> Response:
    # With the single-lead requests that arrived meanwhile: one engine pass and one call per booster for all.
    record = await state.single_scores.run((body, raw), partial(_score_group, state))
    # Serialised once, in the group: the response was built from validated parts, so FastAPI need not validate it.
    return Response(content=record.outputs, media_type="application/json")


async def _score_group(state: ServiceState, group: list[tuple[LeadToScore, bytes]]) -> list[ScoreRecord]:
    """Score, log and count single-lead requests, each under its own request id; logged before any answer."""
    model = state.holder.current
    request_ids = [new_request_id() for _ in group]
    responses = score_requests(model, state.policy(), [body for body, _ in group], top_k=state.settings.top_reasons,
                               request_ids=request_ids)  # fmt: skip
    records = log_records(responses, [raw.decode() for _, raw in group])  # bodies verbatim, for the audit trail
    await state.score_log.append(records)
    _count(state, _tally(responses))
    return records


async def _score_one_fast(request: Request) -> Response | None:
    ready = _ready_to_score(request)
    if ready is None:
        return None
    state, model = ready
    raw = await request.body()
    body = parse_canonical(CanonicalScoreRequest, raw)
    if body is None or _limit_problems(body, state.settings, "body", model.scorer.builder.contract):
        return None
    return await _score_one(state, body, raw)


@router.post("/score", summary="Score and route one lead", response_model=ScoreResponse)
@_fast_path(_score_one_fast)  # registered before the route is made: below the router's decorator
async def score(body: ScoreRequest, state: StateDep, model: ModelDep, request: Request) -> Response:
    """Fit and readiness scores, grade, stage, route and top reasons for one lead, as of now (or `as_of`)."""
    _check_limits(body, state.settings, "body", model.scorer.builder.contract)
    return await _score_one(state, body, await request.body())


def _score_many(
    state: ServiceState, model: LoadedModel, leads: Sequence[LeadToScore], inputs: Sequence[str | dict[str, object]]
) -> tuple[str, list[ScoreRecord], _Tally]:
    """The batch response, the log records and what the metrics count, for leads scored under one request id."""
    request_id = new_request_id()
    responses = score_requests(
        model, state.policy(), leads, top_k=state.settings.top_reasons, request_ids=[request_id] * len(leads)
    )
    records = log_records(responses, inputs)
    return batch_json(request_id, records), records, _tally(responses)


async def _score_batch_fast(request: Request) -> Response | None:
    ready = _ready_to_score(request)
    if ready is None:
        return None
    state, model = ready
    raw = await request.body()
    with gc_paused():
        # The parsed batch and the response models die with the call, before collection resumes: what survives
        # the pause is what the next collection walks.
        scored = _score_canonical_batch(state, model, raw)
    if scored is None:
        return None
    content, records, tally = scored
    await state.score_log.append(records)
    _count(state, tally)
    return Response(content=content, media_type="application/json")


def _score_canonical_batch(
    state: ServiceState, model: LoadedModel, raw: bytes
) -> tuple[str, list[ScoreRecord], _Tally] | None:
    settings = state.settings
    body = parse_canonical(CanonicalBatchRequest, raw)
    if body is None or len(body.leads) > settings.max_batch:
        return None
    contract = model.scorer.builder.contract
    if any(_limit_problems(item, settings, f"body.leads.{i}", contract) for i, item in enumerate(body.leads)):
        return None
    # Canonical leads dump to the very JSON the reference model does: the log keeps it as text.
    return _score_many(state, model, body.leads, [r.model_dump_json() for r in body.leads])


@router.post("/score/batch", summary="Score and route many leads", response_model=BatchResponse)
@_fast_path(_score_batch_fast)
async def score_batch(body: BatchRequest, state: StateDep, model: ModelDep) -> Response:
    """Scores for up to the configured batch limit of leads, in request order, under one request id."""
    settings = state.settings
    if len(body.leads) > settings.max_batch:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "leads"], "msg": f"at most {settings.max_batch} leads per batch, got {len(body.leads)}",
              "type": "too_long"}],
        )  # fmt: skip
    contract = model.scorer.builder.contract
    for i, item in enumerate(body.leads):
        _check_limits(item, settings, f"body.leads.{i}", contract)
    with gc_paused():
        content, records, tally = _score_many(state, model, body.leads, [r.model_dump(mode="json") for r in body.leads])
    await state.score_log.append(records)
    _count(state, tally)
    return Response(content=content, media_type="application/json")


# What the metrics count of scored leads: their queues, and their scores by model.
_Tally = tuple[list[str], dict[str, list[float]]]


def _tally(responses: list[ScoreResponse]) -> _Tally:
    scores = {"fit": [r.fit.score for r in responses], "readiness": [r.readiness.score for r in responses]}
    return [r.route.queue for r in responses], scores


def _count(state: ServiceState, tally: _Tally) -> None:
    queues, scores = tally
    state.metrics.count_scores(queues, scores)
