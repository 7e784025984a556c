"""The service store for tests that must hold on every database it runs on: a SQLite file, a PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import fresh_database

POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


@pytest.fixture(name="store_url", params=["sqlite", "postgresql"])
def store_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty store: the test runs once on a SQLite file and once on a fresh PostgreSQL database.

    A test module takes it with `from tests.stores import store_url_fixture`; its tests then ask for `store_url`.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database() as database:
        yield POSTGRESQL_URL.format(database=database)
