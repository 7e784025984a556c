"""Alembic's environment for the service store: migrations run on the connection timeline.migrate hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from timeline.schema import metadata


def _migrate(connection: Connection) -> None:
    # SQLite alters a table by copying it (batch mode); elsewhere ALTER TABLE runs as it is.
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    """Run the migrations on the connection timeline.migrate passed (it holds the migration lock), else on the URL."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    # Without a connection: the `alembic` command run by hand with sqlalchemy.url set, e.g. to autogenerate a revision.
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run the store's migrations through timeline.migrate (leadscore store upgrade)")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _migrate(conn)
            conn.commit()
    finally:
        engine.dispose()


run()
