"""The `leadscore` command line: training commands plus `serve`, composed here so neither imports the other."""

from __future__ import annotations

from serving.cli import serve
from training.cli import app

app.command(help="Serve models:/lead-scorer@champion over HTTP (FastAPI + uvicorn).")(serve)

__all__ = ["app"]
