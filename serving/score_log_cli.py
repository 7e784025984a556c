"""`leadscore score-log`: prune the score log by age (archiving to Parquet first) and list the archives."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The score log's retention: archive records past an age to Parquet, then delete them (the service does "
    "this hourly when LEADSCORE_SCORE_LOG_RETENTION_DAYS is set); list the archives.",
)
if TYPE_CHECKING:
    from sqlalchemy import Engine

console = Console()
StoreOption = Annotated[
    str | None, typer.Option(help="Service store URL; default: LEADSCORE_STORE_URL or its default.")
]


def _engine(store_url: str | None) -> Engine:
    from serving.preflight import StartupError, open_store
    from serving.settings import Settings

    try:
        return open_store(store_url or Settings().store_url)
    except StartupError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def prune(
    older_than_days: Annotated[int, typer.Option(min=1, help="Archive and delete records scored this long ago.")],
    archive_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for the Parquet archive; default: LEADSCORE_SCORE_LOG_ARCHIVE_DIR (empty: none)."),
    ] = None,
    no_archive: Annotated[bool, typer.Option("--no-archive", help="Delete without archiving.")] = False,
    store_url: StoreOption = None,
) -> None:
    """Archive the records older than --older-than-days to Parquet, then delete them from the score log."""
    import datetime as dt

    from serving.retention import prune_score_log
    from serving.settings import Settings

    engine = _engine(store_url)
    setting = Settings().score_log_archive_dir  # empty: no archive, as for the service's own retention
    folder = None if no_archive else archive_dir or (Path(setting) if setting else None)
    older_than = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
    try:
        result = prune_score_log(engine, older_than=older_than, archive_dir=folder)
    finally:
        engine.dispose()
    if result.skipped:
        console.print("another process is pruning this archive folder now; nothing done", highlight=False)
        return
    where = f" to {len(result.files)} file(s) in {folder}" if folder else " (no archive)"
    console.print(f"deleted {result.deleted:,} records scored before {older_than:%Y-%m-%d %H:%M} UTC, archived "
                  f"{result.archived:,}{where}", highlight=False)  # fmt: skip


@app.command()
def archives(store_url: StoreOption = None) -> None:
    """The archive files written so far: which records each holds."""
    from sqlalchemy import select

    from serving.store import score_log_archives

    engine = _engine(store_url)
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(select(score_log_archives).order_by(score_log_archives.c.id)))
    finally:
        engine.dispose()
    table = Table(title="score log archives")
    for column in ("where", "file", "records", "ids", "scored from", "to", "archived"):
        table.add_column(column, no_wrap=column not in ("where", "file"), overflow="fold")
    for row in rows:
        table.add_row(
            f"{row.host}:{row.folder}", row.file, f"{row.records:,}", f"{row.first_id}-{row.last_id}",
            f"{row.oldest:%Y-%m-%d}", f"{row.newest:%Y-%m-%d}", f"{row.archived_at:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    console.print(table)
