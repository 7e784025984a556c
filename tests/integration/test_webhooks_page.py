"""The page's Webhooks section as sales ops use it: headless Chromium, a real service, a signature-checking receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Request, expect

from serving.receiver import make_server
from tests.integration.conftest import Server
from tests.integration.test_serving import ADMIN_KEY, SCORING_KEY, _free_port

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots, as the thresholds page test keeps

# For a test event to reach the receiver and the open log to show it: the service looks for due deliveries every
# 0.2 s and the page re-reads a log with pending deliveries every second; well under that on an idle machine.
DELIVERY_MS = 20_000


@dataclass
class Opened:
    """One open page, every URL it requested and every uncaught script error or CSP refusal."""

    page: Page
    requests: list[str]
    errors: list[str]


@pytest.fixture
def opened(browser: Browser, server: Server) -> Iterator[Opened]:
    # A context per test (cheap) in the module's one browser; the page's CSP is enforced, as a browser would.
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    session = Opened(page, [], [])

    def requested(request: Request) -> None:
        session.requests.append(request.url)

    def refused(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            session.errors.append(message.text)

    page.on("request", requested)
    page.on("pageerror", lambda error: session.errors.append(str(error)))
    page.on("console", refused)
    try:
        yield session
    finally:
        context.close()


@dataclass
class Received:
    """The webhooks the receiver verified: (webhook-id, event), in the order they came."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], headers: dict[str, str]) -> None:
        with self.lock:
            self.events.append((headers["webhook-id"], event))

    def ids(self) -> list[str]:
        with self.lock:
            return [webhook_id for webhook_id, _ in self.events]


def _open(opened: Opened, server: Server, key: str | None) -> Page:
    page = opened.page
    page.goto(f"{server.url}/thresholds")
    if key is not None:
        page.get_by_label("API key").fill(key)
        page.click("#api-key-apply")
    return page


def _row(page: Page, subscription_id: str) -> Locator:
    return page.locator(f"#webhooks-table tbody tr[data-id='{subscription_id}']")


def _subscriptions(server: Server) -> list[dict[str, Any]]:
    listed = server.get("/v1/webhooks", ADMIN_KEY)
    assert listed.status_code == 200, listed.text
    subscriptions: list[dict[str, Any]] = listed.json()["subscriptions"]
    return subscriptions


def test_sales_ops_add_test_pause_and_delete_a_webhook(opened: Opened, server: Server) -> None:
    page = _open(opened, server, ADMIN_KEY)
    expect(page.locator("#webhooks-empty")).to_be_visible()
    port = _free_port()  # the receiver starts once its secret is known, which the page shows after the add
    url = f"http://127.0.0.1:{port}/hooks"

    page.get_by_label("URL (http or https)").fill(url)
    page.get_by_label("lead.grade_changed").check()  # lead.routed is checked already
    page.get_by_label("Min score change (points").fill("5")
    page.get_by_label("Description (optional)").fill("e2e receiver")
    page.get_by_role("button", name="Add subscription").click()

    # The secret, once, with the warning that it is not shown again.
    secret_box = page.locator("#webhook-secret")
    expect(secret_box).to_be_visible()
    expect(secret_box).to_contain_text("it will not be shown again")
    secret = page.input_value("#webhook-secret-value")
    subscription_id = page.get_attribute("#webhook-secret-value", "data-id") or ""
    assert secret.startswith("whsec_") and subscription_id.startswith("wh_")
    expect(page.locator("#webhook-form-status")).to_have_attribute("data-kind", "ok")
    row = _row(page, subscription_id)
    expect(row).to_have_attribute("data-active", "true")
    assert row.locator("td[data-field=url]").inner_text().startswith(url)
    assert row.locator("td[data-field=events]").inner_text() == "lead.routed, lead.grade_changed"
    assert row.locator("td[data-field=min_score_change]").inner_text() == "5 pts"
    assert row.locator("td[data-field=active]").inner_text() == "active"
    assert row.locator("td[data-field=last_delivery]").get_attribute("data-status") == "none"
    stored = server.get(f"/v1/webhooks/{subscription_id}", ADMIN_KEY).json()
    assert (stored["url"], stored["events"], stored["min_score_change"], stored["description"]) == (
        url, ["lead.routed", "lead.grade_changed"], 5.0, "e2e receiver",
    )  # fmt: skip
    assert "secret" not in stored
    page.get_by_role("button", name="I have kept it").click()
    expect(secret_box).to_be_hidden()
    assert page.input_value("#webhook-secret-value") == ""
    page.reload()  # and it is nowhere to be read again
    expect(_row(page, subscription_id)).to_be_visible()
    assert secret not in page.content()

    received = Received()
    receiver = make_server("127.0.0.1", port, secret, received)  # 401 to anything not signed with this secret
    serving = threading.Thread(target=receiver.serve_forever, daemon=True)
    serving.start()
    try:
        # A test event: queued, sent signed, verified by the receiver, and followed in the log the page opens.
        row.get_by_role("button", name="Send test").click()
        log = page.locator("#webhook-log")
        expect(log).to_be_visible()
        expect(log).to_have_attribute("data-id", subscription_id)
        delivered = page.locator("#webhook-log-table tbody tr[data-status=delivered]")
        expect(delivered).to_have_count(1, timeout=DELIVERY_MS)
        delivery_id = delivered.get_attribute("data-id") or ""
        assert received.ids() == [delivery_id]
        (_, event), *_ = received.events
        assert event["type"] == "webhook.test" and event["data"]["subscription_id"] == subscription_id
        assert delivered.locator("td[data-field=event]").inner_text().startswith("webhook.test")
        assert delivered.locator("td[data-field=last_answer]").inner_text() == "HTTP 204"
        assert delivered.locator("td[data-field=attempts] summary").inner_text() == "1"
        expect(row.locator("td[data-field=last_delivery]")).to_have_attribute("data-status", "delivered")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#webhooks").screenshot(path=ARTIFACTS / "webhooks-section.png")

        # Replay: the same delivery (same webhook-id) reaches the receiver again, and its log keeps both attempts.
        delivered.get_by_role("button", name="Replay").click()
        expect(page.locator("#webhooks-status")).to_contain_text(f"Delivery {delivery_id} queued again")
        expect(delivered.locator("td[data-field=attempts] summary")).to_have_text("2", timeout=DELIVERY_MS)
        assert received.ids() == [delivery_id, delivery_id]
    finally:
        receiver.shutdown()
        receiver.server_close()
        serving.join(timeout=10)

    # Paused: shown inactive, no test events to it, and the API agrees; resumed the same way.
    row.get_by_role("button", name="Pause").click()
    expect(row).to_have_attribute("data-active", "false")
    assert row.locator("td[data-field=active]").inner_text() == "paused"
    expect(row.get_by_role("button", name="Send test")).to_be_disabled()
    assert "Paused" in page.inner_text("#webhooks-status")
    assert server.get(f"/v1/webhooks/{subscription_id}", ADMIN_KEY).json()["active"] is False
    row.get_by_role("button", name="Resume").click()
    expect(row).to_have_attribute("data-active", "true")
    assert server.get(f"/v1/webhooks/{subscription_id}", ADMIN_KEY).json()["active"] is True

    # Delete asks first; cancelling keeps it, confirming removes it and its open log.
    dialog = page.get_by_role("dialog")
    row.get_by_role("button", name="Delete").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(url)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert server.get(f"/v1/webhooks/{subscription_id}", ADMIN_KEY).status_code == 200
    row.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(dialog).to_be_hidden()
    expect(page.locator("#webhook-log")).to_be_hidden()
    assert "Deleted the subscription" in page.inner_text("#webhooks-status")
    assert server.get(f"/v1/webhooks/{subscription_id}", ADMIN_KEY).status_code == 404

    assert all(r.startswith((server.url, "data:")) for r in opened.requests), opened.requests
    assert not opened.errors


@pytest.mark.parametrize(("typed", "shown"), [("ftp://x", "'ftp://x' is not an http"), ("", "'' is not an http")])
def test_a_bad_url_is_refused_with_the_apis_words_naming_the_field(
    opened: Opened, server: Server, typed: str, shown: str
) -> None:
    before = _subscriptions(server)
    page = _open(opened, server, ADMIN_KEY)
    page.get_by_label("URL (http or https)").fill(typed)
    page.get_by_role("button", name="Add subscription").click()
    status = page.locator("#webhook-form-status")
    expect(status).to_have_attribute("data-kind", "error")
    message = status.inner_text()
    assert "URL (url):" in message and shown in message, message
    assert "{" not in message and "[" not in message, message  # words, not the API's JSON
    assert page.get_attribute("#webhook-url", "aria-invalid") == "true"
    expect(page.locator("#webhook-secret")).to_be_hidden()
    assert _subscriptions(server) == before

    # Other fields refused: each named, and the URL no longer marked once it is right.
    page.get_by_label("URL (http or https)").fill("https://crm.example.com/hooks")
    page.get_by_label("lead.routed").uncheck()
    page.get_by_label("Min score change (points").fill("150")
    page.get_by_role("button", name="Add subscription").click()
    expect(status).to_contain_text("Events (events): at least one event type is needed")
    expect(status).to_contain_text("Min score change (min_score_change): Input should be less than or equal to 100")
    assert page.get_attribute("#webhook-url", "aria-invalid") is None
    assert page.get_attribute("#webhook-events", "data-invalid") == "true"
    assert page.get_attribute("#webhook-min-change", "aria-invalid") == "true"
    assert _subscriptions(server) == before
    assert not opened.errors


def test_without_an_admin_key_the_section_says_which_key_it_needs(opened: Opened, server: Server) -> None:
    before = _subscriptions(server)
    page = _open(opened, server, None)
    status = page.locator("#webhooks-status")
    expect(status).to_contain_text("Not authorised (401)")
    expect(status).to_contain_text("Webhooks need an admin API key")

    page.get_by_label("API key").fill(SCORING_KEY)
    page.click("#api-key-apply")
    expect(status).to_contain_text("Forbidden (403): this key may score but not administer the service")
    page.get_by_label("URL (http or https)").fill("https://crm.example.com/hooks")
    page.get_by_role("button", name="Add subscription").click()
    form_status = page.locator("#webhook-form-status")
    expect(form_status).to_contain_text("Forbidden (403)")
    expect(form_status).to_contain_text("admin API key")
    assert _subscriptions(server) == before
    assert not opened.errors
