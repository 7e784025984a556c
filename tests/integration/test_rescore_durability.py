"""Rescores survive a killed server: every queued lead is scored once, by the server started again on the store."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, func, select

from tests.integration.conftest import ChampionStore
from tests.integration.test_serving import _free_port, service_env
from timeline.engine import make_engine
from timeline.queue import enqueue
from timeline.schema import lead_scores, leads, rescore_queue, score_history, touches

pytestmark = pytest.mark.integration
# Enough leads that rescoring them takes a good many batches of RESCORE_BATCH: the kill lands among them.
LEADS = 3000
RESCORE_BATCH = 20
# A killed server's claimed batch goes back to the queue when its lease runs out: short, so that the test is too.
LEASE_SECONDS = 3
START_SECONDS = 180.0  # a server loads MLflow and the model (~40 s on a busy machine)
FINISH_SECONDS = 240.0


def _count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _queue_leads(engine: Engine) -> list[str]:
    """Store LEADS leads, each with three touches, and queue them for a rescore (as the ingest API would)."""
    now = dt.datetime.now(dt.UTC)
    created = now - dt.timedelta(days=40)
    lead_ids = [f"L-{i:05d}" for i in range(LEADS)]
    kinds = ("page_view", "pricing_page_view", "email_click", "webinar_attended", "demo_request")
    with engine.begin() as conn:
        conn.execute(
            leads.insert(),
            [{"lead_id": lead_id, "account_id": f"A-{i // 3:05d}", "created_at": created, "updated_at": created,
              "industry": "Software", "country": "US", "region": "North America", "seniority": "director",
              "employee_count": 50 + i} for i, lead_id in enumerate(lead_ids)],
        )  # fmt: skip
        conn.execute(
            touches.insert(),
            [{"touch_key": f"{lead_id}-{j}", "lead_id": lead_id, "activity_type": kinds[(i + j) % len(kinds)],
              "occurred_at": now - dt.timedelta(days=1 + (i * 7 + j * 11) % 30), "received_at": now}
             for i, lead_id in enumerate(lead_ids) for j in range(3)],
        )  # fmt: skip
        enqueue(conn, lead_ids, "touch")
    return lead_ids


@contextmanager
def _server(env: dict[str, str], root: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `leadscore serve` process on the store; stopped (if still running) when the block ends."""
    log = (root / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leadscore", "serve", "--port", str(_free_port())],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()


def _wait_until(what: str, seconds: float, process: subprocess.Popen[bytes], done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited while waiting for {what}"
        if done():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {seconds:.0f} s")


def test_a_server_killed_mid_rescore_loses_no_queued_lead(champion_store: ChampionStore, tmp_path: Path) -> None:
    root = tmp_path / "service"
    root.mkdir()
    uri = champion_store.copy_to(tmp_path / "registry")
    env = {
        **service_env(uri, root),
        "LEADSCORE_RESCORE_BATCH": str(RESCORE_BATCH),
        "LEADSCORE_RESCORE_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    engine = make_engine(env["LEADSCORE_STORE_URL"])
    try:
        lead_ids = _queue_leads(engine)
        with _server(env, root, "first") as first:
            _wait_until("a first rescore", START_SECONDS, first, lambda: _count(engine, lead_scores) > 0)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        scored_before = _count(engine, lead_scores)
        assert 0 < scored_before < LEADS, f"the kill came after {scored_before} of {LEADS} rescores: not mid-way"
        assert _count(engine, rescore_queue) == LEADS - scored_before  # each stored score took its queue row along

        with _server(env, root, "second") as second:
            _wait_until(
                "every queued lead's rescore", START_SECONDS + FINISH_SECONDS, second,
                lambda: _count(engine, rescore_queue) == 0,
            )  # fmt: skip
        with engine.connect() as conn:
            scored = set(conn.execute(select(lead_scores.c.lead_id)).scalars())
            per_lead: dict[str, int] = dict(
                conn.execute(select(score_history.c.lead_id, func.count()).group_by(score_history.c.lead_id)).all()
            )
        assert scored == set(lead_ids)
        # Once each: a score and its queue row's removal commit together, so the kill left each lead done or not.
        assert set(per_lead) == set(lead_ids)
        assert {lead_id: n for lead_id, n in per_lead.items() if n != 1} == {}
    finally:
        engine.dispose()
