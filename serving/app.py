"""The FastAPI app factory of the score service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from serving import fast
from serving.export_schemas import export_openapi
from serving.launch import ServiceStart
from serving.metrics import MetricsAndLimitsMiddleware, ServiceMetrics
from serving.model import ModelHolder, ModelNotAvailableError
from serving.preflight import StartupError, check_journal, open_store, registry_of
from serving.rescore import SWEEP_FIRST_SECONDS, Rescorer
from serving.routers import export, ingest, leads, meta, page, score, thresholds
from serving.routers import webhooks as webhook_routes
from serving.schemas import MAX_PROPERTY_DEPTH
from serving.score_log import ScoreLog, ScoreLogUnavailableError
from serving.scoring import ModelKindChangedError
from serving.settings import LOOPBACK_HOSTS, Settings
from serving.state import (
    POLICY_REFRESH_SECONDS,
    RELOAD_CHECK_SECONDS,
    RETENTION_FIRST_SECONDS,
    RETENTION_SECONDS,
    STATUS_SECONDS,
    ServiceState,
)
from serving.store import PolicyStore, ReloadStore
from serving.webhooks import DeliveryConfig, deliver_forever
from timeline.outbox import emit_score_events
from timeline.scores import ScoreState

log = logging.getLogger(__name__)


class ScoreService(FastAPI):
    """The FastAPI app, with POSTs to the score routes offered to the fast path first (see serving.fast)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route score POSTs to the fast path once the service has started; everything else to FastAPI."""
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in fast.ANSWERS:
            state: ServiceState | None = getattr(self.state, "service", None)
            if state is not None and state.holder.ready and state.holder.current.export is not None:
                # An export model reads the export's columns: its own routes, under the same paths.
                await super().__call__({**scope, export.EXPORT_SCOPE: True}, receive, send)
                return
            if state is not None:
                await fast.answer(state, super().__call__, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The score service; settings come from the environment when not given (read here, never at import)."""
    settings = settings or Settings()
    if not settings.auth_enabled and settings.host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing to listen on {settings.host} without API keys: set LEADSCORE_API_KEYS and LEADSCORE_ADMIN_KEYS"
        )
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _start(settings, metrics)
        if not settings.auth_enabled:
            log.warning("no API keys configured: scoring and admin are open to anyone on %s", settings.host)
        app.state.service = state
        # What start-up made (MLflow, pandas, the model) lives as long as the service: frozen, it is never walked
        # again by the collections that scoring's short-lived objects set off.
        gc.collect()
        gc.freeze()
        # In threads: a check is a small query, but a load takes seconds, and scoring must go on meanwhile.
        chores = [
            asyncio.create_task(_every(RELOAD_CHECK_SECONDS, state.follow_reloads, "check for reloads")),
            asyncio.create_task(_every(POLICY_REFRESH_SECONDS, state.refresh_policy, "read the policy in force")),
            asyncio.create_task(_every(STATUS_SECONDS, state.observe, "observe the score log")),
            asyncio.create_task(
                _every(RETENTION_SECONDS, state.prune_score_log, "prune the score log", first=RETENTION_FIRST_SECONDS)
            ),
        ]
        # Rescore on change: queued leads as soon as they are due, aged scores by a periodic sweep.
        # A rescore that routes a lead anew tells the CRM: its webhooks are queued in the rescore's transaction.
        app.state.rescorer = rescorer = Rescorer(state, on_scored=_notify_subscribers)
        rescoring = asyncio.create_task(rescorer.run())
        chores += [
            asyncio.create_task(_every(STATUS_SECONDS, rescorer.observe, "observe the rescore queue")),
            asyncio.create_task(_every(settings.sweep_seconds, rescorer.sweep, "sweep for aged scores",
                                       first=min(SWEEP_FIRST_SECONDS, settings.sweep_seconds))),
        ]  # fmt: skip
        if settings.webhook_delivery:
            config = DeliveryConfig.from_settings(settings)
            chores.append(asyncio.create_task(deliver_forever(state.score_log.engine, config)))
        try:
            yield
        finally:
            await rescorer.stop(rescoring)  # the batch in hand is stored before the store closes
            for chore in chores:
                chore.cancel()
            for chore in chores:
                with contextlib.suppress(asyncio.CancelledError):
                    await chore
            _close(state)

    app = ScoreService(
        title="leadscore",
        version="1",
        summary="Calibrated, explained lead scores and routing for CRMs.",
        lifespan=lifespan,
        docs_url=None,  # served by serving.routers.page, from the service itself instead of a CDN
        redoc_url=None,  # ReDoc would need a CDN too; /docs covers it
    )
    app.include_router(export.router)  # first: its routes match only requests marked for an export model
    app.include_router(score.router)
    app.include_router(meta.router)
    app.include_router(thresholds.router)
    app.include_router(webhook_routes.router)
    app.include_router(page.router)
    app.include_router(ingest.router)
    app.include_router(leads.router)
    app.state.ingest = ingest.runtime(settings)  # here: a bad event map (LEADSCORE_EVENT_MAP) fails the start

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each input back whole (megabytes, for a large body) and fails with a 500 on
        # inputs strict JSON cannot carry (NaN, Infinity, unpaired surrogates): the same 422, each input shown as
        # text and cut short.
        return JSONResponse({"detail": [_shown(error) for error in exc.errors()]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's JSON parser gives up on a body nested hundreds of levels deep with a bare 400.
            detail = [{"loc": ["body"], "type": "json_invalid",
                       "msg": "JSON nested too deeply to parse (touch properties may nest at most "
                              f"{MAX_PROPERTY_DEPTH} levels)"}]  # fmt: skip
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ScoreLogUnavailableError)
    async def unrecorded(request: Request, exc: ScoreLogUnavailableError) -> Response:
        return Response(
            fast.unavailable_body(exc), status_code=503, media_type="application/json",
            headers={"Retry-After": str(fast.RETRY_AFTER_SECONDS)},
        )  # fmt: skip

    @app.exception_handler(ModelKindChangedError)
    async def changed_kind(request: Request, exc: ModelKindChangedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback for us; the caller gets no internals.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    contract_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The score routes' bodies are the model's: an export model documents its own columns (from its mapping).
        state: ServiceState | None = getattr(app.state, "service", None)
        model = state.holder.current if state is not None and state.holder.ready else None
        if model is None or model.export is None:
            return contract_openapi()
        return export_openapi(contract_openapi(), model)

    app.openapi = openapi  # type: ignore[method-assign]

    def documented_paths() -> list[str]:
        return list(app.openapi()["paths"])

    app.add_middleware(
        MetricsAndLimitsMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, paths=documented_paths
    )
    return app


def _start(settings: Settings, metrics: ServiceMetrics) -> ServiceState:
    """Open the stores and load the model; a failure says which setting, in one line (StartupError).

    Not a traceback of the database driver's: an operator reads the first line and fixes the setting.
    """
    metrics.forget_dead_workers()
    registry = registry_of(settings)
    try:
        journal = check_journal(settings.journal_dir)
        engine = open_store(settings.store_url, durable_fsync=settings.store_durable_fsync)
    except StartupError as err:
        log.error("%s", err)
        raise
    holder = ModelHolder(registry.uri, settings.model_name, settings.model_alias)
    try:
        score_log = ScoreLog(engine, journal)
    except Exception as err:
        engine.dispose()
        message = f"cannot replay the score log's journals in {journal} into the store (LEADSCORE_STORE_URL): {err}"
        log.error("%s", message)
        raise StartupError(message) from None
    state = ServiceState(settings, holder, score_log, PolicyStore(engine), metrics, ReloadStore(engine))
    try:
        state.start(ServiceStart.from_environment())  # no model, no service: raises saying how to get one
        state.refresh_policy()  # stores the model's default policy as version 1 on first start
    except ModelNotAvailableError as err:
        message = f"{err} (registry from {registry.source})"
        log.error("%s", message)
        _close(state)
        raise StartupError(message) from None
    except BaseException:
        _close(state)
        raise
    return state


def _notify_subscribers(conn: Connection, lead_id: str, before: ScoreState | None, after: ScoreState) -> None:
    emit_score_events(conn, lead_id, before, after, now=dt.datetime.now(dt.UTC))


def _close(state: ServiceState) -> None:
    """Stop the score log's writer (flushing what it can; the journal keeps the rest) and close the store."""
    state.score_log.close()
    state.score_log.engine.dispose()


async def _every(seconds: float, chore: Callable[[], object], what: str, *, first: float | None = None) -> None:
    """Run `chore` in a thread every `seconds` (the first time after `first`) while the service lives.

    A failure is logged and the next run tried.
    """
    await asyncio.sleep(seconds if first is None else first)
    while True:
        try:
            await asyncio.to_thread(chore)
        except Exception:
            log.exception("could not %s; trying again in %.0f s", what, seconds)
        await asyncio.sleep(seconds)


# How much of a refused input a 422 shows: enough to recognise it, never the megabytes that were sent.
SHOWN_INPUT_CHARS = 200


def _shown(error: Any) -> dict[str, object]:
    """One validation error as JSON can carry it, its input cut short (FastAPI echoes each input whole)."""
    shown = dict(error)
    if "input" in shown:
        value = _printable(jsonable_encoder(shown["input"]))
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > SHOWN_INPUT_CHARS:
            value = f"{text[:SHOWN_INPUT_CHARS]}... ({len(text):,} characters)"
        shown["input"] = value
    if "ctx" in shown:
        # A validator's exception is in ctx["error"]; FastAPI would show it as {}.
        context = {k: str(v) if isinstance(v, BaseException) else v for k, v in shown["ctx"].items()}
        shown["ctx"] = _printable(jsonable_encoder(context))
    return shown


def _printable(value: object) -> object:
    """`value` with what strict JSON cannot hold (NaN, Infinity, unpaired surrogates) turned into text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {_printable(key): _printable(item) for key, item in value.items()}
    return value
