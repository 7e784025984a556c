"""Integration fixtures: the model registered once as @champion, copies of its store, a served service, a browser."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from playwright.sync_api import Browser, sync_playwright

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


# Debian's Chromium: Playwright cannot download its own browser builds here (scripts/test.sh installs this one).
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Server:
    """A running service, where its logs go, and the key its reads use unless told another."""

    url: str
    log: Path
    key: str
    store_url: str = ""  # the service store (routing thresholds, score log, timeline)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"X-API-Key": key or self.key}, timeout=30)

    def send(self, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
        """A request with a JSON body (none when `body` is None)."""
        return httpx.request(method, f"{self.url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)


@pytest.fixture(scope="module")
def server(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service per module that asks for it (the page's browser tests), on its own copy of the model store."""
    # Imported here: test_serving imports this module, so a module-level import would be circular.
    from tests.integration.test_serving import SCORING_KEY, _free_port, _wait_ready, service_env  # noqa: PLC0415

    root = tmp_path_factory.mktemp("page-server")
    uri = champion_store.copy_to(root / "registry")
    port = _free_port()
    env = service_env(uri, root)
    log_path = root / "server.log"
    with log_path.open("wb") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadscore", "serve", "--port", str(port)],
            env=env, cwd=root, stdout=server_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process)
            yield Server(url, log_path, SCORING_KEY, env["LEADSCORE_STORE_URL"])
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module; each test opens its own context in it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does so when run as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            yield launched
        finally:
            launched.close()
