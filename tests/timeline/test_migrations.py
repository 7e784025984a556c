"""The store's schema by Alembic revision on SQLite and PostgreSQL: new, old and newer stores, many starters."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    insert,
    inspect,
    select,
    text,
)
from typer.testing import CliRunner, Result

from leadscore.cli import app as cli
from serving.preflight import StartupError, open_store
from tests.stores import store_url_fixture  # noqa: F401 (pytest finds the fixture store_url in it)
from timeline.engine import make_engine
from timeline.migrate import StoreTooNewError, current_revision, downgrade, head_revision, upgrade
from timeline.schema import metadata, score_log, threshold_versions

AT = dt.datetime(2025, 6, 3, 9, 0, tzinfo=dt.UTC)
SERVICE_TABLES = {"score_log", "score_log_archives", "threshold_versions", "model_reloads"}
FROM_THE_FUTURE = "0099_from_a_newer_leadscore"


def differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would change to make the store match timeline.schema: nothing, if migrations do."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def test_a_new_store_is_upgraded_to_the_newest_revision_and_matches_the_schema(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    assert tables(engine) == set(metadata.tables)
    assert differences(engine) == []


def test_downgrading_to_the_service_tables_and_to_nothing_then_upgrading_again(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(threshold_versions), [{"version": 1, "created_at": AT, "author": "ops", "reason": "r",
                                                   "policy": "{}"}])  # fmt: skip
    downgrade(engine, "0001_service_tables")
    assert (current_revision(engine), tables(engine)) == ("0001_service_tables", SERVICE_TABLES)
    upgrade(engine)
    with engine.connect() as conn:  # the service tables' rows outlive a downgrade that left them in place
        assert conn.execute(select(threshold_versions.c.author)).scalars().all() == ["ops"]
    downgrade(engine, "base")
    assert (current_revision(engine), tables(engine)) == (None, set())
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []


# ---- a store made before migrations -------------------------------------------------------------------------------


def service_tables_before_migrations() -> MetaData:
    """The four tables as leadscore declared them before it had migrations: no naming convention."""
    old = MetaData()
    Table("score_log", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("request_id", String(64), nullable=False, index=True),
          Column("lead_id", String(256), nullable=False, index=True),
          Column("scored_at", DateTime(timezone=True), nullable=False, index=True),
          Column("model_version", String(64), nullable=False),
          Column("thresholds_version", Integer, nullable=False),
          Column("inputs", Text, nullable=False),
          Column("outputs", Text, nullable=False))  # fmt: skip
    Table("score_log_archives", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("file", String(512), nullable=False, unique=True),
          Column("host", String(256), nullable=False),
          Column("folder", String(1024), nullable=False),
          Column("first_id", Integer, nullable=False),
          Column("last_id", Integer, nullable=False),
          Column("records", Integer, nullable=False),
          Column("oldest", DateTime(timezone=True), nullable=False),
          Column("newest", DateTime(timezone=True), nullable=False),
          Column("archived_at", DateTime(timezone=True), nullable=False))  # fmt: skip
    Table("threshold_versions", old,
          Column("version", Integer, primary_key=True, autoincrement=False),
          Column("created_at", DateTime(timezone=True), nullable=False),
          Column("author", String(256), nullable=False),
          Column("reason", Text, nullable=False),
          Column("policy", Text, nullable=False))  # fmt: skip
    Table("model_reloads", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("model_name", String(256), nullable=False),
          Column("version", String(64), nullable=False),
          Column("reloaded_at", DateTime(timezone=True), nullable=False))  # fmt: skip
    return old


OLD_ROWS: dict[str, list[dict[str, object]]] = {
    "score_log": [
        {"request_id": f"req-{i}", "lead_id": f"L-{i}", "scored_at": AT, "model_version": "3", "thresholds_version": 1,
         "inputs": '{"lead": {}}', "outputs": '{"fit": {}}'}
        for i in range(3)
    ],
    "score_log_archives": [
        {"file": "score_log-1.parquet", "host": "h", "folder": "/a", "first_id": 1, "last_id": 9, "records": 9,
         "oldest": AT, "newest": AT, "archived_at": AT}
    ],
    "threshold_versions": [{"version": 1, "created_at": AT, "author": "ops", "reason": "initial", "policy": "{}"}],
    "model_reloads": [{"model_name": "lead-scorer", "version": "4", "reloaded_at": AT}],
}  # fmt: skip


@pytest.mark.parametrize(
    "old_tables",
    [
        pytest.param(sorted(SERVICE_TABLES), id="all-four"),
        # The first releases kept only these two: retention and shared reloads came later.
        pytest.param(["score_log", "threshold_versions"], id="first-release"),
    ],
)
def test_a_store_made_before_migrations_is_adopted_with_its_rows(store_url: str, old_tables: list[str]) -> None:
    old = service_tables_before_migrations()
    bare = create_engine(store_url)
    try:
        old.create_all(bare, tables=[old.tables[name] for name in old_tables])  # as the old make_engine did
        with bare.begin() as conn:
            for name in old_tables:
                conn.execute(insert(old.tables[name]), OLD_ROWS[name])
            before = {name: sorted(conn.execute(select(old.tables[name])).all()) for name in old_tables}
    finally:
        bare.dispose()
    engine = make_engine(store_url)
    try:
        assert current_revision(engine) == head_revision()
        assert tables(engine) == set(metadata.tables)
        with engine.connect() as conn:
            assert {name: sorted(conn.execute(select(old.tables[name])).all()) for name in old_tables} == before
        assert differences(engine) == []
        if engine.dialect.name == "postgresql":  # the database named the constraints; now the convention does
            assert inspect(engine).get_pk_constraint("score_log")["name"] == "pk_score_log"
        with engine.begin() as conn:  # new records continue the old ids
            conn.execute(insert(score_log), [{**OLD_ROWS["score_log"][0], "request_id": "after"}])
            ids = dict(conn.execute(select(score_log.c.request_id, score_log.c.id)).all())
        assert ids["after"] == max(ids.values()) == len(OLD_ROWS["score_log"]) + 1
    finally:
        engine.dispose()


# ---- a store from a newer leadscore --------------------------------------------------------------------------------


def stamp_as_newer(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": FROM_THE_FUTURE})
    engine.dispose()


def test_a_store_a_newer_leadscore_migrated_is_refused_and_left_alone(store_url: str) -> None:
    stamp_as_newer(store_url)
    with pytest.raises(StoreTooNewError) as refused:
        make_engine(store_url)
    message = str(refused.value)
    assert FROM_THE_FUTURE in message and head_revision() in message
    assert "upgrade leadscore or use another store" in message
    with pytest.raises(StartupError, match="LEADSCORE_STORE_URL") as at_start:
        open_store(store_url)
    assert FROM_THE_FUTURE in str(at_start.value)
    bare = create_engine(store_url)
    try:
        assert current_revision(bare) == FROM_THE_FUTURE
    finally:
        bare.dispose()


# ---- many processes starting on one new store ----------------------------------------------------------------------

UPGRADER = """
import os, sys, time
from pathlib import Path
barrier, workers = Path(sys.argv[2]), int(sys.argv[3])
from timeline.engine import make_engine
from timeline.migrate import current_revision
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < workers:  # every process has imported what it needs: they start at once
    time.sleep(0.005)
engine = make_engine(sys.argv[1])
print(current_revision(engine))
"""
UPGRADERS = 4


def test_processes_upgrading_one_new_store_at_once_all_succeed(store_url: str, tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADER, store_url, str(barrier), str(UPGRADERS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(UPGRADERS)
    ]
    outcomes = [(p.wait(timeout=180), *p.communicate()) for p in processes]
    assert [code for code, _, _ in outcomes] == [0] * UPGRADERS, [err[-2000:] for _, _, err in outcomes]
    assert [out.strip() for _, out, _ in outcomes] == [head_revision()] * UPGRADERS
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(text("alembic_version"))).scalar_one() == 1
        assert differences(engine) == []
    finally:
        engine.dispose()


# ---- leadscore store ----------------------------------------------------------------------------------------------


def test_the_store_commands_upgrade_a_store_and_say_where_it_stands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def leadscore(*args: str) -> Result:
        try:
            return CliRunner().invoke(cli, list(args))
        finally:  # `leadscore` logs to the runner's output, closed once it returns: what logs later goes as before
            root.handlers[:], root.level = handlers, level

    missing = leadscore("store", "current", "--url", url)
    assert missing.exit_code == 1 and "no service store" in missing.output
    assert not (tmp_path / "store.db").exists()
    upgraded = leadscore("store", "upgrade", "--url", url)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"from no revision to {head_revision()}" in upgraded.output
    again = leadscore("store", "upgrade", "--url", url)
    assert again.exit_code == 0 and f"already at {head_revision()}" in again.output
    now = leadscore("store", "current", "--url", url)
    assert now.exit_code == 0 and f"revision {head_revision()}: the newest" in now.output
    engine = make_engine(url)
    downgrade(engine, "0001_service_tables")
    engine.dispose()
    behind = leadscore("store", "current", "--url", url)
    assert "revision 0001_service_tables: older than" in behind.output
    stamp_as_newer(url)
    newer = leadscore("store", "current", "--url", url)
    assert newer.exit_code == 0 and f"revision {FROM_THE_FUTURE}: newer than this leadscore knows" in newer.output
    refused = leadscore("store", "upgrade", "--url", url)
    assert refused.exit_code == 1 and "upgrade leadscore or use another store" in refused.output
