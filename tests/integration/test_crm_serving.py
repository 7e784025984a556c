"""From a CRM export to a live score API: `crm train`, `crm promote`, then `leadscore serve` and `mlflow models serve`
answering for the export's leads, on a real MLflow registry and real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from serving.score_log import ScoreLog
from serving.store import make_engine
from tests.integration.test_serving import SCORING_KEY, _free_port, _wait_ready, service_env
from tests.training.test_crm import mapping_dict, synthetic_export

pytestmark = pytest.mark.integration
MODEL = "crm-lead-scorer"
HOT = {"lead_id": "p-hot", "Lead Source": "Referral", "Email": "a@b.c", "Do Not Email": False, "Total Time": 1400}
COLD = {"lead_id": "p-cold", "Lead Source": "Google", "Email": "c@d.e", "Do Not Email": True, "Total Time": 20}


@dataclass
class Served:
    url: str
    root: Path
    tracking_uri: str
    export: Path
    mapping: Path


def _leadscore(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadscore", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("crm-serving")
    export, mapping = root / "export.csv", root / "mapping.yaml"
    synthetic_export().to_csv(export, index=False)
    mapping.write_text(yaml.safe_dump(mapping_dict(), sort_keys=False))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # The registry too: MLflow's setters, called by earlier tests in this process, leave theirs in the environment.
    env = {**service_env(uri, root), "MLFLOW_REGISTRY_URI": uri, "LEADSCORE_MODEL_NAME": MODEL}
    files = ("--export", str(export), "--mapping", str(mapping))
    trained = _leadscore("crm", "train", *files, "--threads", "1", env=env, cwd=root)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert f"registered {MODEL} version 1 as @challenger" in trained.stdout
    promoted = _leadscore("crm", "promote", *files, env=env, cwd=root)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert f"promoted version 1 to @champion ({MODEL})" in promoted.stdout
    port = _free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leadscore", "serve", "--port", str(port)], env=env, cwd=root, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield Served(url, root, uri, export, mapping)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def _post(served: Served, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", json=body, headers={"X-API-Key": SCORING_KEY}, timeout=30)


def test_the_export_model_answers_a_crms_call_in_the_contract_models_shape(served: Served) -> None:
    answer = _post(served, "/v1/score", {"lead": HOT})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lead_id"] == "p-hot"
    assert set(body) >= {"fit", "readiness", "route", "reasons", "model_version", "thresholds_version"}
    assert body["fit"]["grade"] in "ABCD" and 0 <= body["readiness"]["score"] <= 100
    assert body["route"]["queue"] in {"sales", "sdr", "nurture", "disqualify"}
    labels = [r["label"] for side in ("fit", "behaviour") for r in body["reasons"][side]]
    assert "Total Time: 1,400" in labels and "Lead Source: Referral" in labels, labels
    cold = _post(served, "/v1/score", {"lead": COLD}).json()
    assert cold["readiness"]["probability"] < body["readiness"]["probability"]


def test_batches_and_items_take_the_exports_columns(served: Served) -> None:
    batch = _post(served, "/v1/score/batch", {"leads": [{"lead": HOT}, {"lead": COLD}]})
    assert batch.status_code == 200, batch.text
    assert [s["lead_id"] for s in batch.json()["scores"]] == ["p-hot", "p-cold"]
    items = _post(served, "/v1/score/batch/items", {"leads": [{"lead": HOT}, {"lead": {**COLD, "Total Time": "x"}}]})
    assert items.status_code == 200, items.text
    results = items.json()["results"]
    assert [r["status"] for r in results] == ["scored", "refused"]
    assert results[1]["problems"][0]["loc"][-1] == "Total Time"


def test_a_bad_value_or_an_unknown_column_is_a_422_naming_it(served: Served) -> None:
    bad = _post(served, "/v1/score", {"lead": {**HOT, "Total Time": "a lot"}})
    assert bad.status_code == 422
    (problem,) = bad.json()["detail"]
    assert problem["loc"] == ["body", "lead", "Total Time"] and "number" in problem["msg"]
    unknown = _post(served, "/v1/score", {"lead": {**HOT, "Tags": "Closed by rep"}})
    assert unknown.status_code == 422
    (left_out,) = unknown.json()["detail"]
    assert left_out["loc"] == ["body", "lead", "Tags"] and "the leakage audit left it out" in left_out["msg"]
    misspelt = _post(served, "/v1/score", {"lead": {**HOT, "Total Tme": 3}}).json()["detail"][0]
    assert "did you mean 'Total Time'?" in misspelt["msg"] and "it reads: lead_id, " in misspelt["msg"]
    contract_shaped = _post(served, "/v1/score", {"lead": {"lead_id": "x", "created_at": "2025-01-01T00:00:00Z"}})
    assert contract_shaped.status_code == 422


def test_openapi_documents_the_exports_columns(served: Served) -> None:
    document = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    ref = document["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    lead = document["components"]["schemas"][request["properties"]["lead"]["$ref"].rsplit("/", 1)[1]]
    assert {"lead_id", "Lead Source", "Do Not Email", "Total Time"} <= set(lead["properties"])
    assert "Tags" not in lead["properties"]
    assert "engagement column, number" in lead["properties"]["Total Time"]["description"]


def test_model_info_and_the_score_log_know_the_export(served: Served) -> None:
    info = httpx.get(f"{served.url}/v1/model", headers={"X-API-Key": SCORING_KEY}, timeout=30).json()
    assert info["name"] == MODEL and info["features"]["kind"] == "crm-export"
    assert "Total Time" in info["features"]["engagement"]
    scored = _post(served, "/v1/score", {"lead": {**HOT, "lead_id": "p-logged"}}).json()
    engine = make_engine(service_env(served.tracking_uri, served.root)["LEADSCORE_STORE_URL"])
    log = ScoreLog(engine)  # a reader: sees what the service's writer has committed
    deadline = time.monotonic() + 10
    while not log.read(request_id=scored["request_id"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        [record] = log.read(request_id=scored["request_id"])
    finally:
        log.close()
        engine.dispose()
    assert record.inputs["lead"]["Total Time"] == 1400 and record.outputs["route"] == scored["route"]


def test_threshold_tuning_replays_the_exports_holdout(served: Served) -> None:
    answer = _post(served, "/v1/thresholds/simulate", {"data": "holdout"})
    assert answer.status_code == 200, answer.text
    figures = answer.json()
    assert figures["policy_version"] >= 1, figures


def test_mlflow_models_serve_answers_for_the_export(served: Served) -> None:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri, "MLFLOW_REGISTRY_URI": served.tracking_uri}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager",
         "local", "--port", str(port), "--host", "127.0.0.1"], env=env, cwd=served.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "mlflow models serve exited"
            time.sleep(0.5)
        answer = httpx.post(f"{url}/invocations", json={"dataframe_records": [HOT, COLD]}, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert [r["lead_id"] for r in rows] == ["p-hot", "p-cold"]
    assert rows[0]["readiness_probability"] > rows[1]["readiness_probability"]
