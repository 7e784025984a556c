"""What one running service holds (settings, model, stores, metrics) and the FastAPI dependencies that reach it."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.launch import ServiceStart
from serving.metrics import ServiceMetrics
from serving.model import LoadedModel, ModelHolder, ModelNotAvailableError
from serving.policy import RoutingPolicy
from serving.retention import PruneResult, prune_score_log
from serving.schemas import LeadToScore
from serving.score_log import ScoreLog, ScoreLogStatus
from serving.service import Coalescer, ScoredLead
from serving.settings import Settings
from serving.store import PolicyStore, PolicyVersion, ReloadStore

log = logging.getLogger(__name__)

# How often a worker reads the policy in force from the store, in the background: a saved policy reaches every worker
# within this time, and no request waits for the database (scores go on with the last policy read while it is down).
POLICY_REFRESH_SECONDS = 1.0
# How often a worker looks for a reload that another worker answered (a reload request reaches one worker only).
RELOAD_CHECK_SECONDS = 1.0
# A worker that cannot load the version a reload chose tries again after 1, 2, 4, ... seconds, at most this many:
# the service's workers serve one version again soon after the registry recovers.
FOLLOW_RETRY_MAX_SECONDS = 30.0
# How often a worker reports its score log's lag to /metrics.
STATUS_SECONDS = 1.0
# How often the score log's retention runs (in one worker of a machine at a time; the database guards the rest).
RETENTION_SECONDS = 3600.0
RETENTION_FIRST_SECONDS = 60.0  # after start: not in the way of warming up


@dataclass
class ServiceState:
    """Everything the routes need, created by `create_app` and closed on shutdown."""

    settings: Settings
    holder: ModelHolder
    score_log: ScoreLog
    policies: PolicyStore
    metrics: ServiceMetrics
    reloads: ReloadStore
    tuning_samples: dict[str, Any] = field(default_factory=dict)  # replayable holdout per model version
    # Single-lead requests waiting at the same moment, scored as one group: (validated body, body as received).
    single_scores: Coalescer[tuple[LeadToScore, bytes], ScoredLead] = field(default_factory=Coalescer)
    _policy: PolicyVersion | None = None
    _policy_lock: threading.Lock = field(default_factory=threading.Lock)
    policy_error: str | None = None  # why the last read of the policy in force failed (the last one read stays)
    _reload_seen: int = 0  # the newest reload this worker has acted on (or found when it started)
    _follow_failed: int = 0  # the reload whose version this worker failed to load last
    _follow_retry_at: float = 0.0  # when to try loading it again
    _follow_delay: float = 0.0

    def policy(self) -> PolicyVersion:
        """The routing policy in force, as last read from the store (no I/O: scoring never waits for the database)."""
        if self._policy is None:
            raise RuntimeError("the routing policy has not been read yet (the service has not started)")
        return self._policy

    def refresh_policy(self) -> PolicyVersion:
        """Read the policy in force from the store (storing the model's default as version 1 on first start).

        A failed read keeps the policy read before, and says why in `policy_error`; it raises only when no policy
        was ever read, which fails the service's start.
        """
        with self._policy_lock:
            try:
                latest = self.policies.latest()
                if latest is None:
                    default = RoutingPolicy.from_cutoffs(self.holder.current.scorer.cutoffs)
                    latest = self.policies.ensure_default(default)
            except Exception as err:
                if self._policy is None:
                    raise
                if self.policy_error is None:
                    log.warning("cannot read the routing policy in force (%s); routing with version %d meanwhile",
                                err, self._policy.version)  # fmt: skip
                self.policy_error = f"cannot read the routing policy in force: {type(err).__name__}: {err}"
                return self._policy
            if self.policy_error is not None:
                log.info("the routing policy in force can be read again")
            self._policy, self.policy_error = latest, None
            return latest

    def observe(self) -> ScoreLogStatus:
        """The score log's lag and faults, also handed to /metrics."""
        status = self.score_log.status()
        self.metrics.observe_score_log(status)
        self.metrics.observe_thresholds(stale=self.policy_error is not None)
        return status

    def prune_score_log(self) -> PruneResult | None:
        """Archive and delete the score-log records past the retention period (None when retention is off)."""
        days = self.settings.score_log_retention_days
        if days is None:
            return None
        archive = Path(self.settings.score_log_archive_dir) if self.settings.score_log_archive_dir else None
        older_than = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        return prune_score_log(self.score_log.engine, older_than=older_than, archive_dir=archive)

    def forget_policy(self) -> None:
        """Read the policy in force now (after this worker saved a new version, so its next score uses it)."""
        self.refresh_policy()

    def start(self, service: ServiceStart | None) -> LoadedModel:
        """Load this worker's first model: the service's (see ServiceStart), else the alias'.

        Reloads recorded before the service started are not replayed: the alias said what to serve then.
        """
        latest = self.reloads.latest(self.holder.name)
        self._reload_seen = latest.id if latest else 0
        if service is None:
            return self.holder.load()
        version = service.model_version
        if latest is not None and latest.id > service.reload_id:
            version = latest.version  # reloaded since the service started: the other workers follow that one
        try:
            return self.holder.load(version)
        except ModelNotAvailableError:
            # Serving the alias' model beats not serving: a worker that cannot start takes the whole service down.
            log.warning("cannot load version %s, which the other workers serve; loading @%s", version,
                        self.holder.alias)  # fmt: skip
            return self.holder.load()

    def reload(self) -> LoadedModel:
        """Load the model the alias points at now, in this worker, and record it for the other workers to follow."""
        try:
            loaded = self.holder.load()
        except ModelNotAvailableError:
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        self._followed(self.reloads.record(loaded.name, loaded.version).id)
        return loaded

    def follow_reloads(self) -> None:
        """Load the version of a reload another worker answered, until this worker serves it.

        A failed load keeps the old model and is tried again after 1, 2, 4, ... seconds (FOLLOW_RETRY_MAX_SECONDS
        at most), so a worker that missed a reload (the registry was briefly unreachable) catches up on its own.
        """
        latest = self.reloads.latest(self.holder.name)
        if latest is None or latest.id <= self._reload_seen:
            return
        if latest.id == self._follow_failed and time.monotonic() < self._follow_retry_at:
            return  # a retry of the same reload is not due yet (a newer reload is tried at once)
        if self.holder.ready and self.holder.current.version == latest.version:
            self._followed(latest.id)
            self.holder.last_reload_error = None  # serves what the service serves: an old failure is no news
            return
        # That exact version, not the alias (which may have moved since): every worker serves what the reload chose.
        try:
            self.holder.load(latest.version)
        except ModelNotAvailableError:
            self.metrics.reloads.labels("failed").inc()  # the old model stays; /readyz reports the error
            if latest.id != self._follow_failed:
                self._follow_failed, self._follow_delay = latest.id, 0.0
            self._follow_delay = min(max(2 * self._follow_delay, 1.0), FOLLOW_RETRY_MAX_SECONDS)
            self._follow_retry_at = time.monotonic() + self._follow_delay
            log.warning("will try loading version %s again in %.0f s", latest.version, self._follow_delay)
        else:
            self.metrics.reloads.labels("ok").inc()
            self._followed(latest.id)

    def _followed(self, reload_id: int) -> None:
        self._reload_seen = reload_id
        self._follow_failed = 0
        self._follow_delay = self._follow_retry_at = 0.0

    def may_monitor(self, key: str | None) -> bool:
        """Whether a caller with this key may read metrics and health details: a monitoring or admin key does."""
        settings = self.settings
        if not settings.auth_enabled or settings.open_monitoring:
            return True
        keys = [k.get_secret_value() for k in (*settings.monitoring_keys, *settings.admin_keys)]
        return key is not None and _matches(key, keys)

    def may_score(self, key: str | None) -> bool:
        """Whether a request with this X-API-Key (None: none, or empty) may score: any key does when none is set."""
        settings = self.settings
        if not settings.auth_enabled:
            return True
        keys = [k.get_secret_value() for k in (*settings.api_keys, *settings.admin_keys)]
        return key is not None and _matches(key, keys)

    def may_ingest(self, key: str | None) -> bool:
        """Whether a request with this key may write to the lead timeline: an ingest or admin key, or none is set."""
        settings = self.settings
        if not settings.auth_enabled:
            return True
        keys = [k.get_secret_value() for k in (*settings.ingest_keys, *settings.admin_keys)]
        return key is not None and _matches(key, keys)


def service_state(request: Request) -> ServiceState:
    """The service state of the app handling `request` (for code that runs outside FastAPI's dependencies)."""
    state: ServiceState = request.app.state.service
    return state


# The dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread, three
# thread hand-offs per request for a few attribute reads.
async def get_state(request: Request) -> ServiceState:
    """The service state of the app handling `request`."""
    return service_state(request)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_model(state: StateDep) -> LoadedModel:
    """The model in use; 503 while none is loaded."""
    if not state.holder.ready:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded yet")
    return state.holder.current


ModelDep = Annotated[LoadedModel, Depends(get_model)]
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="A scoring or admin key.")


def _matches(key: str, candidates: list[str]) -> bool:
    # Compare against every key, in constant time each, so timing says nothing about which key nearly matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


async def require_scoring_key(state: StateDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """401 unless the request carries a scoring or admin key (when keys are configured)."""
    if not state.may_score(key):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key (header X-API-Key)")


async def require_admin_key(state: StateDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """401 without a valid key, 403 with a scoring or ingest key that is not an admin key."""
    settings = state.settings
    if not settings.auth_enabled:
        return
    admin = [k.get_secret_value() for k in settings.admin_keys]
    if key is not None and _matches(key, admin):
        return
    if key is not None and state.may_ingest(key):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this key may ingest but not administer the service")
    await require_scoring_key(state, key)
    raise HTTPException(status.HTTP_403_FORBIDDEN, "this key may score but not administer the service")


async def require_ingest_key(state: StateDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """401 without a valid key, 403 with a scoring key: ingest takes an ingest or admin key."""
    if state.may_ingest(key):
        return
    if key is not None and state.may_score(key):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this key may score but not ingest: use an ingest key")
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key (header X-API-Key)")


_bearer = HTTPBearer(auto_error=False, description="A monitoring or admin key, as Prometheus sends it.")


async def monitoring_key(
    key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The key a monitoring call carries: X-API-Key, or Authorization: Bearer."""
    return key or (bearer.credentials if bearer is not None else None)


MonitoringKey = Annotated[str | None, Depends(monitoring_key)]
ScoringAuth = Depends(require_scoring_key)
AdminAuth = Depends(require_admin_key)
IngestAuth = Depends(require_ingest_key)
