"""/v1/thresholds: the routing policy in force, its history, changes and rollbacks, simulation and the solver."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.model import ModelNotAvailableError, holdout_scores
from serving.policy import RoutingPolicy
from serving.state import AdminAuth, ModelDep, ScoringAuth, ServiceState, StateDep
from serving.store import MAX_POLICY_VERSION, PolicyVersion, ScoreRecord, VersionConflictError
from serving.tuning import (
    DataChoice,
    SampleError,
    ScoreSample,
    SimulateRequest,
    SolveResponse,
    choose_sample,
    holdout_sample,
    simulate,
    solve,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/thresholds", tags=["thresholds"])
_T = TypeVar("_T")

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Author = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
# A version number as the store keeps it; larger numbers are refused with a 422 naming the field, never a 500.
Version = Annotated[int, Field(ge=1, le=MAX_POLICY_VERSION)]


class PolicyVersionOut(BaseModel):
    """A stored version of the routing policy: what, who, when and why."""

    version: int
    created_at: dt.datetime
    author: str
    reason: str
    policy: RoutingPolicy

    @classmethod
    def of(cls, stored: PolicyVersion) -> PolicyVersionOut:
        """The API shape of a stored version."""
        return cls(
            version=stored.version,
            created_at=stored.created_at,
            author=stored.author,
            reason=stored.reason,
            policy=stored.policy,
        )


class History(BaseModel):
    """Every version, newest first."""

    versions: list[PolicyVersionOut]


class PolicyUpdate(BaseModel):
    """A new policy, why it changes, and (for editors) the version it was edited from."""

    model_config = ConfigDict(extra="forbid")

    policy: RoutingPolicy
    reason: Reason = Field(description="Why the thresholds change; kept in the history.")
    author: Author = "api"
    base_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_POLICY_VERSION - 1,  # its successor must fit too
        description="The version in force the change was made to: 409 when another was saved since, 422 when no such "
        "version is stored. Without it the change is saved on top of whatever is in force.",
    )


class Rollback(BaseModel):
    """Bring back an earlier version's policy, as a new version."""

    model_config = ConfigDict(extra="forbid")

    version: Version
    reason: Reason
    author: Author = "api"


@router.get("", summary="The routing policy in force", dependencies=[ScoringAuth])
async def current(state: StateDep, model: ModelDep) -> PolicyVersionOut:
    """The thresholds every score is routed with now, and their version."""
    return PolicyVersionOut.of(await asyncio.to_thread(state.policy))


@router.get("/history", summary="Every version of the routing policy", dependencies=[ScoringAuth])
async def history(state: StateDep, model: ModelDep) -> History:
    """Who changed what, when and why; newest first."""
    await asyncio.to_thread(state.policy)  # the model's default is stored as version 1 before anything is listed
    versions = await asyncio.to_thread(state.policies.history)
    return History(versions=[PolicyVersionOut.of(v) for v in versions])


@router.put("", summary="Apply new thresholds", dependencies=[AdminAuth])
async def update(body: PolicyUpdate, state: StateDep, model: ModelDep) -> PolicyVersionOut:
    """Store the policy as a new version; every worker routes with it within a second, no restart."""
    if body.base_version is None:
        stored = await asyncio.to_thread(state.policies.save, body.policy, author=body.author, reason=body.reason)
    else:
        try:
            stored = await asyncio.to_thread(
                state.policies.save_after, body.base_version, body.policy, author=body.author, reason=body.reason
            )
        except VersionConflictError as conflict:
            raise _refusal(conflict) from conflict
    log.info("thresholds version %d saved by %s: %s", stored.version, stored.author, stored.reason)
    state.forget_policy()
    return PolicyVersionOut.of(stored)


def _refusal(conflict: VersionConflictError) -> HTTPException:
    """A save on a base that is not in force: 409 when another version was saved since, 422 for an unknown base."""
    base, latest = conflict.base_version, conflict.latest
    if conflict.unknown_base:
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"base_version {base} is no stored version: the latest is {latest if latest is not None else 'none'}; "
            "reload the thresholds and apply the change to the version in force",
        )
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"version {latest} was saved after version {base}, which this change was made to: reload the thresholds "
        "and apply the change again",
    )


@router.post("/rollback", summary="Bring back an earlier version", dependencies=[AdminAuth])
async def rollback(body: Rollback, state: StateDep, model: ModelDep) -> PolicyVersionOut:
    """Store an earlier version's policy as the newest version (history is never rewritten)."""
    stored = await asyncio.to_thread(state.policies.rollback, body.version, author=body.author, reason=body.reason)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"there is no thresholds version {body.version}")
    log.info("thresholds version %d (rollback to %d) saved by %s", stored.version, body.version, stored.author)
    state.forget_policy()
    return PolicyVersionOut.of(stored)


def _sample(state: ServiceState, data: DataChoice) -> ScoreSample:
    """The scored leads to replay: the score log's recent weeks, or the champion's holdout (cached per model)."""

    def read_holdout() -> ScoreSample:
        model = state.holder.current
        cached = state.tuning_samples.get(model.version)
        if cached is None:
            run = model.run_id or ""
            cached = holdout_sample(holdout_scores(state.holder.tracking_uri, run, f"{model.name} v{model.version}"))
            state.tuning_samples.clear()  # one model's holdout at a time
            state.tuning_samples[model.version] = cached
        return cached

    def read_recent(since: dt.datetime, limit: int) -> list[ScoreRecord]:
        return state.score_log.read_since(since, limit=limit)

    return choose_sample(data, read_recent, read_holdout)


async def _replay(work: Callable[[], _T]) -> _T:
    """Run a replay off the event loop; no data to replay is the caller's 422, an unreadable model's holdout a 409."""
    try:
        return await asyncio.to_thread(work)
    except SampleError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from err
    except ModelNotAvailableError as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err


def _candidate(state: ServiceState, body: SimulateRequest) -> tuple[RoutingPolicy, int | None]:
    """The policy to replay and, when it is the one in force (none given), its version."""
    if body.policy is not None:
        return body.policy, None
    current = state.policy()
    return current.policy, current.version


@router.post("/simulate", summary="What a candidate policy would do", dependencies=[ScoringAuth])
async def simulate_policy(body: SimulateRequest, state: StateDep, model: ModelDep) -> dict[str, Any]:
    """Weekly volume, expected SQLs and wins, precision, recall, load and SLA misses per queue and segment.

    Without a policy, the policy in force is replayed and its version is `policy_version`; `data.reason` says which
    scored leads were replayed and why.
    """

    def run() -> dict[str, Any]:
        policy, version = _candidate(state, body)
        return {"policy_version": version, **simulate(_sample(state, body.data), policy, body.capacities)}

    return await _replay(run)


@router.post("/solve", summary="Propose cut-offs for the capacities", dependencies=[ScoringAuth])
async def solve_policy(body: SimulateRequest, state: StateDep, model: ModelDep) -> SolveResponse:
    """The MQL/SQL cut-offs capturing the most expected SQLs with no team over capacity, and their simulation."""

    def run() -> SolveResponse:
        policy, version = _candidate(state, body)
        sample = _sample(state, body.data)
        proposal = solve(sample, policy, body.capacities)
        simulation = simulate(sample, proposal.policy, body.capacities)
        return SolveResponse(
            policy=proposal.policy,
            feasible=proposal.feasible,
            note=proposal.note,
            policy_version=version,
            simulation=simulation,
        )

    return await _replay(run)
