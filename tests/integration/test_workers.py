"""A service of several workers behaves as one: its metrics count every worker, a reload reaches every worker."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from serving.metrics import MULTIPROCESS_DIR
from tests.conftest import Trained
from tests.integration.test_serving import (
    ADMIN_KEY,
    MODEL,
    SCORING_KEY,
    _free_port,
    _leads,
    _wait_ready,
    register_champion,
    service_env,
)
from training.pipeline import TrainConfig
from training.tracking import CHAMPION, configure_tracking, log_training

pytestmark = pytest.mark.integration
WORKERS = 2
# Each call on a new connection: the workers share one listening socket, so new connections reach both of them.
CALLS = 40


@pytest.fixture(scope="module")
def service(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("workers")
    uri = register_champion(trained, root)
    port = _free_port()
    env = service_env(uri, root)
    env.pop(MULTIPROCESS_DIR, None)  # leadscore serve makes its own folder
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leadscore", "serve", "--port", str(port), "--workers", str(WORKERS)],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        # Every worker up (a worker takes connections only once started): otherwise one could take all the calls.
        deadline = time.monotonic() + 120
        while (root / "server.log").read_text().count("Application startup complete") < WORKERS:
            assert time.monotonic() < deadline, "not every worker started in time"
            time.sleep(0.3)
        yield url, uri
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        mlflow.set_tracking_uri(None)


def _counted(text: str) -> float:
    match = re.search(r'^leadscore_http_requests_total\{route="/v1/score",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_every_scrape_counts_the_requests_of_every_worker(service: tuple[str, str], trained: Trained) -> None:
    url, _ = service
    for body in (_leads(trained, CALLS // 4) * 4)[:CALLS]:
        response = httpx.post(f"{url}/v1/score", json=body, headers={"X-API-Key": SCORING_KEY})
        assert response.status_code == 200, response.text
    # Several scrapes, each on a new connection (so by either worker): every one sees all the calls.
    assert [_counted(httpx.get(f"{url}/metrics").text) for _ in range(6)] == [float(CALLS)] * 6


def test_a_reload_reaches_every_worker(service: tuple[str, str], trained: Trained) -> None:
    url, uri = service
    configure_tracking(uri)
    logged = log_training(trained.result, trained.training_set, trained.leads, trained.activities, TrainConfig())
    MlflowClient().set_registered_model_alias(MODEL, CHAMPION, logged.version)
    response = httpx.post(f"{url}/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
    assert response.status_code == 200 and response.json()["model_version"] == "2", response.text
    body = _leads(trained, 1)[0]
    deadline = time.monotonic() + 90  # the other worker loads and warms the model too
    while True:
        versions = [
            httpx.post(f"{url}/v1/score", json=body, headers={"X-API-Key": SCORING_KEY}).json()["model_version"]
            for _ in range(20)
        ]
        if versions == ["2"] * 20 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert versions == ["2"] * 20
    reloads = httpx.get(f"{url}/metrics").text
    assert 'leadscore_model_reloads_total{outcome="ok"} 2.0' in reloads  # one per worker
