"""Serving fixtures: the session's trained model registered as @champion in a temporary MLflow store, and the app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from serving.app import create_app
from serving.settings import Settings
from tests.conftest import Trained
from training.config import CHAMPION, MODEL_NAME, TrainConfig
from training.tracking import configure_tracking, log_training

SCORING_KEY = "scoring-key-for-tests"
ADMIN_KEY = "admin-key-for-tests"
SCORING = {"X-API-Key": SCORING_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}


@dataclass(frozen=True)
class Registry:
    """A temporary MLflow store holding one model version under @champion."""

    tracking_uri: str
    version: str
    root: Path


@pytest.fixture(scope="session")
def registry(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Log the session's trained model as training does (no CLI) and point @champion at it."""
    root = tmp_path_factory.mktemp("registry")
    # MLflow keeps its URIs process-wide and mirrors them into the environment: restore both afterwards.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("MLFLOW_REGISTRY_URI", raising=False)
        uri = configure_tracking(f"sqlite:///{root / 'mlflow.db'}")
        logged = log_training(
            trained.result, trained.training_set, trained.leads, trained.activities, TrainConfig(), data_dir=None
        )
        MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, logged.version)
        try:
            yield Registry(tracking_uri=uri, version=logged.version, root=root)
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
            mlflow.set_registry_uri("")


def service_settings(registry: Registry, store_dir: Path, **overrides: Any) -> Settings:
    """Settings of a service on `registry` with its own score/policy store, one scoring key and one admin key."""
    values: dict[str, Any] = {
        "tracking_uri": registry.tracking_uri,
        "store_url": f"sqlite:///{store_dir / 'svc.db'}",
        "journal_dir": str(store_dir / "journal"),
        "api_keys": [SCORING_KEY],
        "admin_keys": [ADMIN_KEY],
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="session")
def client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The score service in-process; entering the client runs the lifespan (model load, stores), leaving closes it."""
    app = create_app(service_settings(registry, tmp_path_factory.mktemp("service")))
    with TestClient(app) as test_client:
        yield test_client
