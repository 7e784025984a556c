"""How the workers of one service follow a reload that another worker answered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from sqlalchemy import Engine

from serving.launch import SERVICE_START, ServiceStart
from serving.metrics import ServiceMetrics
from serving.model import ModelHolder, ModelNotAvailableError
from serving.score_log import ScoreLog
from serving.settings import Settings
from serving.state import ServiceState
from serving.store import PolicyStore, ReloadStore, make_engine
from tests.conftest import Trained
from tests.serving.conftest import Registry, service_settings
from tests.stores import store_url_fixture  # noqa: F401 (pytest finds the fixture store_url in it)
from training.config import CHAMPION, MODEL_NAME, TrainConfig
from training.tracking import configure_tracking, log_training


@dataclass
class _Served:
    version: str
    name: str = "lead-scorer"


@dataclass
class FakeHolder:
    """A ModelHolder that 'loads' versions from a list of loadable ones, and remembers what it was asked."""

    current: _Served
    loadable: set[str]
    alias_version: str = ""  # what the alias points at (default: the current version): a load without one loads it
    name: str = "lead-scorer"
    alias: str = "champion"
    asked: list[str | None] = field(default_factory=list)
    ready: bool = True

    def load(self, version: str | None = None) -> _Served:
        self.asked.append(version)
        wanted = version or self.alias_version
        if wanted not in self.loadable:
            raise ModelNotAvailableError(f"cannot load version {wanted}")
        self.current = _Served(wanted)
        return self.current


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def worker(engine: Engine, holder: FakeHolder, service: ServiceStart | None = None) -> ServiceState:
    """A started worker; `holder.asked` then lists what it was asked to load after start-up only."""
    holder.alias_version = holder.alias_version or holder.current.version
    holder.loadable.add(holder.alias_version)
    state = ServiceState(
        Settings(), cast(ModelHolder, holder), ScoreLog(engine), PolicyStore(engine), ServiceMetrics(),
        ReloadStore(engine),
    )  # fmt: skip
    state.start(service)
    holder.asked.clear()
    return state


def test_a_worker_loads_the_version_another_worker_reloaded_to(engine: Engine) -> None:
    other = worker(engine, FakeHolder(_Served("1"), {"2", "3"}))
    holder = FakeHolder(_Served("1"), {"2", "3"})
    this = worker(engine, holder)
    ReloadStore(engine).record("lead-scorer", "2")  # what the other worker's reload stores
    this.follow_reloads()
    this.follow_reloads()  # acted on once only
    assert holder.asked == ["2"] and holder.current.version == "2"
    other.score_log.close()
    this.score_log.close()


def test_reloads_from_before_a_worker_started_are_not_replayed(engine: Engine) -> None:
    ReloadStore(engine).record("lead-scorer", "2")
    holder = FakeHolder(_Served("3"), {"2", "3"})  # started later: the alias points at 3 now
    state = worker(engine, holder)
    state.follow_reloads()
    assert holder.asked == [] and holder.current.version == "3"
    state.score_log.close()


def test_a_failed_follow_keeps_the_old_model_and_is_counted(engine: Engine) -> None:
    holder = FakeHolder(_Served("1"), set())
    state = worker(engine, holder)
    ReloadStore(engine).record("lead-scorer", "9")
    state.follow_reloads()
    assert holder.current.version == "1"
    assert 'leadscore_model_reloads_total{outcome="failed"} 1.0' in state.metrics.exposition().decode()
    state.score_log.close()


def test_a_replaced_worker_serves_the_version_the_service_started_with_not_the_moved_alias(engine: Engine) -> None:
    ReloadStore(engine).record("lead-scorer", "1")  # a reload of an earlier run of the service
    holder = FakeHolder(_Served(""), {"2", "3"}, alias_version="3")  # the alias moved to 3 without a reload
    state = worker(engine, holder, ServiceStart(model_version="2", reload_id=1))
    assert holder.current.version == "2"
    state.follow_reloads()
    assert holder.asked == []  # the reload from before the service started is not replayed either
    state.score_log.close()


def test_a_replaced_worker_serves_the_version_of_a_reload_since_the_service_started(engine: Engine) -> None:
    service = ServiceStart(model_version="2", reload_id=0)
    ReloadStore(engine).record("lead-scorer", "4")  # a sibling answered a reload after the service started
    holder = FakeHolder(_Served(""), {"2", "4"}, alias_version="5")
    state = worker(engine, holder, service)
    assert holder.current.version == "4"
    state.follow_reloads()
    assert holder.asked == []
    state.score_log.close()


def test_a_replaced_worker_that_cannot_load_the_services_version_serves_the_alias(engine: Engine) -> None:
    holder = FakeHolder(_Served(""), set(), alias_version="3")  # version 2 deleted from the registry meanwhile
    state = worker(engine, holder, ServiceStart(model_version="2", reload_id=0))
    assert holder.current.version == "3"
    state.score_log.close()


def test_the_service_start_reaches_workers_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVICE_START, raising=False)
    assert ServiceStart.from_environment() is None  # plain uvicorn: each worker loads the alias
    monkeypatch.setenv(SERVICE_START, ServiceStart(model_version="7", reload_id=12).to_environment())
    assert ServiceStart.from_environment() == ServiceStart(model_version="7", reload_id=12)


def test_the_reloading_worker_records_its_version_and_does_not_reload_twice(engine: Engine) -> None:
    holder = FakeHolder(_Served("1"), {"4"}, alias_version="4")
    state = worker(engine, holder)
    state.reload()
    latest = ReloadStore(engine).latest("lead-scorer")
    assert latest is not None and latest.version == "4"
    state.follow_reloads()
    assert holder.asked == [None]  # the alias, once: its own record is not followed again
    state.score_log.close()


def test_a_worker_that_failed_to_follow_a_reload_tries_again_until_it_serves_that_version(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = FakeHolder(_Served("1"), set())
    state = worker(engine, holder)
    ReloadStore(engine).record("lead-scorer", "2")  # a sibling reloaded to version 2; this worker cannot load it yet
    state.follow_reloads()
    assert holder.current.version == "1" and holder.asked == ["2"]
    state.follow_reloads()
    assert holder.asked == ["2"]  # not hammering the registry: the next try waits a second
    monkeypatch.setattr("serving.state.time.monotonic", lambda: float("inf"))  # ... which has passed
    holder.loadable.add("2")  # the registry is reachable again
    state.follow_reloads()
    assert holder.current.version == "2" and holder.asked == ["2", "2"]
    state.score_log.close()


@pytest.mark.integration
def test_a_worker_catches_up_once_the_registry_serves_the_reloaded_version_again(
    registry: Registry, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real registry: a sibling reloaded to a new version whose files this worker cannot read yet."""
    configure_tracking(registry.tracking_uri)
    logged = log_training(trained.result, trained.training_set, trained.leads, trained.activities, TrainConfig())
    client = MlflowClient()
    model_id = client.get_model_version(MODEL_NAME, logged.version).source.removeprefix("models:/")
    files = Path(urlparse(client.get_logged_model(model_id).artifact_location).path)
    engine = make_engine(f"sqlite:///{tmp_path / 'service.db'}")
    holder = ModelHolder(registry.tracking_uri, MODEL_NAME, CHAMPION)
    state = ServiceState(
        service_settings(registry, tmp_path), holder, ScoreLog(engine), PolicyStore(engine), ServiceMetrics(),
        ReloadStore(engine),
    )  # fmt: skip
    try:
        state.start(None)
        assert holder.current.version == registry.version
        hidden = files.rename(files.with_name(files.name + ".away"))  # a storage hiccup on this worker's side
        try:
            ReloadStore(engine).record(MODEL_NAME, logged.version)  # what the sibling's reload stores
            state.follow_reloads()
            assert holder.current.version == registry.version and holder.last_reload_error
        finally:
            hidden.rename(files)
        monkeypatch.setattr("serving.state.time.monotonic", lambda: float("inf"))  # the retry is due
        state.follow_reloads()
        assert holder.current.version == logged.version and holder.last_reload_error is None
    finally:
        state.score_log.close()
        engine.dispose()
