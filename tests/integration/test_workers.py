"""A service of several workers behaves as one: its metrics count every worker, a reload reaches every worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest

from serving.launch import MULTIPROCESS_DIR
from tests.conftest import Trained
from tests.integration.conftest import ChampionStore, register_new_champion
from tests.integration.test_cli_startup import CONSOLE_SCRIPT
from tests.integration.test_serving import ADMIN_KEY, MODEL, SCORING_KEY, _free_port, _leads, _wait_ready, service_env

pytestmark = pytest.mark.integration
WORKERS = 2
# Each call on a new connection: the workers share one listening socket, so new connections reach both of them.
CALLS = 40
# uvicorn pings each worker and replaces one that has not answered within 5 s: watched for longer than that.
WATCH_SECONDS = 8


@dataclass(frozen=True)
class Workers:
    """A running `leadscore serve --workers 2`: where it answers, its registry, its parent process and its log."""

    url: str
    uri: str
    process: subprocess.Popen[bytes]
    log: Path

    def startups(self) -> int:
        """How many workers have started so far (replacements included)."""
        return self.log.read_text().count("Application startup complete")

    def wait_for_startups(self, count: int) -> None:
        # A worker takes connections only once started: before that, the others could take all the calls.
        deadline = time.monotonic() + 120
        while self.startups() < count:
            assert time.monotonic() < deadline, f"{count} worker start-ups expected, saw {self.startups()}"
            time.sleep(0.3)

    def deaths(self) -> list[str]:
        """What uvicorn said of workers it lost or could not start."""
        return [line for line in self.log.read_text().splitlines() if "died" in line or "failed to start" in line]

    def metrics_folder(self) -> Path:
        """The folder `leadscore serve` made for its workers' metrics, as its workers see it."""
        environ = Path(f"/proc/{self.worker_pids()[0]}/environ").read_bytes().split(b"\0")
        [folder] = [v.split(b"=", 1)[1] for v in environ if v.startswith(MULTIPROCESS_DIR.encode() + b"=")]
        return Path(folder.decode())

    def worker_pids(self) -> list[int]:
        """The worker processes: the children of the parent that run multiprocessing's spawned main."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                command = (stat.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue  # a process that ended meanwhile
            if parent == self.process.pid and b"spawn_main" in command:
                pids.append(int(stat.parent.name))
        return pids


def _served_versions(url: str, body: dict[str, object], calls: int) -> list[str]:
    """The model version of `calls` scores, each on a new connection (so by either worker)."""
    return [
        httpx.post(f"{url}/v1/score", json=body, headers={"X-API-Key": SCORING_KEY}).json()["model_version"]
        for _ in range(calls)
    ]


@pytest.fixture(scope="module")
def service(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    root = tmp_path_factory.mktemp("workers")
    uri = champion_store.copy_to(root / "registry")
    port = _free_port()
    env = service_env(uri, root)
    env.pop(MULTIPROCESS_DIR, None)  # leadscore serve makes its own folder
    log = (root / "server.log").open("wb")
    # README's command: the console script, which uvicorn imports again to start each worker.
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "serve", "--port", str(port), "--workers", str(WORKERS)],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers = Workers(f"http://127.0.0.1:{port}", uri, process, root / "server.log")
    try:
        _wait_ready(workers.url, process)
        workers.wait_for_startups(WORKERS)
        yield workers
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        mlflow.set_tracking_uri(None)


def test_the_readme_command_starts_every_worker_and_loses_none(service: Workers) -> None:
    # Compared with before the watch, not with zero: another test of this module kills a worker on purpose.
    pids, deaths, startups = sorted(service.worker_pids()), service.deaths(), service.startups()
    assert len(pids) == WORKERS and startups >= WORKERS
    time.sleep(WATCH_SECONDS)
    assert service.deaths() == deaths
    assert sorted(service.worker_pids()) == pids
    assert service.startups() == startups


def _scrape(url: str) -> str:
    """/metrics, as a monitoring system reads it (with a key: it is no public page)."""
    return httpx.get(f"{url}/metrics", headers={"X-API-Key": ADMIN_KEY}).text


def _counted(text: str) -> float:
    match = re.search(r'^leadscore_http_requests_total\{route="/v1/score",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_every_scrape_counts_the_requests_of_every_worker(service: Workers, trained: Trained) -> None:
    url = service.url
    before = _counted(_scrape(url))  # other tests of this module score too
    for body in (_leads(trained, CALLS // 4) * 4)[:CALLS]:
        response = httpx.post(f"{url}/v1/score", json=body, headers={"X-API-Key": SCORING_KEY})
        assert response.status_code == 200, response.text
    # Several scrapes, each on a new connection (so by either worker): every one sees all the calls.
    scrapes = [_scrape(url) for _ in range(6)]
    assert [_counted(text) for text in scrapes] == [before + CALLS] * 6


def _reloads_ok(text: str) -> float:
    match = re.search(r'^leadscore_model_reloads_total\{outcome="ok"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_reload_reaches_every_worker(service: Workers, trained: Trained) -> None:
    url = service.url
    before = _reloads_ok(_scrape(url))
    new = register_new_champion(service.uri)
    response = httpx.post(f"{url}/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
    assert response.status_code == 200 and response.json()["model_version"] == new, response.text
    body = _leads(trained, 1)[0]
    deadline = time.monotonic() + 90  # the other worker loads and warms the model too
    while True:
        versions = _served_versions(url, body, 20)
        if versions == [new] * 20 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert versions == [new] * 20
    assert _reloads_ok(_scrape(url)) == before + WORKERS  # one per worker
    # Each worker's own log records reach the log, one line each, naming their process.
    loaded = re.findall(rf"INFO serving\.model \[(\d+)\]: serving {MODEL} version {new} ", service.log.read_text())
    assert len(set(loaded)) == WORKERS


def test_a_worker_replaced_after_a_crash_serves_what_the_others_serve(service: Workers, trained: Trained) -> None:
    body = _leads(trained, 1)[0]
    [served] = set(_served_versions(service.url, body, 10))
    # A new champion, not reloaded yet: the service must go on serving `served` until someone reloads.
    register_new_champion(service.uri)
    started = service.startups()
    pids = service.worker_pids()
    assert len(pids) == WORKERS
    folder = service.metrics_folder()
    assert list(folder.glob(f"gauge_live*_{pids[0]}.db"))  # its gauges (the score log's lag, ...)
    os.kill(pids[0], signal.SIGKILL)
    service.wait_for_startups(started + 1)  # uvicorn replaced it
    assert len(service.worker_pids()) == WORKERS
    assert set(_served_versions(service.url, body, 20)) == {served}
    assert not list(folder.glob(f"gauge_live*_{pids[0]}.db"))  # its replacement dropped them: they were no news
