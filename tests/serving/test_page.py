"""The thresholds page and its assets: served without a key, with the right types and cache headers, all local."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import metadata

from fastapi.testclient import TestClient

from serving.routers.page import LONG_CACHE
from timeline.outbox import EVENT_TYPES


class _Controls(HTMLParser):
    """Ids of the form controls, of the labels' targets and of every element, and the URLs the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[str] = []
        self.labelled: set[str] = set()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if tag in ("input", "select", "textarea"):
            self.controls.append(values.get("id", f"<{tag} without id>"))
        if tag == "label" and values.get("for"):
            self.labelled.add(values["for"])
        if tag in ("script", "link", "img") and (values.get("src") or values.get("href")):
            self.urls.append(values.get("src") or values.get("href") or "")


def _page(client: TestClient) -> _Controls:
    parsed = _Controls()
    parsed.feed(client.get("/thresholds").text)
    return parsed


def test_the_page_is_served_without_a_key(client: TestClient) -> None:
    response = client.get("/thresholds")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert f"/static/plotly.min.js?v={metadata.version('plotly')}" in response.text
    assert "__PLOTLY_VERSION__" not in response.text


def test_the_script_and_style_sheet_are_served_without_a_key(client: TestClient) -> None:
    script = client.get("/static/thresholds.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache" and "/v1/thresholds/simulate" in script.text
    webhooks = client.get("/static/webhooks.js")
    assert webhooks.status_code == 200 and webhooks.headers["content-type"].startswith("text/javascript")
    assert webhooks.headers["cache-control"] == "no-cache" and "/v1/webhooks" in webhooks.text
    style = client.get("/static/thresholds.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


def test_the_plotly_bundled_with_the_plotly_package_is_served_for_long(client: TestClient) -> None:
    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == LONG_CACHE
    assert response.content.lstrip().startswith(b"/**\n* plotly.js v") and len(response.content) > 1_000_000


def test_nothing_else_is_served_from_static(client: TestClient) -> None:
    for path in ("/static/thresholds.html", "/static/page.py", "/static/..%2Fapp.py", "/static/nope.js"):
        assert client.get(path).status_code == 404, path


def test_the_page_and_assets_stay_out_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/thresholds" or p.startswith("/static")]


def test_every_control_has_a_label_and_every_asset_is_local(client: TestClient) -> None:
    page = _page(client)
    assert page.controls and not [c for c in page.controls if c not in page.labelled]
    assert page.urls and all(url.startswith(("/static/", "data:")) for url in page.urls)
    for asset in ("/static/thresholds.js", "/static/webhooks.js", "/static/thresholds.css"):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", client.get(asset).text), asset


def test_every_element_the_scripts_look_up_is_on_the_page(client: TestClient) -> None:
    page = _page(client)
    for name in ("thresholds.js", "webhooks.js"):
        script = client.get(f"/static/{name}").text
        looked_up = set(re.findall(r"\$\(\"([\w-]+)\"\)", script))
        if name == "thresholds.js":  # built as $(`grade-${g}`)
            looked_up |= {f"grade-{g}" for g in "ABC"} | {f"stage-{s}" for s in ("MQL", "SQL")}
        assert looked_up and not looked_up - page.ids, name


def test_the_page_asks_in_its_own_dialogs_not_the_browsers(client: TestClient) -> None:
    # A browser prompt cannot be styled, validated or tested as part of the page: a rollback's reason and a
    # webhook's deletion are asked in dialogs of the page.
    for name in ("thresholds.js", "webhooks.js"):
        script = client.get(f"/static/{name}").text
        assert not re.search(r"\b(window\.)?(prompt|alert|confirm)\(", script), name
    page = _page(client)
    assert {"rollback-dialog", "rollback-reason", "rollback-confirm", "rollback-cancel"} <= page.ids
    assert {"webhook-delete-dialog", "webhook-delete-confirm", "webhook-delete-cancel"} <= page.ids


def test_the_webhook_form_offers_every_event_type_the_api_takes(client: TestClient) -> None:
    offered = set(re.findall(r'name="events" type="checkbox" value="([\w.]+)"', client.get("/thresholds").text))
    assert offered == set(EVENT_TYPES)


def test_the_api_docs_load_every_asset_from_the_service(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # no CDN, no other host
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
    assert "SwaggerUIBundle" in client.get(next(s for s in sources if s.endswith(".js") or ".js?" in s)).text
    assert client.get("/static/swagger/../../serving/app.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: /docs is the one page
