"""Two `leadscore serve` processes on one PostgreSQL store act as one service: ingest on one, score on the other."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import mlflow
import pytest
from sqlalchemy import create_engine, func, select

from serving.receiver import make_server
from tests.integration.conftest import ChampionStore, register_new_champion
from tests.integration.test_serving import _free_port, _wait_ready, service_env
from tests.postgres import fresh_database
from timeline.schema import lead_scores, rescore_queue, webhook_deliveries

pytestmark = pytest.mark.integration
INGEST_KEY = "replica-ingest-key"
ADMIN_KEY = "admin-key-456"  # service_env's
SCORING_KEY = "crm-key-123"


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, key: str = ADMIN_KEY, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"X-API-Key": key}, params=params, timeout=30)

    def send(self, method: str, path: str, body: Any, key: str = INGEST_KEY) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)


@dataclass
class Pair:
    a: Replica
    b: Replica
    store_url: str
    tracking_uri: str


@dataclass
class Received:
    """What the receiver got: every delivery's webhook-id, and the events by lead."""

    ids: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], headers: dict[str, str]) -> None:
        with self.lock:
            self.ids[headers["webhook-id"]] += 1
            if event["type"] == "lead.routed":
                self.routed[event["data"]["lead_id"]] += 1


@pytest.fixture(scope="module")
def pair(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("replicas")
    uri = champion_store.copy_to(root / "registry")
    with fresh_database() as database:
        store_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        replicas, logs = [], []
        for name in ("a", "b"):
            port = _free_port()
            env = {**service_env(uri, root / name), "LEADSCORE_STORE_URL": store_url,
                   "LEADSCORE_INGEST_KEYS": INGEST_KEY, "LEADSCORE_WEBHOOK_BACKOFF_BASE_SECONDS": "0.5"}  # fmt: skip
            (root / name).mkdir()
            log = (root / name / "server.log").open("wb")
            logs.append(log)
            process = subprocess.Popen(
                [sys.executable, "-m", "leadscore", "serve", "--port", str(port)],
                env=env, cwd=root / name, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            replicas.append(Replica(f"http://127.0.0.1:{port}", process))
        try:
            for replica in replicas:  # started together: they share the first migration of the store
                _wait_ready(replica.url, replica.process, seconds=240)
            yield Pair(replicas[0], replicas[1], store_url, uri)
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.process.terminate()
                    replica.process.wait(timeout=30)
            for log in logs:
                log.close()
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _lead(account: str, created: dt.datetime) -> dict[str, Any]:
    return {"account_id": account, "created_at": created.isoformat(), "industry": "software",
            "employee_count": 850, "seniority": "director", "department": "it", "email_domain": "acme.com"}  # fmt: skip


def _until(check: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_a_lead_ingested_on_one_replica_is_scored_by_id_on_the_other(pair: Pair) -> None:
    now = dt.datetime.now(dt.UTC)
    assert pair.a.send("PUT", "/v1/leads/R-1", _lead("ACME", now - dt.timedelta(days=20))).status_code == 201
    touches = [{"lead_id": "R-1", "occurred_at": (now - dt.timedelta(days=d)).isoformat(), "activity_type": kind}
               for d, kind in ((9, "pricing_page_view"), (4, "webinar_attended"), (1, "demo_request"))]  # fmt: skip
    assert pair.a.send("POST", "/v1/activities", {"activities": touches}).json()["stored"] == 3

    by_id = pair.b.get("/v1/leads/R-1/score", SCORING_KEY)
    assert by_id.status_code == 200, by_id.text
    body = {"lead": {"lead_id": "R-1", **_lead("ACME", now - dt.timedelta(days=20))},
            "activities": [{k: t[k] for k in ("occurred_at", "activity_type")} for t in touches],
            "colleagues": []}  # fmt: skip
    stateless = pair.b.send("POST", "/v1/score", body, SCORING_KEY).json()
    assert by_id.json()["readiness"]["probability"] == pytest.approx(stateless["readiness"]["probability"], abs=1e-6)
    assert any(r["group"] == "demo_request" for r in by_id.json()["reasons"]["behaviour"])

    # Rescored once by whichever replica claimed it, and the queue drained.
    engine = create_engine(pair.store_url)
    try:

        def drained() -> bool:
            with engine.connect() as conn:
                queued = conn.execute(select(func.count()).select_from(rescore_queue)).scalar_one()
                scored = conn.execute(select(func.count()).where(lead_scores.c.lead_id == "R-1")).scalar_one()
            return queued == 0 and scored == 1

        assert _until(drained)
    finally:
        engine.dispose()


def test_thresholds_saved_on_one_replica_route_the_others_scores(pair: Pair) -> None:
    current = pair.a.get("/v1/thresholds").json()
    policy = current["policy"]
    policy["stages"]["SQL"] = min(0.99, policy["stages"]["SQL"] + 0.01)
    saved = pair.b.send("PUT", "/v1/thresholds", {"policy": policy, "reason": "replica test"}, ADMIN_KEY)
    assert saved.status_code == 200, saved.text
    version = saved.json()["version"]
    assert _until(lambda: pair.a.get("/v1/thresholds").json()["version"] == version, 10)


def test_a_reload_on_one_replica_is_followed_by_the_other(pair: Pair) -> None:
    new = register_new_champion(pair.tracking_uri)
    assert pair.a.send("POST", "/v1/admin/reload", None, ADMIN_KEY).status_code == 200
    assert _until(lambda: pair.b.get("/readyz").json().get("model_version") == new, 60)


def test_each_webhook_is_delivered_once_by_the_two_replicas(pair: Pair) -> None:
    received = Received()
    port = _free_port()
    subscribed = pair.a.send(
        "POST", "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/", "events": ["lead.routed"]}, ADMIN_KEY
    )
    assert subscribed.status_code == 201, subscribed.text
    server = make_server("127.0.0.1", port, subscribed.json()["secret"], received)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        now = dt.datetime.now(dt.UTC)
        leads = [f"W-{n}" for n in range(30)]
        # Alternately on each replica (both rescore, both deliver), each its own account: no colleague reroutes it.
        for n, lead_id in enumerate(leads):
            replica = pair.a if n % 2 == 0 else pair.b
            assert (
                replica.send("PUT", f"/v1/leads/{lead_id}", _lead(f"SOLO-{n}", now - dt.timedelta(days=5))).status_code
                == 201
            )
        assert _until(lambda: set(leads) <= set(received.routed), 60), sorted(set(leads) - set(received.routed))
        time.sleep(2)  # a second delivery of any of them would arrive meanwhile
        engine = create_engine(pair.store_url)
        try:
            with engine.connect() as conn:
                delivered = conn.execute(
                    select(func.count()).where(webhook_deliveries.c.status == "delivered")
                ).scalar_one()
        finally:
            engine.dispose()
    finally:
        server.shutdown()
        server.server_close()
    assert all(received.routed[lead_id] == 1 for lead_id in leads), received.routed
    assert max(received.ids.values()) == 1  # no delivery sent twice
    assert sum(received.ids.values()) == delivered
