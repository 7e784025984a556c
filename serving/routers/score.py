"""POST /v1/score and /v1/score/batch: score, route and log leads."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from features.spec import LeadContract
from serving.schemas import BatchRequest, BatchResponse, Lead, ScoreRequest, ScoreResponse
from serving.service import log_records, new_request_id, score_requests
from serving.state import ModelDep, ScoringAuth, StateDep

router = APIRouter(prefix="/v1", tags=["score"], dependencies=[ScoringAuth])


def _custom_problems(lead: Lead, contract: LeadContract, where: list[str | int]) -> list[dict[str, object]]:
    """Custom attributes must be declared in the model's lead contract, with a value of the declared type."""
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


def _check_limits(
    request: ScoreRequest, max_activities: int, max_colleagues: int, where: str, contract: LeadContract
) -> None:
    loc: list[str | int] = [int(p) if p.isdigit() else p for p in where.split(".")]
    problems = _custom_problems(request.lead, contract, [*loc, "lead"])
    for i, colleague in enumerate(request.colleagues):
        problems += _custom_problems(colleague, contract, [*loc, "colleagues", i])
    if len(request.activities) > max_activities:
        problems.append(
            {"loc": [*loc, "activities"], "msg": f"at most {max_activities} activities per lead",
             "type": "too_long"}
        )  # fmt: skip
    if len(request.colleagues) > max_colleagues:
        problems.append(
            {"loc": [*loc, "colleagues"], "msg": f"at most {max_colleagues} colleagues per lead",
             "type": "too_long"}
        )  # fmt: skip
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


@router.post("/score", summary="Score and route one lead", response_model=ScoreResponse)
async def score(body: ScoreRequest, state: StateDep, model: ModelDep, request: Request) -> Response:
    """Fit and readiness scores, grade, stage, route and top reasons for one lead, as of now (or `as_of`)."""
    settings = state.settings
    _check_limits(body, settings.max_activities, settings.max_colleagues, "body", model.scorer.builder.contract)
    policy = state.policy()
    [response] = score_requests(model, policy, [body], top_k=settings.top_reasons, request_id=new_request_id())
    raw = (await request.body()).decode()  # the validated body, kept verbatim for the audit trail
    records = log_records([body], [response], [raw])
    await state.score_log.append(records)
    _count(state, [response])
    # Serialised once, here: the response was built from validated parts, so FastAPI need not validate it again.
    return Response(content=records[0].outputs, media_type="application/json")


@router.post("/score/batch", summary="Score and route many leads", response_model=BatchResponse)
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
        _check_limits(item, settings.max_activities, settings.max_colleagues, f"body.leads.{i}", contract)
    request_id = new_request_id()
    responses = score_requests(model, state.policy(), body.leads, top_k=settings.top_reasons, request_id=request_id)
    await state.score_log.append(log_records(body.leads, responses))
    _count(state, responses)
    return Response(
        content=BatchResponse(request_id=request_id, scores=responses).model_dump_json(), media_type="application/json"
    )


def _count(state: StateDep, responses: list[ScoreResponse]) -> None:
    metrics = state.metrics
    for response in responses:
        metrics.routes.labels(response.route.queue).inc()
        metrics.scores.labels("fit").observe(response.fit.score)
        metrics.scores.labels("readiness").observe(response.readiness.score)
