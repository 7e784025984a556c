"""The `leadscore` command line: training commands plus `serve`, composed here so neither imports the other."""

from __future__ import annotations

from serving.cli import serve
from serving.thresholds_cli import app as thresholds_app
from training.cli import app

app.command(help="Serve models:/lead-scorer@champion over HTTP (FastAPI + uvicorn).")(serve)
app.add_typer(thresholds_app, name="thresholds")

__all__ = ["app"]
