"""The model the service scores with: loaded from the MLflow registry by alias, warmed, swapped only when healthy."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.export import ExportBuilder
from features.scoring import LeadScorer
from serving.export_schemas import ExportRequests, export_requests
from serving.preflight import Registry, StartupError, check_registry, redact

log = logging.getLogger(__name__)

# A request-shaped warm-up lead: the first real request should not pay for lazy imports and LightGBM's first call.
_WARM_LEAD: dict[str, Any] = {
    "lead_id": "warm-up",
    "account_id": "warm-up",
    "created_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    "industry": "software",
    "employee_count": 100,
    "seniority": "manager",
}
_WARM_ROUNDS = 20


class ModelNotAvailableError(RuntimeError):
    """The registry has no model under the alias, or it cannot be loaded."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A scorer with where it came from."""

    scorer: LeadScorer
    name: str
    alias: str
    version: str
    run_id: str | None
    trained_at: dt.datetime | None
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # An export model's request models (built from its mapping); None for a lead contract model.
    export: ExportRequests | None = None

    @property
    def kind(self) -> str:
        """The kind of model: contract (leads, touches, colleagues) or crm-export (a flat export's columns)."""
        return "contract" if self.export is None else "crm-export"


def load_model(tracking_uri: str, name: str, alias: str, version: str | None = None) -> LoadedModel:
    """Load `models:/name@alias` (or that exact version) and warm it; raises ModelNotAvailableError, clearly worded."""
    _check_registry(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if version is None
            else client.get_model_version(name, version)
        )
    except MlflowException as err:
        raise _not_registered(
            f"{name}@{alias}" if version is None else f"{name} version {version}", tracking_uri, err
        ) from err
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{found.version}")
        scorer = pyfunc.unwrap_python_model().scorer
    except Exception as err:
        raise ModelNotAvailableError(f"cannot load {name} version {found.version}: {redact(str(err))}") from err
    if not isinstance(scorer, LeadScorer):
        raise ModelNotAvailableError(f"{name} version {found.version} holds no LeadScorer")
    _warm(scorer)
    trained_at = dt.datetime.fromtimestamp(found.creation_timestamp / 1000, dt.UTC)
    export = export_requests(scorer.builder) if isinstance(scorer.builder, ExportBuilder) else None
    return LoadedModel(scorer, name, alias, str(found.version), found.run_id, trained_at, export=export)


def _warm(scorer: LeadScorer) -> None:
    at = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    touch = {"lead_id": "warm-up", "occurred_at": dt.datetime(2024, 2, 20, tzinfo=dt.UTC), "activity_type": "page_view"}
    for _ in range(_WARM_ROUNDS):
        scorer.score_record(_WARM_LEAD, [touch], at)


class ModelHolder:
    """Holds the serving model; a reload loads and warms the new one completely before swapping it in."""

    def __init__(self, tracking_uri: str, name: str, alias: str) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()
        self.last_reload_error: str | None = None

    @property
    def current(self) -> LoadedModel:
        """The model in use (raises before the first successful load)."""
        if self._current is None:
            raise ModelNotAvailableError("no model loaded")
        return self._current

    @property
    def ready(self) -> bool:
        """A model is loaded and warm."""
        return self._current is not None

    def load(self, version: str | None = None) -> LoadedModel:
        """Load the alias' model (or `version`) and make it current; on failure the old model stays, the error kept."""
        with self._lock:
            try:
                loaded = load_model(self.tracking_uri, self.name, self.alias, version)
            except ModelNotAvailableError as err:
                self.last_reload_error = str(err)
                log.error("model reload failed, keeping version %s: %s", self._version(), err)
                raise
            self._current = loaded
            self.last_reload_error = None
            log.info("serving %s version %s (@%s)", loaded.name, loaded.version, loaded.alias)
            return loaded

    def _version(self) -> str | None:
        return self._current.version if self._current else None


# Logged by training next to the model: the readiness holdout snapshots with their routing scores and labels.
HOLDOUT_SCORES = "holdout/readiness_scores.parquet"


def holdout_scores(tracking_uri: str, run_id: str, what: str) -> pd.DataFrame:
    """The readiness holdout a model (`what`, for messages) was evaluated on, read from its MLflow run."""
    if not run_id:
        raise ModelNotAvailableError(f"{what} names no MLflow run")
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=HOLDOUT_SCORES, tracking_uri=tracking_uri
        )
        return pd.read_parquet(path)
    except (MlflowException, OSError) as err:
        raise ModelNotAvailableError(f"cannot read the holdout scores of {what} (run {run_id}): {err}") from err


def registered_run(tracking_uri: str, name: str, alias: str) -> tuple[str, str]:
    """Version and run id of the model the alias points at (without loading it)."""
    _check_registry(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        raise _not_registered(f"{name}@{alias}", tracking_uri, err) from err
    return str(version.version), str(version.run_id or "")


def _check_registry(tracking_uri: str) -> None:
    """A registry that is not there is said so (a mistyped SQLite path must not become a new, empty store)."""
    try:
        check_registry(Registry(tracking_uri, "the tracking URI"))
    except StartupError as err:
        raise ModelNotAvailableError(str(err)) from None


def _not_registered(wanted: str, tracking_uri: str, err: MlflowException) -> ModelNotAvailableError:
    where = redact(tracking_uri)
    if err.error_code != "RESOURCE_DOES_NOT_EXIST":
        # Unreachable, refused, broken: not the same as an empty registry, and not fixed by training.
        first = (err.message or str(err)).strip().splitlines()[0]
        return ModelNotAvailableError(f"cannot read {wanted} from the registry at {where}: {first}")
    return ModelNotAvailableError(
        f"no model {wanted} in the registry at {where}: train and promote one first "
        f"(leadscore train && leadscore promote)"
    )
