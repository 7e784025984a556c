"""`leadscore store`: the service store's schema revision, and its upgrade for operators who migrate explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The service store's schema: which revision it is at, and its upgrade to the newest this leadscore knows "
    "(the service also upgrades its store as it starts; migrating first keeps a long migration out of the start).",
)
console = Console(highlight=False, soft_wrap=True)  # lines whole, for scripts that read them
UrlOption = Annotated[
    str | None, typer.Option("--url", help="Service store URL; default: LEADSCORE_STORE_URL or its default.")
]
EXIT_STORE = 1  # the store cannot be read or upgraded


def _store_url(url: str | None) -> str:
    from serving.settings import Settings

    return url or Settings().store_url


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(EXIT_STORE)


def _revision(url: str, *, missing_ok: bool = False) -> tuple[str | None, list[str]]:
    """The store's revision and its tables, read without changing anything (a missing SQLite file: an error)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from serving.preflight import redact
    from timeline.migrate import current_revision

    try:
        parsed = make_url(url)
        file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if file not in (None, "", ":memory:") and not Path(str(file)).is_file():  # reading leaves no empty file
            if missing_ok:
                return None, []
            raise _fail(f"there is no service store at {file}")
        engine = create_engine(url)
        try:
            return current_revision(engine), inspect(engine).get_table_names()
        finally:
            engine.dispose()
    except (SQLAlchemyError, ImportError) as err:
        first = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise _fail(
            f"cannot read the service store {redact(url)}: {first[0] if first else type(err).__name__}"
        ) from None


@app.command()
def current(url: UrlOption = None) -> None:
    """Print the store's schema revision and how it stands against this leadscore's newest."""
    from serving.preflight import redact
    from timeline.migrate import PRE_MIGRATION_TABLES, head_revision, is_known

    url = _store_url(url)
    revision, tables = _revision(url)
    head = head_revision()
    console.print(f"service store {redact(url)}")
    if revision == head:
        console.print(f"revision {revision}: the newest this leadscore knows")
    elif revision is None and any(table in tables for table in PRE_MIGRATION_TABLES):
        console.print(
            f"no revision: made before migrations; `leadscore store upgrade` adopts it (rows and all) at {head}"
        )
    elif revision is None:
        console.print(f"no revision: an empty store; `leadscore store upgrade` creates its tables at {head}")
    elif is_known(revision):
        console.print(
            f"revision {revision}: older than this leadscore's newest, {head}; `leadscore store upgrade` upgrades it"
        )
    else:
        console.print(
            f"revision {revision}: newer than this leadscore knows (its newest is {head}); upgrade leadscore to use it"
        )


@app.command()
def upgrade(url: UrlOption = None) -> None:
    """Upgrade the store's schema to the newest revision this leadscore knows, keeping its rows.

    Safe beside running services and other upgrades: one process migrates at a time. A store a newer leadscore
    migrated is left as it is (exit 1).
    """
    from serving.preflight import StartupError, open_store, redact
    from timeline.migrate import current_revision

    url = _store_url(url)
    before, _ = _revision(url, missing_ok=True)
    try:
        engine = open_store(url)
    except StartupError as err:
        raise _fail(str(err)) from None
    try:
        after = current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        console.print(f"service store {redact(url)}: already at {after}")
    else:
        console.print(f"service store {redact(url)}: upgraded from {before or 'no revision'} to {after}")
