"""The sales-ops page (thresholds, webhooks), the interactive API docs, and their static assets, all served here.

No data in them, so no API key (the pages' calls need one); no CDN either, so they work on a closed network.
"""

from __future__ import annotations

import functools
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

router = APIRouter(include_in_schema=False)

STATIC_PACKAGE = "serving"
STATIC_DIR = "static"
PAGE_FILE = "thresholds.html"
# The page's own files: revalidated on every load (cheap with the ETag), so a deploy reaches every browser at once.
PAGE_ASSETS: dict[str, str] = {
    "thresholds.js": "text/javascript; charset=utf-8",
    "webhooks.js": "text/javascript; charset=utf-8",
    "thresholds.css": "text/css; charset=utf-8",
}
REVALIDATE = "no-cache"
# plotly.js is 4.8 MB and changes only with the plotly package: the page asks for it with the package version in
# the query string, so browsers may keep it for a year and a new version is a new URL.
LONG_CACHE = "public, max-age=31536000, immutable"
PLOTLY_VERSION_MARK = "__PLOTLY_VERSION__"
# What the page may load and talk to: its own origin only (plotly sets inline styles, hence 'unsafe-inline' there).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


# Swagger UI, bundled in the fastapi-swagger package (FastAPI's own /docs loads it from a CDN).
SWAGGER_PACKAGE = "fastapi_swagger"
SWAGGER_ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def _static(name: str) -> Traversable:
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR, name)


@functools.cache
def _page_html() -> str:
    """The page with the plotly version filled in (read once, on the first request)."""
    return _static(PAGE_FILE).read_text(encoding="utf-8").replace(PLOTLY_VERSION_MARK, metadata.version("plotly"))


@functools.cache
def _plotly_js() -> Path:
    """The plotly.min.js bundled in the plotly package, so the page works with no network beyond this service."""
    bundled = resources.files("plotly").joinpath("package_data", "plotly.min.js")
    if not isinstance(bundled, Path) or not bundled.is_file():
        raise FileNotFoundError(f"plotly.min.js is not a file in the installed plotly package (looked at {bundled})")
    return bundled


def _file(resource: Traversable, media_type: str, cache_control: str) -> FileResponse:
    if not isinstance(resource, Path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "static files must be installed as files, not in an archive")
    return FileResponse(resource, media_type=media_type, headers={"Cache-Control": cache_control})


@router.get("/thresholds", response_class=HTMLResponse)
async def thresholds_page() -> HTMLResponse:
    """The page sales ops tune routing thresholds on."""
    return HTMLResponse(
        _page_html(),
        headers={
            "Cache-Control": REVALIDATE,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/static/plotly.min.js")
async def plotly_js() -> Response:
    """The charting library, from the installed plotly package."""
    return FileResponse(
        _plotly_js(), media_type="text/javascript; charset=utf-8", headers={"Cache-Control": LONG_CACHE}
    )


@router.get("/static/{name}")
async def page_asset(name: str) -> Response:
    """The page's scripts and style sheet (only those: nothing else in the package is served)."""
    media_type = PAGE_ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
    return _file(_static(name), media_type, REVALIDATE)


@router.get("/docs")
async def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI on the service's OpenAPI document, with every asset from the service itself."""
    version = metadata.version("fastapi-swagger")  # in the URL: a new bundle is a new URL, so it can be kept a year
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"/static/swagger/swagger-ui-bundle.js?v={version}",
        swagger_css_url=f"/static/swagger/swagger-ui.css?v={version}",
        swagger_favicon_url=f"/static/swagger/favicon-32x32.png?v={version}",
        swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
    )


@router.get("/static/swagger/{name}")
async def swagger_asset(name: str) -> Response:
    """Swagger UI's script, style sheet and icon (only those)."""
    media_type = SWAGGER_ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
    return _file(resources.files(SWAGGER_PACKAGE).joinpath("resources", name), media_type, LONG_CACHE)
