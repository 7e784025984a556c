"""The score service's tables from before the lead timeline: score log and its archives, thresholds, reloads."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision: str = "0001_service_tables"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

log = logging.getLogger("timeline.migrations")
# timeline.schema's naming convention as this revision was written (a revision never reads the live schema).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _score_log() -> None:
    op.create_table(
        "score_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.String(length=256), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("thresholds_version", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_log")),
    )
    op.create_index(op.f("ix_score_log_lead_id"), "score_log", ["lead_id"], unique=False)
    op.create_index(op.f("ix_score_log_request_id"), "score_log", ["request_id"], unique=False)
    op.create_index(op.f("ix_score_log_scored_at"), "score_log", ["scored_at"], unique=False)


def _score_log_archives() -> None:
    op.create_table(
        "score_log_archives",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file", sa.String(length=512), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("folder", sa.String(length=1024), nullable=False),
        sa.Column("first_id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("oldest", sa.DateTime(timezone=True), nullable=False),
        sa.Column("newest", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_log_archives")),
        sa.UniqueConstraint("file", name=op.f("uq_score_log_archives_file")),
    )


def _threshold_versions() -> None:
    op.create_table(
        "threshold_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_threshold_versions")),
    )


def _model_reloads() -> None:
    op.create_table(
        "model_reloads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("reloaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_reloads")),
    )


TABLES = {
    "score_log": _score_log,
    "score_log_archives": _score_log_archives,
    "threshold_versions": _threshold_versions,
    "model_reloads": _model_reloads,
}


def _adopt(table: str) -> None:
    """Keep a table a leadscore from before migrations made (create_all), rows and all, under the store's names.

    That code named no constraint, so the database did (PostgreSQL: score_log_pkey, score_log_archives_file_key;
    SQLite: none at all). Later revisions refer to constraints by the naming convention's names, so they get those.
    The index names already were the convention's.
    """
    log.info("adopting the table %s, made before the store had migrations", table)
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if bind.dialect.name == "sqlite":
        # SQLite cannot rename a constraint: a table with an unnamed UNIQUE constraint is copied with it named (batch
        # mode names what it reflects by the convention). Only score_log_archives has one: a row per archive file.
        if any(unique["name"] is None for unique in inspector.get_unique_constraints(table)):
            with op.batch_alter_table(table, recreate="always", naming_convention=NAMING_CONVENTION):
                pass
        return
    if bind.dialect.name != "postgresql":
        return
    renames = [(inspector.get_pk_constraint(table).get("name"), f"pk_{table}")]
    renames += [
        (unique["name"], f"uq_{table}_{unique['column_names'][0]}")
        for unique in inspector.get_unique_constraints(table)
        if len(unique["column_names"]) == 1
    ]
    for old, new in renames:
        if old and old != new:
            op.execute(sa.text(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"'))


def upgrade() -> None:
    """Create the four tables; on a store made before migrations, adopt those it has and create those it lacks."""
    # Only a store made before migrations reaches this revision with any of these tables (they go with it on
    # downgrade). Builds before score-log retention and shared reloads lack those tables: they are created.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for table, create in TABLES.items():
        if table in existing:
            _adopt(table)
        else:
            create()


def downgrade() -> None:
    """Drop the four tables, and their rows."""
    for table in reversed(TABLES):
        op.drop_table(table)
