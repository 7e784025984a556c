"""The `leadscore` command as a user runs it: real processes, files on disk, exit codes scripts can trust."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration


def _leadscore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "data"
    result = _leadscore("generate", "--leads", "400", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_generate_then_build_dataset_writes_both_training_sets(data_dir: Path, tmp_path: Path) -> None:
    assert {p.name for p in data_dir.iterdir()} >= {"leads", "activities", "truth", "oracle"}
    out = tmp_path / "sets"
    result = _leadscore("build-dataset", "--data", str(data_dir), "--out", str(out), "--horizon-days", "21")
    assert result.returncode == 0, result.stderr
    readiness = pd.read_parquet(out / "readiness.parquet")
    fit = pd.read_parquet(out / "fit.parquet")
    assert len(readiness) > 100 and set(readiness["label"]) == {0, 1}
    assert "engagement_decayed" in readiness.columns and "engagement_decayed" not in fit.columns
    assert "oracle readiness AUC" in result.stdout


def test_bad_data_exits_2_names_the_problem_and_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    leads = pd.read_parquet(data_dir / "leads")
    leads.loc[1, "lead_id"] = leads.loc[0, "lead_id"]
    leads.to_parquet(bad / "leads.parquet")
    pd.read_parquet(data_dir / "activities").to_parquet(bad / "activities.parquet")
    out = tmp_path / "sets"
    result = _leadscore("build-dataset", "--data", str(bad), "--out", str(out))
    assert result.returncode == 2
    assert "leads.lead_id: duplicated values" in " ".join(result.stdout.split())
    assert not out.exists()


def test_missing_input_exits_3(tmp_path: Path) -> None:
    result = _leadscore("build-dataset", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "sets"))
    assert result.returncode == 3
    assert "no leads table" in " ".join(result.stdout.split())


def test_serve_without_a_champion_exits_1_saying_how_to_get_one(tmp_path: Path) -> None:
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # a store, empty
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "LEADSCORE_STORE_URL": f"sqlite:///{tmp_path / 'service.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "leadscore", "serve", "--port", "1", "--workers", "2"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, said
    assert "no model lead-scorer@champion" in said and "leadscore train && leadscore promote" in said
