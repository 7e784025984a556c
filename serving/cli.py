"""`leadscore serve`: check what the service needs, then run it under uvicorn."""

from __future__ import annotations

import copy
import logging
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serving.defaults import DEFAULT_HOST, DEFAULT_PORT

# The service's modules (FastAPI, MLflow, the model) are imported when `serve` runs, not when the command line
# starts: uvicorn starts each worker by importing the console script again, and must hear from it within seconds.
if TYPE_CHECKING:
    from serving.launch import ServiceStart
    from serving.settings import Settings

log = logging.getLogger(__name__)
EXIT_SETTINGS = 2  # a setting has a value the service cannot take
EXIT_START = 1  # the registry, the model, the store or the journal cannot be used
# Beside its connections a worker holds files and database connections: this many descriptors are kept for them.
SPARE_FILES = 64


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (API keys required beyond loopback).")] = (
        DEFAULT_HOST
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core is a good start).")] = 1,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="Registered model to serve (e.g. crm-lead-scorer); default $LEADSCORE_MODEL_NAME, else lead-scorer."
        ),
    ] = None,
) -> None:
    """Serve models:/lead-scorer@champion (or --model-name) on HTTP; settings come from LEADSCORE_* variables.

    Before any worker starts, the registry, the champion, the service store and the journal folder are checked:
    a problem ends the command at once (exit 1) with a message naming the setting.
    """
    from pydantic import ValidationError

    from serving.preflight import StartupError, bound_mlflow_retries, check_registry, registry_of
    from serving.settings import Settings

    # Each worker builds its own app from the environment, so the command line reaches them through it.
    os.environ["LEADSCORE_HOST"] = host
    os.environ["LEADSCORE_PORT"] = str(port)
    if model_name is not None:
        os.environ["LEADSCORE_MODEL_NAME"] = model_name
    bound_mlflow_retries()
    try:
        settings = Settings()
    except ValidationError as err:
        for problem in err.errors():
            name = "LEADSCORE_" + "_".join(str(part) for part in problem["loc"]).upper()
            log.error("%s: %s (got %r)", name, problem["msg"], problem.get("input"))
        raise typer.Exit(EXIT_SETTINGS) from None
    try:
        check_registry(registry_of(settings))  # here first: the checks take seconds to import what they use
        # One worker runs in this process, which imports MLflow and the model code anyway: checking here saves a
        # child that imports them too (half the start-up). Several workers are only supervised from here.
        start = _service_start_from_environment() if workers == 1 else _checked_in_a_child()
    except StartupError as err:
        log.error("%s", err)
        raise typer.Exit(EXIT_START) from None
    from serving.launch import MULTIPROCESS_DIR, SERVICE_START

    os.environ[SERVICE_START] = start.to_environment()
    connections = _allow_connections(settings.max_connections)
    log.info("scoring on http://%s:%d (docs at /docs), %d worker(s) of up to %d connections each", host, port,
             workers, connections)  # fmt: skip
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
        started = _run(host, port, workers, settings, connections)
    finally:
        if own_folder is not None:
            shutil.rmtree(own_folder, ignore_errors=True)
    if not started:
        log.error("the service did not start (see the errors above)")
        raise typer.Exit(EXIT_START)


def _checked_in_a_child() -> ServiceStart:
    """`service_start` in a process of its own, which takes its memory with it when it ends.

    The checks load MLflow and the model code (~400 MB); this process only supervises the workers from then on, so
    it need not hold them for the service's lifetime.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_service_start_from_environment).result()


def _service_start_from_environment() -> ServiceStart:
    """`service_start` of the settings in the environment, its failures as StartupError (they cross processes)."""
    from serving.model import ModelNotAvailableError
    from serving.preflight import StartupError
    from serving.settings import Settings

    try:
        return service_start(Settings())
    except ModelNotAvailableError as err:
        raise StartupError(str(err)) from None


def service_start(settings: Settings) -> ServiceStart:
    """Check the registry, the champion, the store and the journal; what the workers start with.

    That is the version the alias points at now, and the newest reload recorded so far.
    """
    from serving.launch import ServiceStart
    from serving.model import registered_run
    from serving.preflight import check_journal, check_registry, open_store, registry_of
    from serving.store import ReloadStore

    registry = registry_of(settings)
    check_registry(registry)
    version, _ = registered_run(registry.uri, settings.model_name, settings.model_alias)
    check_journal(settings.journal_dir)
    engine = open_store(settings.store_url, durable_fsync=settings.store_durable_fsync)
    try:
        latest = ReloadStore(engine).latest(settings.model_name)
    finally:
        engine.dispose()
    return ServiceStart(version, latest.id if latest else 0)


def _allow_connections(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the workers) to fit `wanted` connections; what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    fits = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - SPARE_FILES)
    if fits < wanted:
        log.warning("the open-file limit (%d) allows %d connections per worker, not LEADSCORE_MAX_CONNECTIONS=%d",
                    soft, fits, wanted)  # fmt: skip
    return max(fits, 1)


# The service's own records (a reload, a saved policy, a retention run) in every worker, one line each: uvicorn sets
# up logging in each worker it starts, from this, and by default only for its own loggers.
SERVICE_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def _log_config(uvicorn_config: dict[str, Any]) -> dict[str, Any]:
    """Uvicorn's logging set-up plus a root handler for everything else (ours, MLflow's, SQLAlchemy's warnings)."""
    config = copy.deepcopy(uvicorn_config)
    config["formatters"]["service"] = {"format": SERVICE_LOG_FORMAT}
    config["handlers"]["service"] = {"class": "logging.StreamHandler", "formatter": "service",
                                     "stream": "ext://sys.stderr"}  # fmt: skip
    config["root"] = {"handlers": ["service"], "level": "INFO"}
    return config


def _run(host: str, port: int, workers: int, settings: Settings, connections: int) -> bool:
    """Run uvicorn until it stops; whether the service started (uvicorn itself exits 0 when workers fail to)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from serving.connections import IMPORT_STRING

    config = uvicorn.Config(
        "serving.app:create_app",
        log_config=_log_config(uvicorn.config.LOGGING_CONFIG),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,  # the score log and /metrics keep what matters; an access line per score costs latency
        http=IMPORT_STRING,  # deadlines for idle and slow connections (serving.connections)
        timeout_keep_alive=settings.timeout_keep_alive,
        limit_concurrency=connections,
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return server.started
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    # A worker that failed to start stops uvicorn's supervisor (it would fail the same way again).
    return not any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
