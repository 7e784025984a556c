"""`leadscore serve`: run the score service under uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from serving.metrics import MULTIPROCESS_DIR
from serving.settings import Settings

log = logging.getLogger(__name__)
_DEFAULTS = Settings.model_construct()


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (API keys required beyond loopback).")] = (
        _DEFAULTS.host
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = _DEFAULTS.port,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core is a good start).")] = 1,
) -> None:
    """Serve models:/lead-scorer@champion on HTTP; settings come from LEADSCORE_* environment variables."""
    # Each worker builds its own app from the environment, so the command line reaches them through it.
    os.environ["LEADSCORE_HOST"] = host
    os.environ["LEADSCORE_PORT"] = str(port)
    log.info("scoring on http://%s:%d (docs at /docs)", host, port)
    own_folder = None
    if workers > 1:
        # A scrape of /metrics reaches one worker: with a shared folder it answers for all of them.
        given = os.environ.get(MULTIPROCESS_DIR)
        if given:
            for stale in Path(given).glob("*.db"):  # a previous run's counts (prometheus_client: wipe before start)
                stale.unlink()
        else:
            own_folder = tempfile.mkdtemp(prefix="leadscore-metrics-")
            os.environ[MULTIPROCESS_DIR] = own_folder
    try:
        _run(host, port, workers)
    finally:
        if own_folder is not None:
            shutil.rmtree(own_folder, ignore_errors=True)


def _run(host: str, port: int, workers: int) -> None:
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,  # the score log and /metrics keep what matters; an access line per score costs latency
    )
