"""The `leadscore` command line: training commands plus `serve`, composed here so neither imports the other."""

from __future__ import annotations

from serving.batch_cli import score_batch
from serving.cli import serve
from serving.receiver import app as webhooks_app
from serving.score_log_cli import app as score_log_app
from serving.store_cli import app as store_app
from serving.thresholds_cli import app as thresholds_app
from training.cli import app

app.command()(serve)
app.command("score-batch")(score_batch)
app.add_typer(thresholds_app, name="thresholds")
app.add_typer(score_log_app, name="score-log")
app.add_typer(store_app, name="store")
app.add_typer(webhooks_app, name="webhooks")

__all__ = ["app"]
