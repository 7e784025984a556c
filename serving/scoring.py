"""Scoring requests in a running service: limits, grouped single leads, batches, the score log and the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import msgspec
from pydantic import BaseModel, ValidationError

from features.builder import FeatureBuilder
from features.spec import LeadContract
from serving.model import LoadedModel
from serving.schemas import LeadToScore, Person, ScoreRequest
from serving.service import ScoredLead, batch_json, log_records, new_request_id, score_requests
from serving.settings import Settings
from serving.state import ServiceState

Problem = dict[str, object]  # one entry of a 422's detail list: loc, msg, type


def _custom_problems(lead: Person, contract: LeadContract, where: list[str | int]) -> list[Problem]:
    """Custom attributes must be declared in the model's lead contract, with a value of the declared type."""
    if not lead.custom:
        return []
    declared = {c.name: c for c in contract.custom_attributes}
    problems: list[Problem] = []
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


def limit_problems(
    request: LeadToScore, settings: Settings, loc: list[str | int], contract: LeadContract
) -> list[Problem]:
    """What the service refuses of a valid request: undeclared custom attributes and lists over the limits."""
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


class ModelKindChangedError(RuntimeError):
    """The model in use changed kind (lead contract <-> export) while a request was on its way to it."""


def contract_of(model: LoadedModel) -> LeadContract:
    """The lead contract of the model in use; ModelKindChangedError when it is an export model."""
    builder = model.scorer.builder
    if not isinstance(builder, FeatureBuilder):
        raise ModelKindChangedError("the model in use changed kind meanwhile; send the request again")
    return builder.contract


def batch_problems(leads: Sequence[LeadToScore], settings: Settings, contract: LeadContract) -> list[Problem]:
    """`limit_problems` of a batch, and the batch limit itself."""
    if len(leads) > settings.max_batch:
        return [{"loc": ["body", "leads"], "msg": f"at most {settings.max_batch} leads per batch, got {len(leads)}",
                 "type": "too_long"}]  # fmt: skip
    problems: list[Problem] = []
    for i, lead in enumerate(leads):
        problems += limit_problems(lead, settings, ["body", "leads", i], contract)
    return problems


async def score_one(state: ServiceState, body: LeadToScore, raw: bytes) -> bytes:
    """The answer to a single-lead request, scored with the single-lead requests that arrived meanwhile."""
    # One engine pass and one call per booster for the whole group; each lead keeps its own id and log record.
    scored = await state.single_scores.run((body, raw), partial(_score_group, state))
    return scored.response


async def _score_group(state: ServiceState, group: list[tuple[LeadToScore, bytes]]) -> list[ScoredLead]:
    """Score, log and count single-lead requests, each under its own request id; logged before any answer."""
    model = state.holder.current
    request_ids = [new_request_id() for _ in group]
    scored = score_requests(model, state.policy(), [body for body, _ in group], top_k=state.settings.top_reasons,
                            request_ids=request_ids)  # fmt: skip
    # Bodies as sent, for the audit trail, without the white space around the JSON's tokens (a body padded with
    # megabytes of it is stored in its few kilobytes of content); strings and values are kept exactly.
    await log_and_count(state, scored, [msgspec.json.format(raw, indent=-1).decode() for _, raw in group])
    return scored


def score_many(state: ServiceState, model: LoadedModel, leads: Sequence[LeadToScore]) -> tuple[bytes, list[ScoredLead]]:
    """The batch answer and the scored leads (to log and count) of leads scored under one request id."""
    request_id = new_request_id()
    scored = score_requests(
        model, state.policy(), leads, top_k=state.settings.top_reasons, request_ids=[request_id] * len(leads)
    )
    return batch_json(request_id, scored), scored


def score_items(
    state: ServiceState, model: LoadedModel, items: Sequence[object]
) -> tuple[bytes, list[ScoredLead], list[str | dict[str, object]]]:
    """The per-item answer of a batch: each item validated alone, the valid ones scored under one request id.

    Returns the answer, the scored leads and their inputs as the score log keeps them.
    """
    # An export model's leads are its columns: its own request model reads them, and it has no custom attributes.
    request_model = ScoreRequest if model.export is None else model.export.single
    contract = contract_of(model) if model.export is None else None
    valid: list[tuple[int, LeadToScore]] = []
    refused: dict[int, list[Problem]] = {}
    for i, item in enumerate(items):
        where: list[str | int] = ["body", "leads", i]
        try:
            request = request_model.model_validate(item)
        except ValidationError as err:
            refused[i] = [{"loc": [*where, *err_loc["loc"]], "msg": err_loc["msg"], "type": err_loc["type"]}
                          for err_loc in err.errors(include_input=False, include_url=False)]  # fmt: skip
            continue
        problems = [] if contract is None else limit_problems(request, state.settings, where, contract)
        if problems:
            refused[i] = problems
        else:
            valid.append((i, request))
    request_id = new_request_id()
    requests = [request for _, request in valid]
    scored = score_requests(model, state.policy(), requests, top_k=state.settings.top_reasons,
                            request_ids=[request_id] * len(requests))  # fmt: skip
    by_index = dict(zip((i for i, _ in valid), scored, strict=True))
    results = []
    for i, item in enumerate(items):
        if i in by_index:
            results.append({"index": i, "lead_id": by_index[i].lead_id, "status": "scored",
                            "score": msgspec.Raw(by_index[i].response), "problems": []})  # fmt: skip
        else:
            results.append({"index": i, "lead_id": _lead_id(item), "status": "refused", "score": None,
                            "problems": refused[i]})  # fmt: skip
    answer = {"request_id": request_id, "scored": len(valid), "refused": len(refused), "results": results}
    inputs: list[str | dict[str, object]] = [_dumped(r) for r in requests]
    return msgspec.json.encode(answer), scored, inputs


def _dumped(request: LeadToScore) -> dict[str, object]:
    """A validated request as the score log keeps it (an export's columns under their own names)."""
    assert isinstance(request, BaseModel)  # the reference models validated it
    return request.model_dump(mode="json", by_alias=True)


def _lead_id(item: object) -> str | None:
    """The lead id a refused item names, if it names one as text."""
    lead = item.get("lead") if isinstance(item, dict) else None
    lead_id = lead.get("lead_id") if isinstance(lead, dict) else None
    return lead_id if isinstance(lead_id, str) else None


async def log_and_count(
    state: ServiceState, scored: Sequence[ScoredLead], inputs: Sequence[str | dict[str, object]]
) -> None:
    """Log scored leads durably (before the answer goes out), then count them."""
    await state.score_log.append(log_records(scored, inputs))
    count(state, scored)


def count(state: ServiceState, scored: Sequence[ScoredLead]) -> None:
    """The metrics of scored leads: their queues, and their scores by model."""
    state.metrics.count_scores(
        [s.queue for s in scored],
        {
            "fit": [s.fit_score for s in scored],
            # Readiness is handed out for open leads only (None for the others).
            "readiness": [s.readiness_score for s in scored if s.readiness_score is not None],
        },
    )
