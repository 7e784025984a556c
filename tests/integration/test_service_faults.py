"""What production does to the service: bad settings at start, idle and slow clients, a full disk, a locked store."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import Trained
from tests.integration.conftest import ChampionStore
from tests.integration.test_cli_startup import CONSOLE_SCRIPT
from tests.integration.test_serving import SCORING_KEY, _free_port, _leads, _wait_ready, service_env

pytestmark = pytest.mark.integration
# A start that fails must say so within this: MLflow's own retries took 253 s to give up on an unreachable server.
FAIL_FAST_SECONDS = 60


@pytest.fixture(scope="module")
def registry(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite registry holding the session's model as @champion; its URI."""
    return champion_store.copy_to(tmp_path_factory.mktemp("faults") / "registry")


def _serve(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "serve", "--port", str(_free_port()), *args],
        capture_output=True, text=True, timeout=FAIL_FAST_SECONDS, check=False, env=env, cwd=cwd,
    )  # fmt: skip


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


# ---- start-up faults: fast, non-zero, naming the setting ------------------------------------------------------------


def test_an_unreachable_registry_fails_the_start_quickly_naming_it(registry: str, tmp_path: Path) -> None:
    env = {**service_env(registry, tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}
    started = time.monotonic()
    result = _serve(env, tmp_path)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    said = _said(result)
    assert result.returncode == 1, said
    assert "cannot reach the MLflow registry" in said and "MLFLOW_TRACKING_URI" in said
    assert "train and promote" not in said  # an unreachable registry is not an empty one


def test_a_mistyped_registry_path_is_refused_and_no_empty_store_is_made(registry: str, tmp_path: Path) -> None:
    typo = tmp_path / "mlfow.db"
    env = {**service_env(registry, tmp_path), "LEADSCORE_TRACKING_URI": f"sqlite:///{typo}"}
    result = _serve(env, tmp_path)
    said = _said(result)
    assert result.returncode == 1, said
    assert f"there is no MLflow store at {typo} (LEADSCORE_TRACKING_URI)" in said
    assert not typo.exists()


def test_an_unusable_store_fails_the_start_in_a_few_lines_naming_the_setting(registry: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    env = {**service_env(registry, tmp_path), "LEADSCORE_STORE_URL": f"sqlite:///{blocker}/service.db"}
    for workers in ("1", "2"):
        result = _serve(env, tmp_path, "--workers", workers)
        said = _said(result)
        assert result.returncode == 1, said
        assert "cannot open the service store" in said and "(LEADSCORE_STORE_URL)" in said
        assert len((result.stdout + result.stderr).splitlines()) < 20  # no driver traceback


def test_an_unwritable_journal_folder_fails_the_start_naming_the_setting(registry: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {**service_env(registry, tmp_path), "LEADSCORE_JOURNAL_DIR": str(blocker / "journal")}
    result = _serve(env, tmp_path)
    said = _said(result)
    assert result.returncode == 1, said
    assert "cannot write the score log's journal folder" in said and "(LEADSCORE_JOURNAL_DIR)" in said


def test_a_setting_with_an_impossible_value_exits_2_naming_it(registry: str, tmp_path: Path) -> None:
    env = {**service_env(registry, tmp_path), "LEADSCORE_MAX_BATCH": "none"}
    result = _serve(env, tmp_path)
    said = _said(result)
    assert result.returncode == 2, said
    assert "LEADSCORE_MAX_BATCH" in said


def test_workers_that_cannot_start_make_the_command_fail(registry: str, tmp_path: Path) -> None:
    """The checks pass, then each worker fails on its own (here: it cannot replay a journal into the store)."""
    env = service_env(registry, tmp_path)
    journal = Path(env["LEADSCORE_JOURNAL_DIR"])
    journal.mkdir()
    # A dead worker's journal, and a store whose score-log table is not what the journal's records need.
    (journal / "journal-1-dead.jsonl").write_text('{"request_id": "r", "lead_id": "L", "scored_at": "2025-01-01"}\n')
    store = tmp_path / "service.db"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE score_log (id INTEGER PRIMARY KEY, request_id TEXT)")
    result = _serve(env, tmp_path, "--workers", "2")
    said = _said(result)
    assert result.returncode != 0, said
    assert "cannot replay the score log's journals" in said and "(LEADSCORE_STORE_URL)" in said


# ---- a running service: idle and slow clients, a full disk, a locked store ------------------------------------------


@dataclass
class Running:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    root: Path
    env: dict[str, str]

    def post(self, body: object, path: str = "/v1/score") -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers={"X-API-Key": SCORING_KEY}, timeout=30)

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", headers={"X-API-Key": "watcher"}, timeout=30)


def _start(registry: str, root: Path, command_prefix: list[str] | None = None, **settings: str) -> Running:
    port = _free_port()
    env = {**service_env(registry, root), "LEADSCORE_MONITORING_KEYS": "watcher", **settings}
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [*(command_prefix or []), str(CONSOLE_SCRIPT), "serve", "--port", str(port)],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
    except BaseException:
        process.kill()
        raise
    return Running(url, port, process, root, env)


def _stop(service: Running) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()


@pytest.fixture(scope="module")
def deadlines(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    service = _start(
        registry, tmp_path_factory.mktemp("deadlines"),
        LEADSCORE_TIMEOUT_IDLE="1", LEADSCORE_TIMEOUT_REQUEST="2", LEADSCORE_TIMEOUT_KEEP_ALIVE="1",
        LEADSCORE_MAX_CONNECTIONS="40",
    )  # fmt: skip
    yield service
    _stop(service)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def test_connections_that_never_send_a_request_are_closed(deadlines: Running) -> None:
    idle = [socket.create_connection(("127.0.0.1", deadlines.port)) for _ in range(30)]
    try:
        outcomes = [_closed_within(sock, 10) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    assert all(closed for closed, _ in outcomes)
    assert all(sent.startswith(b"HTTP/1.1 408") for _, sent in outcomes)


def test_a_slowloris_is_cut_off_while_others_are_served(deadlines: Running, trained: Trained) -> None:
    slow = socket.create_connection(("127.0.0.1", deadlines.port))
    slow.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    cut_off = False
    try:
        while time.monotonic() - started < 10:
            try:
                slow.sendall(b"X-Pad: 1\r\n")  # a header line every 0.3 s: never the blank line that ends them
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            assert deadlines.post(_leads(trained, 1)[0]).status_code == 200  # the service answers others meanwhile
            time.sleep(0.3)
        closed, sent = _closed_within(slow, 5) if not cut_off else (True, b"")
    finally:
        slow.close()
    assert cut_off or closed
    assert time.monotonic() - started < 10
    assert sent == b"" or sent.startswith(b"HTTP/1.1 408")


def test_a_body_sent_a_trickle_at_a_time_is_cut_off(deadlines: Running) -> None:
    slow = socket.create_connection(("127.0.0.1", deadlines.port))
    try:
        slow.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-API-Key: {SCORING_KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
        )
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 10:
            try:
                slow.sendall(b" " * 10)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, _ = _closed_within(slow, 0.5)
        assert closed and time.monotonic() - started < 10
    finally:
        slow.close()


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(deadlines: Running, trained: Trained) -> None:
    body = json.dumps(_leads(trained, 1)[0]).encode()
    request = (
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: {SCORING_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", deadlines.port)) as sock:
        sock.sendall(request)
        answered = time.monotonic()
        closed, sent = _closed_within(sock, 4)  # LEADSCORE_TIMEOUT_KEEP_ALIVE=1 (uvicorn's own default is 5 s)
    assert sent.startswith(b"HTTP/1.1 200") and closed
    assert time.monotonic() - answered < 4


def test_connections_over_the_limit_are_refused_until_idle_ones_are_closed(
    deadlines: Running, trained: Trained
) -> None:
    hoard = [socket.create_connection(("127.0.0.1", deadlines.port)) for _ in range(45)]  # LEADSCORE_MAX_CONNECTIONS=40
    try:
        time.sleep(0.2)
        assert deadlines.post(_leads(trained, 1)[0]).status_code == 503
        time.sleep(3)  # the hoarded connections miss their deadline and are closed
        assert deadlines.post(_leads(trained, 1)[0]).status_code == 200
    finally:
        for sock in hoard:
            sock.close()


# ---- a full disk under the journal --------------------------------------------------------------------------------

JOURNAL_DISK = "256k"


def test_a_full_journal_disk_refuses_scores_with_503_and_the_service_recovers_without_a_restart(
    registry: str, trained: Trained, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    # The service in a mount namespace of its own, its journal on a 256 kB file system (no root needed).
    mount = f'mount -t tmpfs -o size={JOURNAL_DISK} tmpfs "{journal}" && exec "$@"'
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
    service = _start(registry, tmp_path, prefix)
    filler = Path(f"/proc/{service.process.pid}/root") / str(journal).lstrip("/") / "filler"
    try:
        bodies = _leads(trained, 20)
        assert service.post(bodies[0]).status_code == 200
        free = os.statvfs(filler.parent)
        filler.write_bytes(b"x" * (free.f_bavail * free.f_frsize - 6_000))  # room for a few scores only
        answers = [service.post(body) for body in bodies]
        statuses = [a.status_code for a in answers]
        assert 503 in statuses and 500 not in statuses, statuses
        refused = next(a for a in answers if a.status_code == 503)
        assert "could not be recorded" in refused.text and refused.headers["retry-after"]
        ready = service.ready()
        assert ready.status_code == 503 and "No space left on device" in ready.json()["score_log"]["journal_error"]
        filler.unlink()  # an operator frees the disk
        deadline = time.monotonic() + 10
        while service.ready().status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service.ready().json()["ready"] is True
        assert service.post(bodies[0]).status_code == 200
    finally:
        _stop(service)
