"""The documentation site builds strictly, its generated references hold what the code declares, and it is offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import typer

from features.spec import ACTIVITIES, LEADS
from leadscore.cli import app as cli_app
from serving.app import create_app
from serving.settings import Settings

ROOT = Path(__file__).parents[2]
# A resource the browser would fetch from elsewhere: a script, a stylesheet, an image, a font.
REMOTE_RESOURCE = re.compile(r"""<(?:script|img|iframe)[^>]*\ssrc=["']https?://|<link[^>]*\shref=["']https?://[^>]*>""")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict` of the repository's site into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return out


def _text(site: Path, page: str) -> str:
    """A built page's text, tags removed."""
    return unescape(re.sub(r"<[^>]+>", "", (site / page).read_text()))


def test_the_api_reference_holds_every_route_and_schema_of_the_openapi_document(site: Path) -> None:
    document = create_app(Settings.model_construct()).openapi()
    text = _text(site, "reference/api.html")
    for path, item in document["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in text
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name.lower()}"' in (site / "reference/api.html").read_text()
    assert json.loads((site / "reference/openapi.json").read_text()) == json.loads(json.dumps(document))


def test_the_settings_reference_holds_every_setting(site: Path) -> None:
    text = _text(site, "reference/settings.html")
    for name, info in Settings.model_fields.items():
        assert f"LEADSCORE_{name.upper()}" in text
        if info.description:
            assert info.description in text


def test_the_cli_reference_holds_every_command(site: Path) -> None:
    text = _text(site, "reference/cli.html")
    root = typer.main.get_command(cli_app)
    ctx = typer.Context(root, info_name="leadscore")
    names = root.list_commands(ctx)
    assert names
    for name in names:
        assert f"leadscore {name}" in text
    assert "leadscore thresholds solve" in text and "--sales-reps" in text


def test_the_contract_reference_holds_every_column(site: Path) -> None:
    text = _text(site, "reference/contract.html")
    for table in (LEADS, ACTIVITIES):
        for column in table.columns:
            assert column.name in text and column.description in text
    assert "carrier_pigeon" in text  # the hand-written part around the generated tables


def test_the_site_fetches_nothing_from_elsewhere(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 14
    for page in pages:
        html = page.read_text()
        assert not REMOTE_RESOURCE.search(html), page
        assert "fonts.googleapis" not in html and 'class="mermaid"' not in html, page
