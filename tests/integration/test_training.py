"""Train, register, promote and serve through a real MLflow SQLite store, as a data scientist does it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from typer.testing import CliRunner

import training.data
from training import pipeline
from training.cli import app
from training.config import CHALLENGER, CHAMPION, SimulationConfig
from training.exits import EXIT_GATE_REFUSED, EXIT_QUALITY_WARNINGS
from training.quality import QUALITY_TAG
from training.simulator import write_simulation
from training.tracking import configure_tracking

pytestmark = pytest.mark.integration
MODEL = "lead-scorer"


@dataclass(frozen=True)
class Store:
    """Simulated data, a tracking store, and what the first training job left behind.

    When it began loading and ended training (ms), and where the aliases pointed after the first train and promote.
    """

    data: Path
    uri: str
    loading_began: float
    training_ended: float
    first_champion: str
    first_challenger: str
    unaccepted: Any  # the first promote, without --accept-warnings (a CliRunner result)
    trained_said: str  # what the first `leadscore train` printed


def _clocked(fn: Callable[..., Any], clock: dict[str, float], began: str, ended: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        clock.setdefault(began, time.time() * 1000)
        try:
            return fn(*args, **kwargs)
        finally:
            clock[ended] = time.time() * 1000

    return timed


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Simulated data and a temporary tracking store holding one trained, promoted champion."""
    root = tmp_path_factory.mktemp("mlflow")
    data = root / "data"
    write_simulation(SimulationConfig(n_leads=5000, seed=3, oracle_max_rows=10_000), data)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runner = CliRunner()
    clock: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as patch:  # the command imports both when it runs, so it calls these
        patch.setattr(training.data, "load_tables", _clocked(training.data.load_tables, clock, "load", "loaded"))
        patch.setattr(pipeline, "train_models", _clocked(pipeline.train_models, clock, "train", "trained"))
        trained = runner.invoke(app, ["train", "--data", str(data), "--tracking-uri", uri])
    assert trained.exit_code == 0, trained.output
    # 5,000 leads hold too few wins to judge the fit model: training warns, and promote wants the warnings accepted.
    unaccepted = runner.invoke(app, ["promote", "--tracking-uri", uri])
    promoted = runner.invoke(app, ["promote", "--tracking-uri", uri, "--accept-warnings"])
    assert promoted.exit_code == 0, promoted.output
    configure_tracking(uri)
    # Read now: later tests train and register more versions (in whatever order they run).
    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, CHAMPION).version
    challenger = client.get_model_version_by_alias(MODEL, CHALLENGER).version
    yield Store(data, uri, clock["load"], clock["trained"], str(champion), str(challenger), unaccepted, trained.output)
    mlflow.set_tracking_uri(None)


def _champion_run() -> Run:
    client = MlflowClient()
    return client.get_run(client.get_model_version_by_alias(MODEL, CHAMPION).tags["leadscore.run_id"])


def test_first_model_is_registered_as_challenger_and_promoted_to_champion(store: Store) -> None:
    assert store.first_champion == store.first_challenger
    first = MlflowClient().get_model_version(MODEL, store.first_champion)
    assert "first model" in first.tags["leadscore.promotion"]


def test_a_warned_model_is_refused_until_its_warnings_are_accepted(store: Store) -> None:
    client = MlflowClient()
    version = client.get_model_version(MODEL, store.first_champion)
    warned = json.loads(version.tags[QUALITY_TAG])
    assert any(w["model"] == "fit" and w["rule"] == "too_few_positives" for w in warned)
    assert json.loads(client.get_run(version.tags["leadscore.run_id"]).data.tags[QUALITY_TAG]) == warned
    trained = " ".join(store.trained_said.split())
    assert f"quality warnings for version {store.first_challenger}: - " in trained and "- fit model: " in trained
    assert "refuses this model unless given --accept-warnings" in trained
    said = " ".join(store.unaccepted.output.split())
    assert store.unaccepted.exit_code == EXIT_QUALITY_WARNINGS, said
    assert "quality warning: fit model:" in said and "--accept-warnings" in said
    assert "quality warning(s) accepted" in version.tags["leadscore.promotion"]
    path = mlflow.artifacts.download_artifacts(run_id=version.tags["leadscore.run_id"], artifact_path="model_card.md")
    card = Path(path).read_text()
    assert card.index("## Quality warnings") < card.index("## Intended use") and warned[0]["message"] in card


def test_run_logs_metrics_artifacts_and_baselines_side_by_side(store: Store) -> None:
    client = MlflowClient()
    version = client.get_model_version_by_alias(MODEL, CHAMPION)
    run = client.get_run(version.tags["leadscore.run_id"])
    metrics = run.data.metrics
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top5", "capture_top20"):
        assert f"readiness_{name}_holdout" in metrics and f"fit_{name}_holdout" in metrics
    assert any(k.startswith("readiness_roc_auc_holdout.region.") for k in metrics)
    assert 0.0 < metrics["readiness_auc_share_of_oracle_holdout"] <= 1.01
    assert run.data.params["readiness.learning_rate"] == "0.05"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "holdout", "model_card.md", "feature_spec.json", "readiness_segment_metrics.csv"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/readiness_calibration.png" in plots and "plots/readiness_shap_summary.png" in plots
    assert "plots/fit_calibration_log.png" in plots
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="holdout/readiness_scores.parquet")
    holdout = pd.read_parquet(path)
    assert {"lead_id", "as_of", "label", "source", "region", "size_band", "model", "point_rules"} <= set(holdout)

    side = mlflow.search_runs(experiment_ids=[run.info.experiment_id], filter_string="tags.`leadscore.kind` != 'model'")
    names = set(side["tags.mlflow.runName"])
    assert {"baseline: Odoo naive Bayes", "baseline: point rules", "baseline: logistic regression"} <= names
    assert side["metrics.readiness_roc_auc_holdout"].notna().all()


def test_model_run_lasts_from_loading_the_data_to_the_end_of_logging(store: Store) -> None:
    run = _champion_run()
    assert run.info.status == "FINISHED"
    assert run.info.start_time <= store.loading_began, "the run starts before the data are loaded"
    version = MlflowClient().get_model_version_by_alias(MODEL, CHAMPION)
    assert run.info.end_time >= max(store.training_ended, version.creation_timestamp), "and ends after logging"


def test_model_run_lists_the_rows_each_model_was_trained_and_evaluated_on(store: Store) -> None:
    run = _champion_run()
    inputs = {entry.dataset.name: entry for entry in run.inputs.dataset_inputs}
    expected = {f"{task}-{context}": context for task in ("readiness", "fit")
                for context in ("training", "validation", "holdout")}  # fmt: skip
    assert {name: {t.key: t.value for t in entry.tags}["mlflow.data.context"] for name, entry in inputs.items()} == (
        expected
    )
    for entry in inputs.values():
        dataset = entry.dataset
        assert len(dataset.digest) == 16
        assert json.loads(dataset.source) == {"uri": str(store.data.resolve())}
        columns = {spec["name"] for spec in json.loads(dataset.schema)["mlflow_colspec"]}
        assert {"lead_id", "as_of", "label"} <= columns
        assert json.loads(dataset.profile)["num_rows"] > 0
    assert len({entry.dataset.digest for entry in inputs.values()}) == len(inputs)
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="holdout/readiness_scores.parquet")
    assert json.loads(inputs["readiness-holdout"].dataset.profile)["num_rows"] == len(pd.read_parquet(path))


def test_champion_loads_as_pyfunc_and_scores_leads_with_reasons(store: Store) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    example = model.input_example
    assert isinstance(example, pd.DataFrame) and len(example) >= 1
    scored = model.predict(example)
    assert list(scored["lead_id"]) == list(example["lead_id"])
    assert scored["fit_probability"].between(0, 1).all() and scored["readiness_score"].between(0, 100).all()
    assert set(scored["fit_grade"]) <= {"A", "B", "C", "D"}
    reasons = json.loads(scored["reasons"].iloc[0])
    # The example is an open lead: its reasons speak of fit, behaviour and (the lifecycle) context.
    assert {r["side"] for r in reasons} == {"fit", "behaviour", "context"} and all(r["label"] for r in reasons)
    assert scored["lifecycle_stage"].iloc[0] in ("lead", "mql", "sal", "recycled")


def test_promotion_gate_refuses_a_worse_challenger_and_keeps_the_champion(store: Store) -> None:
    client = MlflowClient()
    champion = str(client.get_model_version_by_alias(MODEL, CHAMPION).version)
    runner = CliRunner()
    worse = runner.invoke(
        app, ["train", "--data", str(store.data), "--tracking-uri", store.uri, "--max-rounds", "1", "--num-leaves", "2"]
    )
    assert worse.exit_code == 0, worse.output
    challenger = str(client.get_model_version_by_alias(MODEL, CHALLENGER).version)
    assert challenger != champion  # the crippled model is the new challenger
    refused = runner.invoke(app, ["promote", "--tracking-uri", store.uri, "--accept-warnings"])
    assert refused.exit_code == EXIT_GATE_REFUSED, refused.output
    assert "readiness roc_auc: challenger" in refused.output and "WORSE" in refused.output
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == champion
    assert client.get_model_version(MODEL, challenger).tags["leadscore.promotion"].startswith("refused")


def test_evaluate_scores_a_registered_model_on_a_holdout(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    command = ["evaluate", "--data", str(store.data), "--tracking-uri", store.uri, "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert 0.5 < metrics["readiness"]["roc_auc"] <= 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mlflow_models_serve_answers_with_scores(store: Store) -> None:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@{CHAMPION}"]
    server = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                time.sleep(0.5)
        example = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}").input_example
        body = json.dumps({"dataframe_split": json.loads(example.to_json(orient="split", index=False))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == len(example)
        assert 0.0 <= predictions[0]["readiness_probability"] <= 1.0
    finally:
        server.terminate()
        server.wait(timeout=30)
