"""`leadscore export` and `leadscore train --store`: the service store as a data folder, and the errors that name it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import training.cli
import training.tracking
from tests.postgres import fresh_database
from tests.timeline.test_export import store, touch_rows
from timeline.engine import make_engine
from timeline.schema import touches
from training.cli import DATA_STORE_PARAM, DATA_STORE_TAG, app
from training.config import MODEL_NAME, SimulationConfig
from training.data import load_tables, read_table
from training.exits import EXIT_MISSING_INPUT
from training.simulator import SimulatedFunnel, simulate

# Enough leads for both models to see both classes in training and holdout, few enough to train in seconds.
SIMULATION = SimulationConfig(n_leads=2000, seed=3, oracle_max_rows=0, p_won_sample=0)
ANONYMOUS_TOUCHES = 4
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Stored:
    """A simulated funnel and the SQLite service store that holds it (plus touches of an unidentified visitor)."""

    funnel: SimulatedFunnel
    url: str


def fill(url: str, funnel: SimulatedFunnel) -> None:
    engine = make_engine(url)
    anonymous = touch_rows(funnel.activities.head(ANONYMOUS_TOUCHES), start=10_000_000)
    for row in anonymous:
        row.update(lead_id=None, anonymous_id="visitor-7")
    store(engine, funnel.leads, funnel.activities, extra=[(touches, anonymous)])
    engine.dispose()


@pytest.fixture(scope="module")
def funnel() -> SimulatedFunnel:
    return simulate(SIMULATION)


@pytest.fixture(scope="module")
def stored(funnel: SimulatedFunnel, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'leadscore-service.db'}"
    fill(url, funnel)
    return Stored(funnel, url)


def test_export_writes_a_data_folder_of_the_store(stored: Stored, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    done = runner.invoke(app, ["export", "--store", stored.url, "--out", str(out)])

    assert done.exit_code == 0, done.output
    n_activities = len(stored.funnel.activities)
    said = _flat(done.output)
    assert f"exported {len(stored.funnel.leads):,} leads and {n_activities:,} activities to" in said
    assert f"left out {ANONYMOUS_TOUCHES} anonymous touches" in said
    leads, activities = load_tables(out)
    assert (len(leads), len(activities)) == (len(stored.funnel.leads), n_activities)


def test_export_reads_the_service_setting_when_store_is_left_out(stored: Stored, tmp_path: Path) -> None:
    done = runner.invoke(app, ["export", "--out", str(tmp_path / "out")], env={"LEADSCORE_STORE_URL": stored.url})
    assert done.exit_code == 0, done.output
    assert len(read_table(tmp_path / "out" / "leads")) == len(stored.funnel.leads)


def test_export_errors_name_the_option(stored: Stored, tmp_path: Path) -> None:
    done = runner.invoke(app, ["export", "--store", f"sqlite:///{tmp_path / 'nowhere.db'}", "--out", str(tmp_path)])
    assert done.exit_code == EXIT_MISSING_INPUT
    assert "--store: there is no SQLite store at" in _flat(done.output)
    assert not (tmp_path / "nowhere.db").exists()

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    make_engine(empty).dispose()
    done = runner.invoke(app, ["export", "--store", empty, "--out", str(tmp_path / "out")])
    assert done.exit_code == EXIT_MISSING_INPUT
    assert "the store holds no leads" in _flat(done.output)
    assert not (tmp_path / "out").exists()

    done = runner.invoke(app, ["export", "--store", "postgresql+psycopg://u:hush@127.0.0.1:1/x", "--out", "o"])
    assert done.exit_code == EXIT_MISSING_INPUT
    assert "--store: cannot reach the store" in _flat(done.output) and "hush" not in done.output

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.csv").write_text("a,b\n")
    done = runner.invoke(app, ["export", "--store", stored.url, "--out", str(taken)])
    assert done.exit_code == 2
    assert "--out:" in _flat(done.output) and "holds more than an earlier export" in _flat(done.output)
    assert sorted(p.name for p in taken.iterdir()) == ["mine.csv"]


def test_train_takes_data_or_store_not_both(stored: Stored, tmp_path: Path) -> None:
    done = runner.invoke(app, ["train", "--store", stored.url, "--data", str(tmp_path)])
    assert done.exit_code == 2
    assert "give --data or --store, not both" in _flat(done.output)


@dataclass
class Trained:
    """What the train command handed to the training job (the job itself: the integration test below)."""

    data: Path | None = None
    tables: tuple[pd.DataFrame, pd.DataFrame] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _recording_train(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trained]:
    seen = Trained()

    def train(data: Path, *args: Any, **kwargs: Any) -> None:
        seen.data, seen.tables, seen.kwargs = data, load_tables(data), kwargs

    monkeypatch.setattr(training.cli, "_train", train)
    monkeypatch.setattr(training.tracking, "configure_tracking", lambda uri=None: "stub")
    yield seen


def test_train_from_the_store_trains_on_its_export_as_on_a_data_folder(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _recording_train(monkeypatch) as seen:
        done = runner.invoke(app, ["train", "--store", stored.url])

    assert done.exit_code == 0, done.output
    assert seen.tables is not None and seen.data is not None
    leads, activities = seen.tables
    assert (len(leads), len(activities)) == (len(stored.funnel.leads), len(stored.funnel.activities))
    assert seen.kwargs["store"] == stored.url  # recorded by the run, in place of the data folder
    assert not seen.data.exists()  # the export was temporary


def test_train_from_an_unreachable_store_says_so_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _recording_train(monkeypatch) as seen:
        done = runner.invoke(app, ["train", "--store", f"sqlite:///{tmp_path / 'gone.db'}"])
    assert done.exit_code == EXIT_MISSING_INPUT
    assert "--store: there is no SQLite store at" in _flat(done.output)
    assert seen.data is None


@pytest.mark.integration
def test_a_model_trained_from_a_postgresql_store_records_the_store_without_its_password(
    funnel: SimulatedFunnel, tmp_path: Path
) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with fresh_database() as name:
        # Trust authentication ignores the password: it is there to be kept out of the run.
        url = f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:5432/{name}"
        fill(url, funnel)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "train",
                "--store",
                url,
                "--tracking-uri",
                tracking,
                "--max-rounds",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    (version,) = client.search_model_versions(f"name = '{MODEL_NAME}'")
    run = client.get_run(str(version.run_id))
    recorded = run.data.tags[DATA_STORE_TAG]
    assert recorded == run.data.params[DATA_STORE_PARAM]
    assert recorded.startswith("postgresql+psycopg://postgres:") and recorded.endswith(f"@127.0.0.1:5432/{name}")
    assert "s3cret-pw" not in recorded and "s3cret-pw" not in str(run.data.params)
    assert run.data.params["data_dir"] == ""
    assert int(run.data.params["n_leads"]) == len(funnel.leads)
