"""Engines on the service store: SQLite tuned for a busy single file, any other SQLAlchemy URL as it is."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from timeline.migrate import upgrade

# How long a statement waits for another connection's lock on a SQLite store before it fails ("database is locked").
SQLITE_BUSY_SECONDS = 10.0


def _sqlite_pragmas(durable_fsync: bool, busy_seconds: float) -> Any:
    def configure(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        # First: processes opening a new store together wait for each other's WAL switch instead of failing at once.
        cursor.execute(f"PRAGMA busy_timeout={round(busy_seconds * 1000)}")
        # Score-log rows are ~5 kB: 16 kB pages keep each in one page instead of a chain of overflow pages, which
        # halves the system time of every insert. Only a new database takes it (before WAL, which fixes it).
        cursor.execute("PRAGMA page_size=16384")
        # WAL: readers never block the writer. synchronous=NORMAL: a committed transaction survives a killed
        # process (it is in the WAL file); FULL also survives power loss, at an fsync per commit.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable_fsync else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return configure


def make_engine(url: str, *, durable_fsync: bool = False, busy_seconds: float = SQLITE_BUSY_SECONDS) -> Engine:
    """An engine for `url` with the store's schema upgraded to the newest revision; SQLite gets WAL and a busy timeout.

    Raises timeline.migrate.StoreTooNewError on a store a newer leadscore migrated.
    """
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(durable_fsync, busy_seconds))
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def stored_time(value: dt.datetime) -> dt.datetime:
    """A stored time as written: in UTC (SQLite keeps no time zone and returns naive times)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
