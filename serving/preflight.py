"""Start-up checks: a registry, store or journal the service cannot use fails the start at once, naming the setting."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from serving.settings import Settings, tracking_uri

if TYPE_CHECKING:
    from sqlalchemy import Engine

# How long the start waits for an MLflow tracking server to answer before it says it cannot reach it.
REGISTRY_PROBE_SECONDS = 5.0
# MLflow retries a failed HTTP call 7 times with a backoff factor of 2 by default: 4 minutes before a start, a
# reload or a registry read fails. The service retries on its own schedule, so these bound each call instead
# (set by `leadscore serve` for itself and its workers unless the environment sets them already).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


class StartupError(RuntimeError):
    """A setting the service cannot start with; the message names the setting and the problem."""


@dataclass(frozen=True, slots=True)
class Registry:
    """Where the MLflow registry is, and which setting said so."""

    uri: str
    source: str  # the environment variable (or default) the URI came from, for messages


def registry_of(settings: Settings) -> Registry:
    """The registry's URI and the setting it comes from."""
    if settings.tracking_uri:
        source = "LEADSCORE_TRACKING_URI"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        source = "MLFLOW_TRACKING_URI"
    else:
        source = "the default registry (set MLFLOW_TRACKING_URI or LEADSCORE_TRACKING_URI to use another)"
    return Registry(tracking_uri(settings), source)


# user:password@ in a URL, wherever it appears in a text.
_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a URL, or a message holding one) with passwords replaced by ***: credentials never reach a log."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def _first_line(err: BaseException) -> str:
    cause = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def check_registry(registry: Registry) -> None:
    """The registry can be read: a SQLite file that exists, a server that answers.

    A mistyped SQLite path must not become a new, empty store. Whether the registry holds the model is the model
    holder's question.
    """
    uri, source = registry.uri, registry.source
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        path = Path(unquote(uri.removeprefix("sqlite:///"))) if uri.startswith("sqlite:///") else None
        if path is not None and not path.is_file():
            raise StartupError(
                f"there is no MLflow store at {path} ({source}): train and promote a model there first "
                "(leadscore quickstart, or leadscore train && leadscore promote), or point the setting at the "
                "store that holds it"
            )
        return
    if scheme in ("http", "https"):
        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=REGISTRY_PROBE_SECONDS)
        except httpx.HTTPError as err:
            raise StartupError(f"cannot reach the MLflow registry at {redact(uri)} ({source}): {err}") from None
        return
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_dir():
            raise StartupError(f"there is no MLflow store at {path} ({source})")


def open_store(url: str, *, durable_fsync: bool = False) -> Engine:
    """The service store's engine, its schema upgraded; StartupError naming LEADSCORE_STORE_URL if it cannot be used.

    A store migrated by a newer leadscore is refused.
    """
    shown = redact(url)
    try:
        make_url(url)
    except ArgumentError as err:
        raise StartupError(f"LEADSCORE_STORE_URL is not a database URL ({shown}): {err}") from None
    # Here, not at import: the registry is checked first, before the model code the store module brings along.
    from serving.store import make_engine  # noqa: PLC0415
    from timeline.migrate import StoreTooNewError  # noqa: PLC0415

    try:
        return make_engine(url, durable_fsync=durable_fsync)
    except StoreTooNewError as err:
        # The service refuses a store a newer leadscore migrated: its code may not read what that schema holds.
        raise StartupError(f"cannot use the service store {shown} (LEADSCORE_STORE_URL): {err}") from None
    except ImportError as err:
        raise StartupError(
            f"the service store {shown} (LEADSCORE_STORE_URL) needs a database driver that is not installed: {err}"
        ) from None
    except (SQLAlchemyError, OSError) as err:
        raise StartupError(f"cannot open the service store {shown} (LEADSCORE_STORE_URL): {_first_line(err)}") from None


def check_journal(journal_dir: str) -> Path | None:
    """The journal folder, created if needed and writable; None when journaling is off (LEADSCORE_JOURNAL_DIR=)."""
    if not journal_dir:
        return None
    path = Path(journal_dir)
    probe = path / f".probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        raise StartupError(
            f"cannot write the score log's journal folder {path} (LEADSCORE_JOURNAL_DIR): {err.strerror or err}"
        ) from None
    return path


def bound_mlflow_retries() -> None:
    """Keep MLflow's HTTP retries short (see MLFLOW_HTTP_DEFAULTS), unless the environment sets them."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
