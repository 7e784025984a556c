"""The score service as a CRM meets it: a real uvicorn process on a real (temporary) MLflow registry."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from serving.score_log import ScoreLog
from serving.store import make_engine
from tests.conftest import Trained
from tests.integration.conftest import ChampionStore, register_new_champion
from training.config import CHAMPION
from training.tracking import configure_tracking

pytestmark = pytest.mark.integration
MODEL = "lead-scorer"
SCORING_KEY = "crm-key-123"
ADMIN_KEY = "admin-key-456"
BROKEN_MODEL_CODE = """
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel


class NotAScorer(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


set_model(NotAScorer())
"""


@dataclass
class Service:
    """A running server and where its state lives."""

    url: str
    process: subprocess.Popen[bytes]
    store_url: str
    tracking_uri: str
    root: Path

    def headers(self, key: str = SCORING_KEY) -> dict[str, str]:
        return {"X-API-Key": key}


def service_env(uri: str, root: Path) -> dict[str, str]:
    """The environment of a service on the registry at `uri`, with its store and journal under `root`, keys set."""
    # Not $MLFLOW_REGISTRY_URI, which MLflow's setters export whenever a test points this process at a store: the
    # service's registry is its tracking store.
    inherited = {name: value for name, value in os.environ.items() if name != "MLFLOW_REGISTRY_URI"}
    return {
        **inherited,
        "MLFLOW_TRACKING_URI": uri,
        "LEADSCORE_STORE_URL": f"sqlite:///{root / 'service.db'}",
        "LEADSCORE_JOURNAL_DIR": str(root / "journal"),
        "LEADSCORE_API_KEYS": SCORING_KEY,
        "LEADSCORE_ADMIN_KEYS": ADMIN_KEY,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become ready in time")


@pytest.fixture(scope="module")
def service(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("serving")
    uri = champion_store.copy_to(root / "registry")
    port = _free_port()
    env = {**service_env(uri, root), "LEADSCORE_MAX_BODY_BYTES": "200000", "LEADSCORE_MAX_BATCH": "50"}
    store_url = env["LEADSCORE_STORE_URL"]
    server_log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leadscore", "serve", "--port", str(port)],
        env=env, cwd=root, stdout=server_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield Service(url, process, store_url, uri, root)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        server_log.close()
        mlflow.set_tracking_uri(None)


def _request(trained: Trained, lead_id: str, as_of: pd.Timestamp) -> dict[str, Any]:
    row = trained.leads.loc[trained.leads["lead_id"] == lead_id].iloc[0]
    lead: dict[str, Any] = {
        "lead_id": lead_id,
        "account_id": row["account_id"],
        "created_at": row["created_at"].isoformat(),
    }
    for name in ("industry", "country", "region", "job_title", "seniority", "department", "email_domain", "source",
                 "channel"):  # fmt: skip
        if isinstance(row[name], str):
            lead[name] = row[name]
    if not pd.isna(row["employee_count"]):
        lead["employee_count"] = int(row["employee_count"])
    if not pd.isna(row["annual_revenue"]):
        lead["annual_revenue"] = float(row["annual_revenue"])
    for stamp in ("mql_at", "sal_at", "sql_at", "lost_at", "recycled_at", "requalified_at", "won_at"):
        if not pd.isna(row[stamp]) and row[stamp] < as_of:
            lead[stamp] = row[stamp].isoformat()
    touches = trained.activities[
        (trained.activities["lead_id"] == lead_id) & (trained.activities["occurred_at"] < as_of)
    ]
    activities = [
        {"occurred_at": t.isoformat(), "activity_type": str(k)}
        for t, k in zip(touches["occurred_at"], touches["activity_type"], strict=True)
    ]
    return {"lead": lead, "activities": activities, "as_of": as_of.isoformat()}


def _leads(trained: Trained, n: int) -> list[dict[str, Any]]:
    holdout = trained.result.readiness.holdout
    as_of = pd.Timestamp(holdout["as_of"].max())
    ids = holdout.loc[holdout["as_of"] == as_of, "lead_id"].drop_duplicates().head(n)
    return [_request(trained, lead_id, as_of) for lead_id in ids]


def _served(service: Service) -> str:
    """The model version the service serves now."""
    version: str = httpx.get(f"{service.url}/readyz", headers=service.headers(ADMIN_KEY)).json()["model_version"]
    return version


def test_score_answers_with_scores_route_reasons_and_versions(service: Service, trained: Trained) -> None:
    body = _leads(trained, 1)[0]
    response = httpx.post(f"{service.url}/v1/score", json=body, headers=service.headers())
    assert response.status_code == 200, response.text
    scored = response.json()
    assert scored["lead_id"] == body["lead"]["lead_id"]
    assert 0 <= scored["fit"]["probability"] <= 1 and scored["fit"]["grade"] in "ABCD"
    assert scored["readiness"]["stage"] in ("nurture", "MQL", "SQL")
    assert scored["route"]["queue"] in ("sales", "sdr", "nurture", "disqualify")
    assert scored["reasons"]["fit"] and all(r["label"] for r in scored["reasons"]["behaviour"])
    # The version it serves now: other tests of this module reload it (in whatever order they run).
    assert scored["model_version"] == _served(service)
    assert scored["thresholds_version"] == 1  # the model's default, stored on the service's first start

    # The same lead through the training code path gives the same probability: no training/serving skew.
    expected = trained.result.scorer.score_record(
        {**body["lead"], "created_at": pd.Timestamp(body["lead"]["created_at"])},
        [{**a, "lead_id": body["lead"]["lead_id"]} for a in body["activities"]],
        pd.Timestamp(body["as_of"]).to_pydatetime(),
    )
    assert scored["readiness"]["probability"] == pytest.approx(expected.readiness_probability, abs=1e-6)


def test_a_score_is_logged_with_the_model_and_thresholds_version_that_produced_it(
    service: Service, trained: Trained
) -> None:
    body = _leads(trained, 2)[1]
    scored = httpx.post(f"{service.url}/v1/score", json=body, headers=service.headers()).json()
    engine = make_engine(service.store_url)
    log = ScoreLog(engine)  # a reader (an auditor's tool): sees what the service's writer has committed
    deadline = time.monotonic() + 10
    while not log.read(request_id=scored["request_id"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the service inserts journaled records in the background, within milliseconds
    try:
        [record] = log.read(request_id=scored["request_id"])
    finally:
        log.close()
        engine.dispose()
    assert record.lead_id == body["lead"]["lead_id"]
    assert (record.model_version, record.thresholds_version) == (scored["model_version"], scored["thresholds_version"])
    assert record.outputs["route"] == scored["route"] and record.inputs["lead"]["lead_id"] == body["lead"]["lead_id"]


def test_batch_scores_many_leads_in_order_and_refuses_too_many(service: Service, trained: Trained) -> None:
    bodies = _leads(trained, 12)
    response = httpx.post(f"{service.url}/v1/score/batch", json={"leads": bodies}, headers=service.headers())
    assert response.status_code == 200, response.text
    assert [s["lead_id"] for s in response.json()["scores"]] == [b["lead"]["lead_id"] for b in bodies]
    too_many = {"leads": [{"lead": bodies[0]["lead"]}] * 51}
    refused = httpx.post(f"{service.url}/v1/score/batch", json=too_many, headers=service.headers())
    assert refused.status_code == 422 and "at most 50 leads" in refused.text


def test_model_info_names_the_version_and_holdout_metrics(service: Service) -> None:
    info = httpx.get(f"{service.url}/v1/model", headers=service.headers()).json()
    assert info["name"] == MODEL and info["version"] == _served(service)
    registered = MlflowClient(tracking_uri=service.tracking_uri).get_model_version(MODEL, info["version"])
    assert info["run_id"] == registered.run_id
    assert 0.5 < info["holdout_metrics"]["readiness"]["roc_auc"] <= 1
    assert "engagement_decayed" in info["features"]["engagement"]


def test_keys_are_required_and_only_admin_keys_may_reload(service: Service, trained: Trained) -> None:
    body = _leads(trained, 1)[0]
    assert httpx.post(f"{service.url}/v1/score", json=body).status_code == 401
    assert httpx.post(f"{service.url}/v1/score", json=body, headers=service.headers("nope")).status_code == 401
    assert httpx.post(f"{service.url}/v1/admin/reload", headers=service.headers()).status_code == 403
    assert httpx.get(f"{service.url}/healthz").status_code == 200  # probes need no key


def test_bodies_over_the_size_limit_are_refused(service: Service) -> None:
    huge = json.dumps({"lead": {"lead_id": "x" * 10, "created_at": "2025-01-01"}, "pad": "y" * 300_000})
    response = httpx.post(
        f"{service.url}/v1/score", content=huge, headers={**service.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_bad_input_gets_422_naming_the_field(service: Service, trained: Trained) -> None:
    body = _leads(trained, 1)[0]
    body["activities"].append({"occurred_at": "2025-02-30T10:00:00Z", "activity_type": "carrier_pigeon"})
    response = httpx.post(f"{service.url}/v1/score", json=body, headers=service.headers())
    assert response.status_code == 422
    locations = {tuple(err["loc"]) for err in response.json()["detail"]}
    index = len(body["activities"]) - 1
    assert ("body", "activities", index, "occurred_at") in locations
    assert ("body", "activities", index, "activity_type") in locations


def test_reload_swaps_in_the_new_champion(service: Service) -> None:
    before = _served(service)
    new = register_new_champion(service.tracking_uri)
    response = httpx.post(f"{service.url}/v1/admin/reload", headers=service.headers(ADMIN_KEY), timeout=120)
    assert response.status_code == 200, response.text
    assert new != before
    assert response.json() == {"reloaded": True, "model_version": new, "previous_version": before, "error": None}
    assert httpx.get(f"{service.url}/v1/model", headers=service.headers()).json()["version"] == new


def test_a_failed_reload_keeps_serving_the_old_model(service: Service, trained: Trained, tmp_path: Path) -> None:
    before = _served(service)
    code = tmp_path / "not_a_scorer.py"
    code.write_text(BROKEN_MODEL_CODE)
    # Logged from another process: logging runs the model's code, whose set_model would otherwise stay this
    # process's "current model" and leak into later tests that load models from code.
    register = (
        "import mlflow, sys\n"
        "from training.tracking import configure_tracking, ensure_experiment\n"
        "configure_tracking(sys.argv[1])\n"
        "with mlflow.start_run(experiment_id=ensure_experiment('leadscore')):\n"
        "    info = mlflow.pyfunc.log_model(\n"
        "        name='broken', python_model=sys.argv[2], registered_model_name='lead-scorer')\n"
        "print(info.registered_model_version)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", register, service.tracking_uri, str(code)],
        capture_output=True, text=True, timeout=300, check=True, cwd=tmp_path,
    )  # fmt: skip
    configure_tracking(service.tracking_uri)
    MlflowClient().set_registered_model_alias(MODEL, CHAMPION, done.stdout.strip().splitlines()[-1])
    response = httpx.post(f"{service.url}/v1/admin/reload", headers=service.headers(ADMIN_KEY), timeout=120)
    assert response.status_code == 409
    assert response.json()["reloaded"] is False and response.json()["model_version"] == before
    ready = httpx.get(f"{service.url}/readyz", headers=service.headers(ADMIN_KEY)).json()
    assert ready["ready"] is True and ready["model_version"] == before and ready["last_reload_error"]
    body = _leads(trained, 1)[0]
    scored = httpx.post(f"{service.url}/v1/score", json=body, headers=service.headers())
    assert scored.status_code == 200 and scored.json()["model_version"] == before


def test_metrics_count_requests_and_routes(service: Service, trained: Trained) -> None:
    scored = httpx.post(f"{service.url}/v1/score", json=_leads(trained, 1)[0], headers=service.headers())
    assert scored.status_code == 200, scored.text
    text = httpx.get(f"{service.url}/metrics", headers=service.headers(ADMIN_KEY)).text
    assert 'leadscore_http_requests_total{route="/v1/score",status="200"}' in text
    assert "leadscore_routes_total" in text and "leadscore_http_request_seconds_bucket" in text


def test_kill_9_right_after_200_responses_loses_no_logged_record(service: Service, trained: Trained) -> None:
    """Runs last in this module: it kills the server.

    The store is locked meanwhile (a backup, a long migration): the acknowledged scores are in the journal only,
    so the test fails if the journal is not written before the answer, however soon the writer would commit.
    """
    store = sqlite3.connect(service.store_url.removeprefix("sqlite:///"), isolation_level=None)
    store.execute("BEGIN EXCLUSIVE")
    acknowledged = []
    try:
        with httpx.Client(base_url=service.url, headers=service.headers()) as client:
            for body in _leads(trained, 30):
                response = client.post("/v1/score", json=body)
                assert response.status_code == 200
                acknowledged.append(response.json()["request_id"])
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=30)
        [[in_store]] = store.execute(
            f"SELECT count(*) FROM score_log WHERE request_id IN ({','.join('?' * len(acknowledged))})", acknowledged
        ).fetchall()
        assert in_store == 0  # none reached the database before the kill
    finally:
        store.execute("COMMIT")
        store.close()
    engine = make_engine(service.store_url)
    log = ScoreLog(engine, service.root / "journal")  # what the next start of the service does first
    try:
        logged = Counter(r.request_id for r in log.read())
    finally:
        log.close()
        engine.dispose()
    assert all(logged[request_id] == 1 for request_id in acknowledged)
    # And in everything the server wrote, no key ever appears.
    output = (service.root / "server.log").read_bytes()
    assert SCORING_KEY.encode() not in output and ADMIN_KEY.encode() not in output
