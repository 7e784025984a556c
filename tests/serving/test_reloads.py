"""How the workers of one service follow a reload that another worker answered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Engine

from serving.metrics import ServiceMetrics
from serving.model import ModelHolder, ModelNotAvailableError
from serving.settings import Settings
from serving.state import ServiceState
from serving.store import PolicyStore, ReloadStore, ScoreLog, make_engine


@dataclass
class _Served:
    version: str
    name: str = "lead-scorer"


@dataclass
class FakeHolder:
    """A ModelHolder that 'loads' versions from a list of loadable ones, and remembers what it was asked."""

    current: _Served
    loadable: set[str]
    alias_version: str = ""  # what the alias points at: a load without a version loads it
    name: str = "lead-scorer"
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
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'service.db'}")
    yield engine
    engine.dispose()


def worker(engine: Engine, holder: FakeHolder) -> ServiceState:
    state = ServiceState(
        Settings(), cast(ModelHolder, holder), ScoreLog(engine), PolicyStore(engine), ServiceMetrics(),
        ReloadStore(engine),
    )  # fmt: skip
    state.skip_past_reloads()
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


def test_the_reloading_worker_records_its_version_and_does_not_reload_twice(engine: Engine) -> None:
    holder = FakeHolder(_Served("1"), {"4"}, alias_version="4")
    state = worker(engine, holder)
    state.reload()
    latest = ReloadStore(engine).latest("lead-scorer")
    assert latest is not None and latest.version == "4"
    state.follow_reloads()
    assert holder.asked == [None]  # the alias, once: its own record is not followed again
    state.score_log.close()
