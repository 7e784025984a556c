"""Model info, health, readiness, Prometheus metrics and the admin reload."""

from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from features.export import ExportBuilder
from features.fit import SIZE_BAND_LABELS
from serving.model import LoadedModel, ModelNotAvailableError
from serving.schemas import ModelInfo, Readiness, ReloadResult, ScoreLogHealth
from serving.state import AdminAuth, ModelDep, MonitoringKey, ScoringAuth, StateDep

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    """Always 200 while the process answers."""
    return {"status": "ok"}


@router.get("/readyz", summary="A model is loaded and warm, and scores can be recorded",
            responses={503: {"model": Readiness}})  # fmt: skip
async def readyz(state: StateDep, response: Response, key: MonitoringKey) -> Readiness:
    """200 when the service can score: a model is loaded and the score log's journal can be written; 503 otherwise.

    With keys configured, the details (model version, errors, the score log's lag) are shown to monitoring and admin
    keys only (or to anyone with LEADSCORE_OPEN_MONITORING): errors can name internal hosts.
    """
    holder = state.holder
    status = await asyncio.to_thread(state.observe)
    ready = holder.ready and status.journal_error is None
    if not ready:
        response.status_code = 503
    if not state.may_monitor(key):
        return Readiness(ready=ready)
    return Readiness(
        ready=ready,
        model_version=holder.current.version if holder.ready else None,
        last_reload_error=holder.last_reload_error,
        thresholds_error=state.policy_error,
        score_log=ScoreLogHealth(
            pending=status.pending,
            oldest_pending_seconds=status.oldest_pending_seconds,
            rejected=status.rejected,
            last_write_error=status.last_write_error,
            journal_error=status.journal_error,
        ),
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep, key: MonitoringKey) -> Response:
    """Request counts, latency histograms, routes chosen, the score distribution and the score log's lag.

    With keys configured, a monitoring or admin key is needed (header X-API-Key, or Authorization: Bearer, which
    Prometheus sends), unless LEADSCORE_OPEN_MONITORING is set: the figures are business volumes.
    """
    if not state.may_monitor(key):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a monitoring or admin key is needed (X-API-Key or Bearer)")
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", summary="The model in use", dependencies=[ScoringAuth])
async def model_info(state: StateDep, model: ModelDep) -> ModelInfo:
    """Version, run, training time, holdout metrics and a summary of the features it reads."""
    scorer = model.scorer
    raw = scorer.metadata.get("metrics", {})
    metrics = {
        task: {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()} for task, values in raw.items()
    }
    return ModelInfo(
        name=model.name,
        alias=model.alias,
        version=model.version,
        run_id=model.run_id,
        trained_at=model.trained_at,
        loaded_at=model.loaded_at,
        holdout_metrics=metrics,
        features=_features(model),
        thresholds_version=state.policy().version,
        quality_warnings=[
            str(w["message"]) if isinstance(w, dict) else str(w) for w in scorer.metadata.get("quality_warnings", [])
        ],
    )


def _features(model: LoadedModel) -> dict[str, object]:
    """What the model reads: the contract's feature names, or an export's columns by role."""
    builder = model.scorer.builder
    if isinstance(builder, ExportBuilder):
        columns = builder.column_mappings
        return {
            "kind": model.kind,
            "outcome": builder.mapping.outcome.column,
            "fit": [c for c in builder.columns_ if columns[c].role == "fit"],
            "engagement": [c for c in builder.columns_ if columns[c].role == "engagement"],
            "categorical": [c for c in builder.columns_ if columns[c].type == "category"],
            "vocabulary_sizes": {k: len(v) for k, v in builder.encoder_.vocabularies_.items()},
        }
    return {
        "kind": model.kind,
        "fit": list(builder.fit_feature_names_),
        "engagement": list(builder.engagement_feature_names_),
        "categorical": list(builder.categorical_features_),
        "vocabulary_sizes": {k: len(v) for k, v in builder.fit_encoder_.vocabularies_.items()},
        "size_bands": list(SIZE_BAND_LABELS),
        "data_end": model.scorer.metadata.get("data_end"),
        # What readiness predicts (the contract's label: SQL, or won, within a horizon), for models that say so.
        "readiness": model.scorer.metadata.get("readiness"),
    }


@router.post("/v1/admin/reload", summary="Load the model the alias points at now", dependencies=[AdminAuth])
async def reload(state: StateDep, response: Response) -> ReloadResult:
    """Loads and warms the new model before swapping it in; on failure the old one keeps serving (status 409).

    The worker that answers reloads at once; the service's other workers load the same version within about a
    second and swap it in once it is warm, each keeping its old model if the load fails (see their /readyz).
    """
    holder = state.holder
    previous = holder.current.version if holder.ready else ""
    try:
        # Loading takes seconds: off the event loop, so scoring goes on meanwhile with the old model.
        loaded = await asyncio.to_thread(state.reload)
    except ModelNotAvailableError as err:
        response.status_code = 409
        return ReloadResult(reloaded=False, model_version=previous, previous_version=previous, error=str(err))
    return ReloadResult(reloaded=True, model_version=loaded.version, previous_version=previous)
