"""The thresholds page as sales ops use it: headless Chromium on a real uvicorn process and a real MLflow registry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route

from serving.schemas import EXAMPLE_REQUEST
from tests.integration.conftest import Server
from tests.integration.test_serving import ADMIN_KEY, SCORING_KEY

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_SECONDS = 20.0  # for one redraw or save; each takes well under a second on an idle machine
# The service re-reads the policy at most this long after a save (serving.state.POLICY_REFRESH_SECONDS, with slack).
POLICY_PICKUP_SECONDS = 5.0


@dataclass
class Session:
    """One open page, every URL it requested, the bodies of its simulate requests and every uncaught script error."""

    page: Page
    requests: list[str]
    errors: list[str]
    simulations: list[dict[str, Any]]


@pytest.fixture
def session(browser: Browser, server: Server) -> Iterator[Session]:
    # No bypass of the page's Content-Security-Policy: the test sees what a browser enforces.
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    opened = Session(page, [], [], [])

    def requested(request: Request) -> None:
        opened.requests.append(request.url)
        if request.url.endswith("/v1/thresholds/simulate"):
            opened.simulations.append(json.loads(request.post_data or "{}"))

    page.on("request", requested)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))

    def refused(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:  # something the page needs was blocked by its own CSP
            opened.errors.append(message.text)

    page.on("console", refused)
    try:
        yield opened
    finally:
        context.close()


def _wait_for(page: Page, expression: str, arg: Any = None, seconds: float = WAIT_SECONDS) -> Any:
    """Poll a JS expression until truthy; page.wait_for_function would need 'unsafe-eval', which the page's CSP bars."""
    deadline = time.monotonic() + seconds
    while True:
        value = page.evaluate(expression, arg)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression} (status: {_status(page)})"
        time.sleep(0.05)


def _status(page: Page) -> str:
    return f"{page.inner_text('#status')!r} / {page.inner_text('#save-status')!r}"


def _drawn(page: Page) -> int:
    return int(page.evaluate("Number(document.body.dataset.simulations || 0)"))


def _wait_redrawn(page: Page, after: int) -> None:
    """Until a simulation newer than the `after`-th is drawn and no request is in flight."""
    _wait_for(
        page,
        "n => Number(document.body.dataset.simulations) > n && document.body.dataset.busy === 'false'",
        after,
    )


def _chart(page: Page, chart: str) -> dict[str, Any]:
    """What plotly drew: each trace's x and y, and the shapes (the cut-off marker first)."""
    figure: dict[str, Any] = page.evaluate(
        """id => {
            const node = document.getElementById(id);
            return {
                traces: node.data.map(t => ({x: Array.from(t.x), y: Array.from(t.y)})),
                shapes: node.layout.shapes.map(s => ({x0: s.x0, y0: s.y0})),
                rendered: node.querySelectorAll('.main-svg .scatterlayer .trace').length,
            };
        }""",
        chart,
    )
    return figure


def _shown(probability: float) -> str:
    """A cut-off as the page (and the command line) show it: 1.7 %, 0.25 %, 0.012 %."""
    percent = 100 * probability
    return f"{percent:.{1 if percent >= 1 else 2 if percent >= 0.1 else 3}f} %"


def _percent(page: Page, selector: str) -> float:
    """A cut-off input's value, typed or shown in percent ("1.7" or "1.7 %"), as a probability."""
    return float(page.input_value(selector).replace("%", "").strip()) / 100


def _open_with_key(session: Session, server: Server, key: str) -> None:
    page = session.page
    page.goto(f"{server.url}/thresholds")
    page.get_by_label("API key").fill(key)
    page.click("#api-key-apply")
    _wait_redrawn(page, 0)


def test_sales_ops_propose_save_and_roll_back_thresholds_in_the_browser(session: Session, server: Server) -> None:
    page = session.page
    before = server.get("/v1/thresholds").json()
    _open_with_key(session, server, ADMIN_KEY)
    assert page.get_attribute("#policy-summary", "data-version") == str(before["version"])
    # Cut-offs read in percent ("1.3"), not as probabilities (0.01332); what is saved untouched is exact (below).
    mql = before["policy"]["stages"]["MQL"]
    assert _percent(page, "#stage-MQL") == pytest.approx(mql, abs=0.0005) and float(page.input_value("#stage-MQL")) > 1
    assert f"MQL ≥ {_shown(mql)}" in page.inner_text("#policy-summary")
    # Leads past the readiness question: routed by lifecycle stage, shown as the policy in force holds them.
    routes = before["policy"]["lifecycle_routes"]
    for stage in ("sql", "requalified", "lost", "won"):
        row = page.locator(f"#lifecycle-table tbody tr[data-stage='{stage}']")
        assert row.locator("td[data-field='queue']").inner_text().strip() == routes[stage]["queue"]
        assert row.locator("td[data-field='priority']").inner_text() == str(routes[stage]["priority"])
    # Nothing touched yet: the service replays the version in force itself, and says so.
    assert "policy" not in session.simulations[-1]
    assert f"Simulated version {before['version']}, in force" in page.inner_text("#status")
    # Which scored leads: auto chose the holdout, with the service's reason in words.
    basis = page.locator("#data-basis")
    assert (basis.get_attribute("data-kind"), basis.get_attribute("data-requested")) == ("holdout", "auto")
    assert "Auto chose the champion's holdout" in basis.inner_text() and "lead(s)" in basis.inner_text()
    volume_before = _chart(page, "chart-volume")
    assert volume_before["rendered"] == 1 and len(volume_before["traces"][0]["x"]) > 10
    assert page.locator("#queue-table tbody tr").count() == 4
    assert page.locator("#matrix-table td[data-grade][data-stage]").count() == 12

    # A cut-off typed in percent reaches the service as a probability.
    drawn = _drawn(page)
    page.get_by_label("MQL from (%)").fill("2.5 %")
    _wait_redrawn(page, drawn)
    assert session.simulations[-1]["policy"]["stages"]["MQL"] == pytest.approx(0.025)
    assert page.get_attribute("#chart-volume", "data-cutoff") == "0.025"
    page.get_by_label("MQL from (%)").fill("two")
    _wait_for(page, "() => document.getElementById('status').dataset.kind === 'error'")
    assert "must be a percentage" in page.inner_text("#status")

    # One sales rep instead of four: the table shows the smaller capacity as soon as the typing settles.
    page.get_by_label("MQL from (%)").fill(f"{100 * mql:.4f}")
    drawn = _drawn(page)
    page.get_by_label("Sales reps").fill("1")
    _wait_redrawn(page, drawn)
    assert page.inner_text("#queue-table tr[data-queue=sales] td[data-field=capacity]") == "25"
    assert _chart(page, "chart-volume")["shapes"][1]["y0"] == 25 + 6 * 60  # the capacity line moved too

    drawn = _drawn(page)
    with page.expect_response("**/v1/thresholds/solve") as solved:
        page.get_by_role("button", name="Propose thresholds").click()
    proposal = solved.value.json()
    _wait_redrawn(page, drawn)
    proposed: dict[str, float] = proposal["policy"]["stages"]
    for stage, value in proposed.items():  # shown in percent, rounded for reading
        assert _percent(page, f"#stage-{stage}") == pytest.approx(value, abs=0.0005)
    assert f"MQL {_shown(mql)} → {_shown(proposed['MQL'])}" in page.inner_text("#propose-note")
    assert proposed["MQL"] != pytest.approx(before["policy"]["stages"]["MQL"], abs=1e-6)
    volume_after = _chart(page, "chart-volume")
    assert volume_after["shapes"][0]["x0"] == proposed["MQL"] != volume_before["shapes"][0]["x0"]
    assert volume_after["traces"] != volume_before["traces"]  # the MQL curve moved with the proposed SQL cut-off
    assert float(page.get_attribute("#chart-sqls", "data-cutoff") or "nan") == proposed["MQL"]
    # One rep working 25 leads a week cannot take what the default cut-offs send to sales; the solver finds cut-offs
    # that fit (asserted in the API tests), and the page shows them within capacity.
    assert proposal["feasible"], proposal["note"]
    load = page.inner_text("#queue-table tr[data-queue=sales] td[data-field=load]")
    assert float(load.split("%")[0]) <= 100
    assert page.locator("#queue-table tr.overloaded").count() == 0

    reason = "one sales rep this week (e2e)"
    page.get_by_label("Reason (required)").fill(reason)
    page.get_by_label("Author (optional)").fill("e2e@leadscore")
    page.get_by_role("button", name="Save thresholds").click()
    new_version = before["version"] + 1
    _wait_for(page, "v => document.getElementById('save-status').dataset.version === String(v)", new_version)
    assert page.get_attribute("#save-status", "data-kind") == "ok"
    _wait_for(page, "v => document.querySelector(`#history-table tr[data-version='${v}']`) !== null", new_version)
    _wait_for(page, "() => document.body.dataset.busy === 'false'")
    assert page.get_attribute("#policy-summary", "data-version") == str(new_version)
    assert page.input_value("#sales-reps") == "1"  # the team as the user set it
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "thresholds-page.png", full_page=True)

    in_force = server.get("/v1/thresholds").json()
    assert (in_force["version"], in_force["reason"], in_force["author"]) == (new_version, reason, "e2e@leadscore")
    assert in_force["policy"]["stages"] == proposed  # exactly the solver's, not the rounded percentages shown
    assert in_force["policy"]["capacities"]["queues"]["sales"]["reps"] == 1
    deadline = time.monotonic() + POLICY_PICKUP_SECONDS
    while True:  # the service re-reads the policy within about a second of a save
        scored = httpx.post(f"{server.url}/v1/score", json=EXAMPLE_REQUEST, headers={"X-API-Key": SCORING_KEY})
        assert scored.status_code == 200, scored.text
        if scored.json()["thresholds_version"] == new_version or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert scored.json()["thresholds_version"] == new_version

    # Rolling back asks why in the page's own dialog: a reason is required, and cancelling changes nothing.
    dialog = page.get_by_role("dialog")
    page.click(f"[data-testid=rollback-{before['version']}]")
    assert dialog.is_visible() and f"Roll back to version {before['version']}" in dialog.inner_text()
    dialog.get_by_role("button", name="Roll back").click()
    assert "a reason is required" in page.inner_text("#rollback-status")
    assert page.get_attribute("#rollback-reason", "aria-invalid") == "true"
    dialog.get_by_role("button", name="Cancel").click()
    assert not dialog.is_visible()
    assert server.get("/v1/thresholds").json()["version"] == new_version
    page.click(f"[data-testid=rollback-{before['version']}]")
    dialog.get_by_label("Why roll back? (required)").fill("the rep is back")
    dialog.get_by_role("button", name="Roll back").click()
    _wait_for(page, "v => document.getElementById('save-status').dataset.version === String(v)", new_version + 1)
    assert not dialog.is_visible()
    rolled = server.get("/v1/thresholds").json()
    assert rolled["version"] == new_version + 1 and "the rep is back" in rolled["reason"]
    assert rolled["policy"]["stages"] == before["policy"]["stages"]
    _wait_for(page, "() => document.body.dataset.busy === 'false'")
    # The old version was tuned for no team in particular; the team on the form is still the one the user set.
    assert page.input_value("#sales-reps") == "1"
    assert page.get_attribute("#policy-summary", "data-version") == str(new_version + 1)

    # The score log now holds the scores sent above: replaying it is a choice, and the page says what it replays.
    drawn = _drawn(page)
    page.get_by_label("Data").select_option("recent")
    _wait_redrawn(page, drawn)
    assert (basis.get_attribute("data-kind"), basis.get_attribute("data-requested")) == ("recent", "recent")
    assert "Recently scored leads" in basis.inner_text() and "Recent scores, as asked" in basis.inner_text()
    assert session.simulations[-1]["data"] == "recent"

    assert all(url.startswith((server.url, "data:")) for url in session.requests), session.requests
    assert not session.errors


def test_a_scoring_key_sees_why_it_may_not_save(session: Session, server: Server) -> None:
    page = session.page
    _open_with_key(session, server, SCORING_KEY)
    version = server.get("/v1/thresholds").json()["version"]
    page.get_by_role("button", name="Save thresholds").click()  # no reason: refused before asking the API
    assert "reason is required" in page.inner_text("#save-status")
    assert page.get_attribute("#save-reason", "aria-invalid") == "true"

    page.get_by_label("Reason (required)").fill("should not be saved")
    page.get_by_role("button", name="Save thresholds").click()
    _wait_for(page, "() => (document.getElementById('save-status').textContent || '').includes('403')")
    assert "admin key" in page.inner_text("#save-status")

    page.get_by_label("B from").fill("95")  # above A: the API names what is wrong
    _wait_for(page, "() => document.getElementById('status').dataset.kind === 'error'")
    assert "grade cut-offs must decrease" in page.inner_text("#status")
    assert server.get("/v1/thresholds").json()["version"] == version
    assert not session.errors


def test_the_api_docs_render_with_no_network_beyond_the_service(browser: Browser, server: Server) -> None:
    """/docs on a closed network: every request to another host is refused, and the operations still render."""
    context = browser.new_context()
    page = context.new_page()
    outside: list[str] = []

    def only_the_service(route: Route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    try:
        page.goto(f"{server.url}/docs")
        page.wait_for_selector("text=Score and route one lead", timeout=WAIT_SECONDS * 1000)
        assert page.locator(".opblock").count() >= 5  # the score, batch, model, thresholds ... operations
        assert outside == []
    finally:
        context.close()
