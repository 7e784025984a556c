"""Integration fixtures: the session's model registered once as @champion, and cheap copies of that MLflow store."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import Trained
from training.config import CHAMPION, MODEL_NAME, TrainConfig
from training.tracking import configure_tracking, log_training

STORE_DB = "mlflow.db"  # ensure_experiment keeps the artifacts beside it, in mlartifacts/


def _sqlite_uri(db: Path) -> str:
    return f"sqlite:///{db}"


def _columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every (table, column) of the database: SQLite keeps text in a column of any declared type."""
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [(table, row[1]) for table in tables for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _holds(conn: sqlite3.Connection, table: str, column: str, text: str) -> bool:
    found = conn.execute(f'SELECT 1 FROM "{table}" WHERE instr("{column}", ?) > 0 LIMIT 1', (text,)).fetchone()
    return found is not None


@dataclass(frozen=True)
class ChampionStore:
    """A SQLite MLflow store holding the session's model (tests.conftest.trained) as @champion; never written after.

    Logging and registering the model takes ~20 s (plots, holdout scores, the pyfunc model and its input example):
    it is done once per session, and each module that runs a service gets a copy of its own (`copy_to`).
    """

    root: Path  # the store's folder: the database and its artifacts

    def copy_to(self, root: Path) -> str:
        """Copy the database and the artifacts to `root` (a folder not there yet); the copy's tracking URI.

        MLflow records absolute artifact locations (of the experiment, runs, logged models and model versions) and
        has no API that moves a store: the copy's are rewritten to `root`, so that it reads its own artifacts and the
        runs and models logged to it later write there too.
        """
        shutil.copytree(self.root, root)
        old, new = self.root.resolve(), root.resolve()
        with closing(sqlite3.connect(root / STORE_DB)) as conn, conn:
            columns = _columns(conn)
            for table, column in columns:
                conn.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                    (f"{old.as_uri()}/", f"{new.as_uri()}/", f"{old.as_uri()}/"),
                )
            # A location kept as a plain path rather than a file:// URI would still lead the copy to the original.
            left = [f"{table}.{column}" for table, column in columns if _holds(conn, table, column, f"{old}/")]
        assert not left, f"the copy of the MLflow store in {root} still names {old} in {left}"
        return _sqlite_uri(root / STORE_DB)


@pytest.fixture(scope="session")
def champion_store(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> ChampionStore:
    """The session's model, logged and registered once in a temporary store and promoted to @champion."""
    root = tmp_path_factory.mktemp("champion-store")
    configure_tracking(_sqlite_uri(root / STORE_DB))
    # TrainConfig(): the config tests.conftest trained the model with, logged as its params.
    logged = log_training(trained.result, trained.training_set, trained.leads, trained.activities, TrainConfig())
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, logged.version)
    # MLflow's setters also export $MLFLOW_TRACKING_URI and $MLFLOW_REGISTRY_URI, which the services started later
    # would inherit: this store is the modules' template, never their registry.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return ChampionStore(root)


def register_new_champion(tracking_uri: str) -> str:
    """Register the @champion's model again as a new version and make that @champion; its version.

    What a retrain and a promotion leave in the registry (a new champion version, with its run and tags), without the
    ~20 s of logging a model: for tests of a service that reloads its champion, to which the model's content is moot.
    """
    configure_tracking(tracking_uri)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    new = client.create_model_version(MODEL_NAME, champion.source, run_id=champion.run_id, tags=champion.tags)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, new.version)
    return str(new.version)
