"""`leadscore webhooks listen`: a signed webhook is shown, a forged or unsigned one refused."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from serving.receiver import make_server

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def received() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []
    server = make_server("127.0.0.1", 0, SECRET, lambda event, headers: events.append(event))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], events
    server.shutdown()
    server.server_close()


def _post(port: int, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode()),
        "Content-Type": "application/json",
    }


def test_a_signed_webhook_is_accepted_and_shown(received: tuple[int, list[dict[str, Any]]]) -> None:
    port, events = received
    body = json.dumps({"type": "lead.routed", "data": {"lead_id": "L-1", "queue": "sales"}}).encode()
    assert _post(port, body, _signed(body)) == 204
    assert events == [{"type": "lead.routed", "data": {"lead_id": "L-1", "queue": "sales"}}]


def test_a_webhook_signed_with_another_secret_or_altered_is_refused(
    received: tuple[int, list[dict[str, Any]]],
) -> None:
    port, events = received
    body = json.dumps({"type": "lead.routed"}).encode()
    assert _post(port, body, _signed(body, "whsec_" + "A" * 32)) == 401
    assert _post(port, body.replace(b"routed", b"RouTed"), _signed(body)) == 401
    assert _post(port, body, {"Content-Type": "application/json"}) == 401
    assert events == []
