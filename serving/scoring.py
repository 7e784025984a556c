"""Scoring requests in a running service: limits, grouped single leads, batches, the score log and the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import msgspec

from features.spec import LeadContract
from serving.model import LoadedModel
from serving.schemas import LeadToScore, Person
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
        {"fit": [s.fit_score for s in scored], "readiness": [s.readiness_score for s in scored]},
    )
