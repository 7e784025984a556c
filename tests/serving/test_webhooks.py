"""Webhook delivery against a real HTTP receiver that is down, slow, refuses, and comes back; the admin API."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from standardwebhooks import Webhook, WebhookVerificationError

from serving.app import create_app
from serving.state import ServiceState
from serving.webhooks import DeliveryConfig, deliver_due
from tests.serving.conftest import ADMIN, SCORING, Registry, service_settings
from timeline import outbox
from timeline.engine import make_engine
from timeline.outbox import RetryPolicy
from timeline.scores import ScoreState

# Tiny timings: a receiver answering after SLOW_SECONDS misses the TIMEOUT, and retries come within a second.
TIMEOUT = 0.5
SLOW_SECONDS = 1.5
POLICY = RetryPolicy(base_seconds=0.05, factor=2.0, max_seconds=0.4, jitter=0.2, max_attempts=8)
CONFIG = DeliveryConfig(timeout_seconds=TIMEOUT, batch=50, poll_seconds=0.05, policy=POLICY)
WAIT_SECONDS = 30.0


# ---- a receiver, as a CRM would run one -----------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint on a port of its own: verifies each signature, counts arrivals and deduplicates by id.

    mode: "ok" (204), "error" (500), "slow" (answers after SLOW_SECONDS), "redirect" (307). Stopped, nothing listens
    on its port (connections are refused), and started again it takes the same port.
    """

    secret: str = ""
    port: int = 0
    mode: str = "ok"
    arrivals: Counter[str] = field(default_factory=Counter)  # every verified POST, by webhook-id
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # first accepted body per id (the dedupe)
    bad_signatures: int = 0
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError:
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self._answer(401)
                    return
                msg_id = headers["webhook-id"]
                with receiver._lock:
                    receiver.arrivals[msg_id] += 1
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(SLOW_SECONDS)
                    self._answer(204)  # too late: the sender gave up
                elif mode == "error":
                    self._answer(500, b"database unavailable")
                elif mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    with receiver._lock:
                        receiver.accepted.setdefault(msg_id, payload)
                    self._answer(204)

            def _answer(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(port=_free_port())  # not started: the receiver is down until a test starts it
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield made
    finally:
        made.dispose()


def _state(queue: str) -> ScoreState:
    return ScoreState(
        fit_score=70.0, grade="A", readiness_probability=0.4, readiness_score=80.0, stage="SQL", queue=queue,
        model_version="1", thresholds_version=1,
        response={"route": {"queue": queue, "priority": 1, "sla_hours": 4.0}, "reasons": {"fit": [], "behaviour": []}},
    )  # fmt: skip


def _subscribe(engine: Engine, receiver: Receiver, events: tuple[str, ...] = ("lead.routed",)) -> outbox.Subscription:
    with engine.begin() as conn:
        subscription = outbox.create_subscription(conn, receiver.url, events, 5.0, "test receiver")
    receiver.secret = subscription.secret
    return subscription


def _route(engine: Engine, leads: list[str]) -> None:
    """Rescores that send each lead to sales: one lead.routed per lead, queued as the rescore worker queues them."""
    with engine.begin() as conn:
        for lead in leads:
            outbox.emit_score_events(conn, lead, _state("nurture"), _state("sales"), now=dt.datetime.now(dt.UTC))


def _log(engine: Engine, subscription: outbox.Subscription) -> list[outbox.Delivery]:
    with engine.begin() as conn:
        return outbox.deliveries(conn, subscription.id, limit=1000)


def _pass(engine: Engine, config: DeliveryConfig = CONFIG, *, now: dt.datetime | None = None) -> int:
    """One pass of the delivery loop, as each service process runs it."""

    async def run() -> int:
        async with httpx.AsyncClient(timeout=config.timeout_seconds, follow_redirects=False) as client:
            return await deliver_due(engine, client, config, "w1", now=now)

    return asyncio.run(run())


def _until(condition: Callable[[], bool], engine: Engine, config: DeliveryConfig = CONFIG) -> None:
    """Run passes (as the loop would, every poll interval) until `condition` holds."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for deliveries"
        _pass(engine, config)
        time.sleep(config.poll_seconds)


def _attempts(engine: Engine, subscription: outbox.Subscription) -> dict[str, list[outbox.Attempt]]:
    return {d.id: list(d.log) for d in _log(engine, subscription)}


# ---- delivery --------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_receiver_down_then_failing_then_slow_gets_each_webhook_once_when_it_recovers(
    engine: Engine, receiver: Receiver
) -> None:
    subscription = _subscribe(engine, receiver)
    _route(engine, ["L1", "L2", "L3"])

    # Down: nothing listens, every connection is refused.
    assert _pass(engine) == 3
    logged = _log(engine, subscription)
    assert all(d.status == "pending" and d.log[-1].status_code is None for d in logged)
    assert all("ConnectError" in (d.last_error or "") for d in logged)
    # Backoff: not tried again before the first wait (at least base x (1 - jitter)) is over.
    assert _pass(engine, now=max(d.log[-1].attempted_at for d in logged)) == 0
    first_try = {d.id: d.log[-1].attempted_at for d in logged}

    # Back, but answering 500.
    receiver.mode = "error"
    receiver.start()
    _until(lambda: all(len(a) >= 2 for a in _attempts(engine, subscription).values()), engine)
    for delivery in _log(engine, subscription):
        assert delivery.log[1].status_code == 500 and "database unavailable" in (delivery.last_error or "")
        wait = (delivery.log[1].attempted_at - first_try[delivery.id]).total_seconds()
        assert wait >= POLICY.base_seconds * (1 - POLICY.jitter)

    # Slow: answers after the timeout, which counts as a failure.
    receiver.mode = "slow"
    _until(lambda: all(len(a) >= 3 for a in _attempts(engine, subscription).values()), engine)
    for delivery in _log(engine, subscription):
        slow = delivery.log[2]
        assert slow.status_code is None and slow.error == f"no answer within {TIMEOUT:g} s"
        assert TIMEOUT * 1000 * 0.9 <= slow.duration_ms < SLOW_SECONDS * 1000

    # Recovered: each delivery arrives, is verified, and ends delivered; nothing more is sent after.
    receiver.mode = "ok"
    _until(lambda: all(d.status == "delivered" for d in _log(engine, subscription)), engine)
    time.sleep(3 * POLICY.max_seconds)
    _pass(engine)
    logged = _log(engine, subscription)
    assert sorted(receiver.accepted) == sorted(d.id for d in logged)
    assert sorted(p["data"]["lead_id"] for p in receiver.accepted.values()) == ["L1", "L2", "L3"]
    assert all(
        p["type"] == "lead.routed" and p["data"]["previous_queue"] == "nurture" for p in receiver.accepted.values()
    )
    for delivery in logged:
        codes = [a.status_code for a in delivery.log]
        assert codes[:3] == [None, 500, None] and codes[-1] == 204
        # Only the last attempt reached a receiver that accepted it: arrivals after it, none.
        assert receiver.arrivals[delivery.id] == len(codes) - 1  # every attempt but the refused connection arrived
    assert receiver.bad_signatures == 0


@pytest.mark.integration
def test_a_delivery_is_dead_after_n_failures_and_a_replay_delivers_it_again(engine: Engine, receiver: Receiver) -> None:
    config = DeliveryConfig(timeout_seconds=TIMEOUT, poll_seconds=0.05, policy=RetryPolicy(
        base_seconds=0.05, max_seconds=0.1, max_attempts=3))  # fmt: skip
    subscription = _subscribe(engine, receiver)
    receiver.mode = "error"
    receiver.start()
    _route(engine, ["L1"])
    _until(lambda: _log(engine, subscription)[0].status == "dead", engine, config)
    (dead,) = _log(engine, subscription)
    assert [a.status_code for a in dead.log] == [500, 500, 500] and dead.next_attempt_at is None
    receiver.mode = "ok"
    time.sleep(0.3)
    assert _pass(engine, config) == 0  # dead stays dead
    assert receiver.accepted == {}

    with engine.begin() as conn:
        outbox.replay(conn, dead.id, dt.datetime.now(dt.UTC))
    assert _pass(engine, config) == 1
    (delivered,) = _log(engine, subscription)
    assert delivered.status == "delivered" and [a.status_code for a in delivered.log] == [500, 500, 500, 204]
    assert list(receiver.accepted) == [dead.id]
    # A replay of a delivered one sends the same message again (same webhook-id: the receiver can tell).
    with engine.begin() as conn:
        outbox.replay(conn, dead.id, dt.datetime.now(dt.UTC))
    assert _pass(engine, config) == 1
    assert receiver.arrivals[dead.id] == 5 and len(receiver.accepted) == 1


@pytest.mark.integration
def test_two_delivery_loops_on_one_store_send_each_webhook_once(engine: Engine, receiver: Receiver) -> None:
    subscription = _subscribe(engine, receiver)
    receiver.start()
    leads = [f"L{i}" for i in range(40)]
    _route(engine, leads)
    config = DeliveryConfig(timeout_seconds=5.0, batch=7, poll_seconds=0.05, policy=POLICY)

    async def both() -> None:
        async with httpx.AsyncClient() as a, httpx.AsyncClient() as b:
            while any(d.status != "delivered" for d in _log(engine, subscription)):
                await asyncio.gather(
                    deliver_due(engine, a, config, "replica-a"), deliver_due(engine, b, config, "replica-b")
                )

    asyncio.run(asyncio.wait_for(both(), WAIT_SECONDS))
    assert set(receiver.arrivals.values()) == {1} and len(receiver.arrivals) == len(leads)


@pytest.mark.integration
def test_a_rotated_secret_signs_the_next_attempt_and_redirects_are_not_followed(
    engine: Engine, receiver: Receiver
) -> None:
    subscription = _subscribe(engine, receiver)
    receiver.start()
    with engine.begin() as conn:
        rotated = outbox.update_subscription(conn, subscription.id, rotate_secret=True)
    assert rotated is not None
    _route(engine, ["L1"])
    _pass(engine)  # the receiver still checks with the old secret: refused
    assert receiver.bad_signatures == 1 and _log(engine, subscription)[0].log[0].status_code == 401
    receiver.secret = rotated.secret
    receiver.mode = "redirect"
    _until(lambda: len(_log(engine, subscription)[0].log) >= 2, engine)
    assert "redirects are not followed" in (_log(engine, subscription)[0].last_error or "")
    receiver.mode = "ok"
    _until(lambda: _log(engine, subscription)[0].status == "delivered", engine)
    assert len(receiver.accepted) == 1


# ---- the admin API ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with no delivery loop: what the API queues stays as it was queued."""
    settings = service_settings(registry, tmp_path_factory.mktemp("webhooks-api"), webhook_delivery=False)
    with TestClient(create_app(settings)) as client:
        yield client


def _store(client: TestClient) -> Engine:
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    return state.score_log.engine


def _create(api: TestClient, **body: Any) -> dict[str, Any]:
    values = {"url": "https://crm.example/hooks", "events": ["lead.routed", "lead.grade_changed"], **body}
    created = api.post("/v1/webhooks", json=values, headers=ADMIN)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def test_subscriptions_are_created_listed_changed_rotated_and_deleted(api: TestClient) -> None:
    created = _create(api, description="Salesforce", min_score_change=15)
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    assert (created["min_score_change"], created["active"], created["description"]) == (15.0, True, "Salesforce")
    shown = api.get(f"/v1/webhooks/{created['id']}", headers=ADMIN).json()
    assert "secret" not in shown and shown["events"] == ["lead.routed", "lead.grade_changed"]
    listed = api.get("/v1/webhooks", headers=ADMIN).json()["subscriptions"]
    assert created["id"] in [s["id"] for s in listed] and all("secret" not in s for s in listed)

    changed = api.patch(
        f"/v1/webhooks/{created['id']}", json={"active": False, "events": ["lead.score_changed"]}, headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["active"], changed.json()["events"], changed.json()["url"]) == (
        False, ["lead.score_changed"], "https://crm.example/hooks",
    )  # fmt: skip
    rotated = api.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=ADMIN).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]

    assert api.delete(f"/v1/webhooks/{created['id']}", headers=ADMIN).status_code == 204
    for method, path in [
        ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/rotate-secret"), ("GET", "/deliveries"),
        ("POST", "/test"),
    ]:  # fmt: skip
        gone = api.request(
            method, f"/v1/webhooks/{created['id']}{path}", headers=ADMIN, json={} if method == "PATCH" else None
        )
        assert gone.status_code == 404 and created["id"] in gone.json()["detail"], (method, path)


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://crm.example/x"}, "url", "http:// or https://"),
        ({"url": "javascript:alert(1)"}, "url", "http:// or https://"),
        ({"events": ["lead.created"]}, "events", "lead.routed, lead.score_changed, lead.grade_changed"),
        ({"events": []}, "events", "at least one"),
        ({"events": "lead.routed"}, "events", "list"),
        ({"min_score_change": 101}, "min_score_change", "less than or equal to 100"),
        ({"min_score_change": -1}, "min_score_change", "greater than or equal to 0"),
        ({"secret": "whsec_mine"}, "secret", "Extra inputs"),
    ],
)
def test_bad_subscriptions_get_a_422_naming_the_field(
    api: TestClient, body: dict[str, Any], field: str, says: str
) -> None:
    before = api.get("/v1/webhooks", headers=ADMIN).json()["subscriptions"]
    values = {"url": "https://crm.example/hooks", "events": ["lead.routed"], **body}
    refused = api.post("/v1/webhooks", json=values, headers=ADMIN)
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["detail"]
    assert problem["loc"][:2] == ["body", field] and says in problem["msg"], problem
    assert api.get("/v1/webhooks", headers=ADMIN).json()["subscriptions"] == before
    created = _create(api)
    patched = api.patch(f"/v1/webhooks/{created['id']}", json=body, headers=ADMIN)
    assert patched.status_code == 422 and patched.json()["detail"][0]["loc"][:2] == ["body", field]
    assert api.delete(f"/v1/webhooks/{created['id']}", headers=ADMIN).status_code == 204


def test_only_admin_keys_may_manage_webhooks(api: TestClient) -> None:
    created = _create(api)
    routes = [
        ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks"), ("GET", f"/v1/webhooks/{created['id']}"),
        ("PATCH", f"/v1/webhooks/{created['id']}"), ("DELETE", f"/v1/webhooks/{created['id']}"),
        ("POST", f"/v1/webhooks/{created['id']}/rotate-secret"), ("GET", f"/v1/webhooks/{created['id']}/deliveries"),
        ("POST", f"/v1/webhooks/{created['id']}/deliveries/msg_x/replay"),
        ("POST", f"/v1/webhooks/{created['id']}/test"),
    ]  # fmt: skip
    for method, path in routes:
        assert api.request(method, path, headers=SCORING).status_code == 403, (method, path)
        assert api.request(method, path).status_code == 401, (method, path)
    assert api.get(f"/v1/webhooks/{created['id']}", headers=ADMIN).status_code == 200  # untouched


def test_the_delivery_log_test_events_and_replay(api: TestClient) -> None:
    created = _create(api)
    subscription_id = created["id"]
    queued = api.post(f"/v1/webhooks/{subscription_id}/test", headers=ADMIN)
    assert queued.status_code == 202, queued.text
    test_delivery = queued.json()
    assert test_delivery["event_type"] == "webhook.test" and test_delivery["status"] == "pending"
    assert test_delivery["id"].startswith("msg_") and test_delivery["payload"]["type"] == "webhook.test"

    engine = _store(api)
    with engine.begin() as conn:
        outbox.emit_score_events(conn, "L1", None, _state("sales"), now=dt.datetime.now(dt.UTC))
    # A failed attempt and a dead letter, as the delivery loop records them.
    claimed = {c.id: c for c in outbox.claim_due(engine, "w", 100, 60, dt.datetime.now(dt.UTC))}
    routed = next(c for c in claimed.values() if c.subscription_id == subscription_id and c.id != test_delivery["id"])
    with engine.begin() as conn:
        outbox.record_attempt(
            conn, routed.id, 503, "answered 503", 41.5, dt.datetime.now(dt.UTC), RetryPolicy(max_attempts=1)
        )

    log = api.get(f"/v1/webhooks/{subscription_id}/deliveries", headers=ADMIN).json()
    by_id = {d["id"]: d for d in log["deliveries"]}
    assert set(by_id) == {test_delivery["id"], routed.id} and log["next_before"] is None
    dead = by_id[routed.id]
    assert dead["status"] == "dead" and dead["event_type"] == "lead.routed" and dead["lead_id"] == "L1"
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in dead["attempts"]] == [(503, "answered 503", 41.5)]
    assert dead["payload"]["data"]["queue"] == "sales" and dead["payload"]["data"]["previous_queue"] is None
    only_dead = api.get(f"/v1/webhooks/{subscription_id}/deliveries?status=dead", headers=ADMIN).json()["deliveries"]
    assert [d["id"] for d in only_dead] == [routed.id]
    page = api.get(f"/v1/webhooks/{subscription_id}/deliveries?limit=1", headers=ADMIN).json()
    assert len(page["deliveries"]) == 1 and page["next_before"] == page["deliveries"][0]["id"]
    rest = api.get(f"/v1/webhooks/{subscription_id}/deliveries?before={page['next_before']}", headers=ADMIN).json()
    assert {d["id"] for d in page["deliveries"] + rest["deliveries"]} == set(by_id)
    for bad in ("status=lost", "limit=0", "limit=501"):
        refused = api.get(f"/v1/webhooks/{subscription_id}/deliveries?{bad}", headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][0] == "query", bad

    replayed = api.post(f"/v1/webhooks/{subscription_id}/deliveries/{routed.id}/replay", headers=ADMIN)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "pending" and len(replayed.json()["attempts"]) == 1
    again = api.post(f"/v1/webhooks/{subscription_id}/deliveries/{routed.id}/replay", headers=ADMIN)
    assert again.status_code == 409 and "pending already" in again.json()["detail"]
    other = _create(api)
    assert api.post(f"/v1/webhooks/{other['id']}/deliveries/{routed.id}/replay", headers=ADMIN).status_code == 404

    api.patch(f"/v1/webhooks/{subscription_id}", json={"active": False}, headers=ADMIN)
    inactive = api.post(f"/v1/webhooks/{subscription_id}/test", headers=ADMIN)
    assert inactive.status_code == 409 and "inactive" in inactive.json()["detail"]
    for made in (created, other):
        api.delete(f"/v1/webhooks/{made['id']}", headers=ADMIN)


@pytest.mark.integration
def test_the_service_delivers_from_its_lifespan(registry: Registry, tmp_path: Path, receiver: Receiver) -> None:
    """The delivery loop runs as a background chore of the service: subscribe, queue, and the receiver gets it."""
    settings = service_settings(
        registry, tmp_path, webhook_timeout_seconds=2.0, webhook_poll_seconds=0.05, webhook_backoff_base_seconds=0.05,
        webhook_backoff_max_seconds=0.2,
    )  # fmt: skip
    receiver.start()
    with TestClient(create_app(settings)) as api:
        created = _create(api, url=receiver.url, events=["lead.routed"])
        receiver.secret = created["secret"]
        test_id = api.post(f"/v1/webhooks/{created['id']}/test", headers=ADMIN).json()["id"]
        with _store(api).begin() as conn:
            outbox.emit_score_events(conn, "L7", _state("nurture"), _state("sales"), now=dt.datetime.now(dt.UTC))
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            log = api.get(f"/v1/webhooks/{created['id']}/deliveries", headers=ADMIN).json()["deliveries"]
            if len(log) == 2 and all(d["status"] == "delivered" for d in log):
                break
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
    assert receiver.accepted[test_id]["type"] == "webhook.test"
    routed = next(p for i, p in receiver.accepted.items() if i != test_id)
    assert routed["type"] == "lead.routed" and routed["data"]["lead_id"] == "L7" and routed["data"]["queue"] == "sales"
    assert set(receiver.arrivals.values()) == {1}
