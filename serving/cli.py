"""`leadscore serve`: run the score service under uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.defaults import DEFAULT_HOST, DEFAULT_PORT

# The service's modules (FastAPI, MLflow, the model) are imported when `serve` runs, not when the command line
# starts: uvicorn starts each worker by importing the console script again, and must hear from it within seconds.
if TYPE_CHECKING:
    from serving.settings import Settings
    from serving.state import ServiceStart

log = logging.getLogger(__name__)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (API keys required beyond loopback).")] = (
        DEFAULT_HOST
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core is a good start).")] = 1,
) -> None:
    """Serve models:/lead-scorer@champion on HTTP; settings come from LEADSCORE_* environment variables."""
    from serving.metrics import MULTIPROCESS_DIR
    from serving.model import ModelNotAvailableError
    from serving.settings import Settings
    from serving.state import SERVICE_START

    # Each worker builds its own app from the environment, so the command line reaches them through it.
    os.environ["LEADSCORE_HOST"] = host
    os.environ["LEADSCORE_PORT"] = str(port)
    try:
        start = service_start(Settings())
    except ModelNotAvailableError as err:
        log.error("%s", err)
        raise typer.Exit(code=1) from err
    os.environ[SERVICE_START] = start.to_environment()
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


def service_start(settings: Settings) -> ServiceStart:
    """What the workers start with: the version the alias points at now, and the newest reload recorded so far."""
    from serving.model import registered_run
    from serving.settings import tracking_uri
    from serving.state import ServiceStart
    from serving.store import ReloadStore, make_engine

    version, _ = registered_run(tracking_uri(settings), settings.model_name, settings.model_alias)
    engine = make_engine(settings.store_url)
    try:
        latest = ReloadStore(engine).latest(settings.model_name)
    finally:
        engine.dispose()
    return ServiceStart(version, latest.id if latest else 0)


def _run(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,  # the score log and /metrics keep what matters; an access line per score costs latency
    )
