"""Rescore on change: every service worker rescores the leads queued in the store, and sweeps for aged scores."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from serving.model import LoadedModel
from serving.schemas import LeadToScore, ScoreRequest, canonical_request
from serving.scoring import contract_of, limit_problems
from serving.service import ScoredLead, new_request_id, score_requests
from serving.state import ServiceState
from serving.store import PolicyVersion
from timeline import queue
from timeline.history import scoring_requests
from timeline.queue import Claim
from timeline.schema import leads
from timeline.scores import ScoreState, record_scores, state_of_response

log = logging.getLogger(__name__)

# What reacts to a rescore, in the transaction that stores it: (connection, lead id, score before or None, after).
OnScored = Callable[[Connection, str, ScoreState | None, ScoreState], None]
# The first sweep after a worker starts: soon (scores aged while it was down), but not in the way of warming up.
SWEEP_FIRST_SECONDS = 60.0
# A worker that cannot reach the queue looks again after poll, 2 x poll, ... seconds, at most this many.
ERROR_BACKOFF_MAX_SECONDS = 30.0
# How long shutdown waits for the batch in hand to be stored; after it, its leads return to the queue when the
# lease runs out.
SHUTDOWN_SECONDS = 10.0


def ignore_scored(conn: Connection, lead_id: str, before: ScoreState | None, after: ScoreState) -> None:
    """The default reaction to a rescore: none."""


@dataclass(frozen=True, slots=True)
class RescoreOutcome:
    """What one batch did with the leads it claimed."""

    scored: int = 0
    failed: int = 0  # back in the queue, due again after a backoff
    gone: int = 0  # erased meanwhile: nothing to score

    @property
    def claimed(self) -> int:
        """Leads the batch took from the queue."""
        return self.scored + self.failed + self.gone


def worker_name() -> str:
    """The name a worker claims under: host, process id and a random tag (a restarted process may get the same id)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


class Rescorer:
    """Rescores queued leads from their stored histories with the model and policy in force, as POST /v1/score does.

    Each batch is claimed (a lease, so two workers or replicas never score the same lead at once), read in one go,
    scored, and stored in one transaction with `on_scored`'s effects and the queue rows' removal: a killed worker
    leaves either all of that or none of it, and its claimed leads to another worker once the lease runs out.
    """

    def __init__(
        self,
        state: ServiceState,
        *,
        on_scored: OnScored = ignore_scored,
        worker_id: str | None = None,
        engine: Engine | None = None,
    ):
        self.state = state
        self.engine: Engine = engine or state.score_log.engine  # the store whose queue it serves: the service's
        self.on_scored = on_scored
        self.worker_id = worker_id or worker_name()
        self._said_idle: str | None = None  # why this worker cannot rescore, once said in the log
        self._stopping = False
        self._busy = False

    def idle_reason(self) -> str | None:
        """Why this worker cannot rescore right now (None: it can)."""
        holder = self.state.holder
        if not holder.ready:
            return "no model loaded yet"
        if holder.current.export is not None:
            return (
                "the model in use reads an export's columns, not the lead contract the store keeps: queued leads "
                "wait for a lead-contract model"
            )
        return None

    def _can_rescore(self) -> LoadedModel | None:
        reason = self.idle_reason()
        if reason is not None:
            if reason != self._said_idle:
                log.warning("not rescoring queued leads: %s", reason)
                self._said_idle = reason
            return None
        if self._said_idle is not None:
            log.info("rescoring queued leads again")
            self._said_idle = None
        return self.state.holder.current

    def rescore_batch(self) -> RescoreOutcome:
        """Claim up to `rescore_batch` due leads, score them and store the scores; what became of them."""
        model = self._can_rescore()
        if model is None:
            return RescoreOutcome()
        settings = self.state.settings
        policy = self.state.policy()
        now = dt.datetime.now(dt.UTC)
        claims = queue.claim(self.engine, self.worker_id, settings.rescore_batch, settings.rescore_lease_seconds, now)
        if not claims:
            return RescoreOutcome()
        try:
            outcome = self._rescore(model, policy, claims)
        except BaseException:
            # The store failed, not a lead: the batch goes back to the queue as it was, for the next try (or, when
            # even that cannot be written, when its lease runs out).
            with contextlib.suppress(Exception):
                queue.release(self.engine, claims)
            raise
        metrics = self.state.metrics
        metrics.count_rescores("scored", outcome.scored)
        metrics.count_rescores("failed", outcome.failed)
        metrics.count_rescores("gone", outcome.gone)
        return outcome

    def _rescore(self, model: LoadedModel, policy: PolicyVersion, claims: Sequence[Claim]) -> RescoreOutcome:
        """Read, score and store claimed leads; a lead that cannot be is failed (due again after a backoff)."""
        bodies, failed = self._read(claims)
        gone = [c for c in claims if c.lead_id not in bodies and c not in {f for f, _ in failed}]
        valid: list[tuple[Claim, LeadToScore]] = []
        for c in claims:
            if c.lead_id in bodies:
                request, problem = self._request(model, bodies[c.lead_id])
                if request is None:
                    failed.append((c, problem))
                else:
                    valid.append((c, request))
        scored, refused = self._score(model, policy, valid)
        stored, erased, unstored = self._store(scored, gone)
        failed += refused + unstored
        for error, together in _by_error(failed):
            queue.fail(self.engine, together, error, dt.datetime.now(dt.UTC))
        return RescoreOutcome(scored=stored, failed=len(failed), gone=erased)

    def _read(self, claims: Sequence[Claim]) -> tuple[dict[str, dict[str, Any]], list[tuple[Claim, str]]]:
        """The claimed leads' stored histories as score-request bodies (an erased lead has none), in one read.

        A history that cannot be read as a request fails its own lead only: the batch is read again lead by lead.
        """
        settings = self.state.settings
        try:
            with self.engine.connect() as conn:
                bodies = scoring_requests(
                    conn, [c.lead_id for c in claims], max_activities=settings.max_activities,
                    max_colleagues=settings.max_colleagues,
                )  # fmt: skip
        except SQLAlchemyError:
            raise  # the store's fault, not a lead's
        except Exception as err:
            if len(claims) == 1:
                return {}, [(claims[0], f"its stored history cannot be read: {type(err).__name__}: {err}")]
            bodies, failed = {}, []
            for c in claims:
                one, problem = self._read([c])
                bodies.update(one)
                failed += problem
            return bodies, failed
        return bodies, []

    def _request(self, model: LoadedModel, body: dict[str, Any]) -> tuple[LeadToScore | None, str]:
        """The stored history as a score request, or why POST /v1/score would refuse it."""
        request: LeadToScore | None = canonical_request(body)
        try:
            request = request or ScoreRequest.model_validate(body)
        except ValidationError as err:
            return None, "its stored history is not a valid score request: " + _problems(
                [{"loc": e["loc"], "msg": e["msg"]} for e in err.errors(include_url=False, include_input=False)]
            )
        problems = limit_problems(request, self.state.settings, [], contract_of(model))
        if problems:
            return None, "the score API would refuse its stored history: " + _problems(problems)
        return request, ""

    def _score(
        self, model: LoadedModel, policy: PolicyVersion, valid: Sequence[tuple[Claim, LeadToScore]]
    ) -> tuple[list[tuple[Claim, ScoredLead]], list[tuple[Claim, str]]]:
        """Score the batch at once; when that fails, each lead alone, so that one bad lead fails on its own."""
        if not valid:
            return [], []
        top_k = self.state.settings.top_reasons
        try:
            answers = score_requests(model, policy, [r for _, r in valid], top_k=top_k,
                                     request_ids=[new_request_id() for _ in valid])  # fmt: skip
        except Exception as err:
            if len(valid) == 1:
                return [], [(valid[0][0], f"scoring failed: {type(err).__name__}: {err}")]
            scored: list[tuple[Claim, ScoredLead]] = []
            failed: list[tuple[Claim, str]] = []
            for item in valid:
                alone, refused = self._score(model, policy, [item])
                scored += alone
                failed += refused
            return scored, failed
        return [(c, answer) for (c, _), answer in zip(valid, answers, strict=True)], []

    def _store(
        self, scored: Sequence[tuple[Claim, ScoredLead]], gone: Sequence[Claim]
    ) -> tuple[int, int, list[tuple[Claim, str]]]:
        """Store the batch in one transaction, else each lead in its own: how many stored, erased, and the failures."""
        if not scored and not gone:
            return 0, 0, []
        try:
            stored = self._commit(scored, gone)
        except Exception as err:
            if len(scored) + len(gone) == 1:
                claim = scored[0][0] if scored else gone[0]
                return 0, 0, [(claim, f"storing its score failed: {type(err).__name__}: {err}")]
            total, erased, failed = 0, 0, list[tuple[Claim, str]]()
            alone: list[tuple[list[tuple[Claim, ScoredLead]], list[Claim]]] = [([item], []) for item in scored]
            alone += [([], [claim]) for claim in gone]
            for one_scored, one_gone in alone:
                n, e, f = self._store(one_scored, one_gone)
                total, erased, failed = total + n, erased + e, failed + f
            return total, erased, failed
        return stored, len(scored) + len(gone) - stored, []

    def _commit(self, scored: Sequence[tuple[Claim, ScoredLead]], gone: Sequence[Claim]) -> int:
        """Scores, their consequences (`on_scored`) and the queue's rows, in one transaction; how many were stored."""
        with self.engine.begin() as conn:
            # Written first: on SQLite that takes the write lock before anything is read in the transaction.
            queue.complete(conn, [*(c for c, _ in scored), *gone])
            # An erasure that came first leaves nothing to score; one that comes later waits for this transaction
            # (PostgreSQL: the lead's row is locked), then erases these scores too. Never a score of an erased lead.
            present = set(
                conn.execute(
                    select(leads.c.lead_id)
                    .where(leads.c.lead_id.in_([c.lead_id for c, _ in scored]))
                    .with_for_update(read=True, key_share=True)
                ).scalars()
            )
            kept = [(c, answer) for c, answer in scored if c.lead_id in present]
            if not kept:
                return 0
            now = kept[0][1].scored_at
            states = [(c.lead_id, state_of_response(json.loads(answer.response)), c.cause) for c, answer in kept]
            before = record_scores(conn, states, now)
            for lead_id, after, _ in states:
                self.on_scored(conn, lead_id, before[lead_id], after)
        return len(kept)

    def sweep(self) -> int:
        """Queue the open leads whose score is older than `rescore_max_age_hours` (or that have none); how many.

        Every worker sweeps on its own schedule: the sweep is idempotent (it skips queued and freshly scored leads),
        so workers and replicas that sweep at the same time only repeat a cheap query.
        """
        if self._can_rescore() is None:
            return 0  # queued leads would only wait for a model that can score them
        max_age = dt.timedelta(hours=self.state.settings.rescore_max_age_hours)
        queued = queue.sweep(self.engine, dt.datetime.now(dt.UTC), max_age)
        if queued:
            log.info("queued %d open leads whose score is older than %s for a rescore", queued, max_age)
        return queued

    def observe(self) -> None:
        """Report the queue's backlog and the wait of its longest-waiting lead to /metrics."""
        now = dt.datetime.now(dt.UTC)
        with self.engine.connect() as conn:
            backlog = queue.backlog(conn, now)
            oldest = queue.oldest_due(conn, now)
        self.state.metrics.observe_rescore_queue(backlog, 0.0 if oldest is None else (now - oldest).total_seconds())

    async def run(self) -> None:
        """Rescore until stopped: batch after batch while leads are due, else a look every `rescore_poll_seconds`.

        So a change is rescored shortly after it is acknowledged, and an idle worker costs one small query per poll.
        """
        poll = self.state.settings.rescore_poll_seconds
        delay = 0.0  # after a failure: the time to the next try, doubling while failures go on
        while not self._stopping:
            self._busy = True
            try:
                outcome = await asyncio.to_thread(self.rescore_batch)
            except Exception as err:
                delay = min(max(2 * delay, poll), ERROR_BACKOFF_MAX_SECONDS)
                if delay <= poll:
                    log.exception("could not rescore queued leads; trying again")
                else:
                    log.warning("could not rescore queued leads (%s); trying again in %.1f s", err, delay)
                outcome = RescoreOutcome()
            else:
                if delay:
                    log.info("rescoring queued leads again")
                delay = 0.0
            finally:
                self._busy = False
            if outcome.claimed == 0 and not self._stopping:
                await asyncio.sleep(delay or poll)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop `task` (running `run`): the batch in hand is stored first, for up to SHUTDOWN_SECONDS.

        Past that, its leads return to the queue when their lease runs out.
        """
        self._stopping = True
        if not self._busy:
            task.cancel()  # waiting for the next poll: nothing in hand
        done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_SECONDS)
        if not done:
            task.cancel()
            log.warning("stopped before the batch of rescores in hand was stored; its leads return to the queue "
                        "when their lease runs out")  # fmt: skip


def _problems(problems: Sequence[dict[str, object]]) -> str:
    shown = []
    for problem in problems:
        loc = problem.get("loc")
        where = ".".join(str(part) for part in loc) if isinstance(loc, list | tuple) else ""
        shown.append(f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")))
    return "; ".join(shown)


def _by_error(failed: Sequence[tuple[Claim, str]]) -> list[tuple[str, list[Claim]]]:
    """Failed claims grouped by their error, so that each group is released in one statement."""
    groups: dict[str, list[Claim]] = {}
    for claim, error in failed:
        groups.setdefault(error, []).append(claim)
    return list(groups.items())
