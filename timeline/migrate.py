"""The store's schema, by Alembic revision: upgrade a store to the newest one, safely from many processes at once.

The revisions live in timeline/migrations/versions, shipped inside the package. A schema change is a new revision,
drafted by autogenerate and reviewed by hand:

    from alembic import command
    from timeline.migrate import alembic_config
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", "sqlite:////tmp/draft.db")  # a store at head
    command.revision(config, message="what it adds", autogenerate=True, rev_id="0003_what_it_adds")

tests/timeline/test_migrations.py then checks that the upgraded store matches timeline.schema on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

# Alembic is imported where it is used, after _quiet_alembic: importing it announces each of its autogenerate plugins
# at INFO, in every worker's start. Reading a store's revision needs none of it.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# The tables of a store made before it had migrations: found without an alembic_version table, they are adopted.
PRE_MIGRATION_TABLES = ("score_log", "score_log_archives", "threshold_versions", "model_reloads")
VERSION_TABLE = "alembic_version"  # Alembic's record of the store's revision (its default name)
# PostgreSQL: the advisory lock every leadscore process takes to migrate a database ("leadscor" in ASCII).
ADVISORY_LOCK_KEY = 0x6C65_6164_7363_6F72
# SQLite: how long a process waits for another one's migration (each attempt also waits the busy timeout).
SQLITE_MIGRATION_WAIT_SECONDS = 300.0


class StoreTooNewError(RuntimeError):
    """The store is at a revision this leadscore does not know: a newer leadscore migrated it."""


def _quiet_alembic() -> None:
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's migrations, built here (there is no alembic.ini); on `connection`."""
    _quiet_alembic()
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection  # env.py migrates on it, inside the caller's transaction
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    _quiet_alembic()
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this leadscore knows."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def is_known(revision: str) -> bool:
    """Whether `revision` is one of this leadscore's (else a newer leadscore made it)."""
    from alembic.util import CommandError

    try:
        _scripts().get_revision(revision)
    except CommandError:
        return False
    return True


def current_revision(engine: Engine) -> str | None:
    """The store's revision; None for an empty store or one made before migrations (see PRE_MIGRATION_TABLES)."""
    with engine.connect() as conn:
        heads = _heads(conn)
    if len(heads) > 1:
        raise RuntimeError(f"the service store is at several revisions at once: {', '.join(heads)}")
    return heads[0] if heads else None


def _heads(conn: Connection) -> tuple[str, ...]:
    # Read here rather than through a MigrationContext, which logs its set-up each time: every start reads this.
    if not inspect(conn).has_table(VERSION_TABLE):
        return ()
    return tuple(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def upgrade(engine: Engine) -> None:
    """Bring the store's schema to the newest revision, keeping its rows.

    Safe when several workers or replicas start together on one store: one migrates while the others wait for it
    (PostgreSQL: an advisory lock; SQLite: the database's write lock), then find the store at head. A store made
    before migrations is adopted. Raises StoreTooNewError on a store a newer leadscore migrated, and changes nothing.
    """
    with engine.connect() as conn:
        if _heads(conn) == (head_revision(),):
            return  # the usual start: nothing to do, and no lock to wait for
    from alembic import command

    with engine.connect() as conn, _migration_lock(conn):
        _check_known(conn)
        if _made_before_migrations(conn):
            log.info("the service store was made before migrations: adopting its tables at %s", head_revision())
        command.upgrade(alembic_config(conn), "head")


def downgrade(engine: Engine, revision: str) -> None:
    """Take the store's schema back to `revision` ("base": no table at all). Rows of dropped tables are lost."""
    from alembic import command

    with engine.connect() as conn, _migration_lock(conn):
        _check_known(conn)
        command.downgrade(alembic_config(conn), revision)


def _check_known(conn: Connection) -> None:
    for found in _heads(conn):
        if not is_known(found):
            raise StoreTooNewError(
                f"the service store is at revision {found}, which this leadscore does not know (the newest it knows "
                f"is {head_revision()}): a newer leadscore migrated it; upgrade leadscore or use another store"
            )


def _made_before_migrations(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    return VERSION_TABLE not in tables and any(table in tables for table in PRE_MIGRATION_TABLES)


@contextlib.contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """One transaction on `conn` that no other process migrates beside; committed if the block succeeds."""
    raw = conn.connection.driver_connection
    if conn.dialect.name == "sqlite" and isinstance(raw, sqlite3.Connection):
        with _sqlite_write_lock(conn, raw):
            yield
        return
    if conn.dialect.name == "postgresql":
        # Held until the transaction ends: the migration commits, then the next process finds the store at head.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    yield
    conn.commit()


@contextlib.contextmanager
def _sqlite_write_lock(conn: Connection, raw: sqlite3.Connection) -> Iterator[None]:
    # The driver begins transactions lazily, at the first write, and this one must take the write lock before it
    # reads the store's revision: the driver is told to leave transactions alone, and BEGIN EXCLUSIVE takes it.
    # (Setting isolation_level to None commits an open transaction; none is open on a fresh checkout.)
    saved = raw.isolation_level
    raw.isolation_level = None
    try:
        deadline = time.monotonic() + SQLITE_MIGRATION_WAIT_SECONDS
        while True:
            try:
                conn.exec_driver_sql("BEGIN EXCLUSIVE")
                break
            except OperationalError as err:
                conn.rollback()
                if "locked" not in str(err.orig) or time.monotonic() > deadline:
                    raise
                log.info("waiting for another process's migration of the service store")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        raw.isolation_level = saved
