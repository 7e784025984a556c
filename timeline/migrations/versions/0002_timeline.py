"""The lead timeline: leads, accounts, touches, identities, scores and their history, the rescore queue, webhooks."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_timeline"
down_revision: str | None = "0001_service_tables"
branch_labels: str | None = None
depends_on: str | None = None

# The auto-increment keys are BIGINT, except on SQLite: only a column declared exactly INTEGER PRIMARY KEY is a rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = (  # parents before the tables whose foreign keys refer to them
    "leads", "accounts", "touches", "identities", "lead_scores", "score_history", "rescore_queue",
    "webhook_subscriptions", "webhook_deliveries", "webhook_attempts", "erasures", "unmapped_events",
)  # fmt: skip


def upgrade() -> None:
    """Create the timeline's tables."""
    op.create_table(
        "leads",
        sa.Column("lead_id", sa.String(length=256), nullable=False),
        sa.Column("account_id", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("industry", sa.String(length=512), nullable=True),
        sa.Column("country", sa.String(length=512), nullable=True),
        sa.Column("region", sa.String(length=512), nullable=True),
        sa.Column("job_title", sa.String(length=512), nullable=True),
        sa.Column("seniority", sa.String(length=512), nullable=True),
        sa.Column("department", sa.String(length=512), nullable=True),
        sa.Column("email_domain", sa.String(length=512), nullable=True),
        sa.Column("source", sa.String(length=512), nullable=True),
        sa.Column("channel", sa.String(length=512), nullable=True),
        sa.Column("employee_count", sa.BigInteger(), nullable=True),
        sa.Column("annual_revenue", sa.Float(), nullable=True),
        sa.Column("mql_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sal_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sql_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recycled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requalified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("won_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("custom", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_leads")),
    )
    op.create_index(op.f("ix_leads_account_id"), "leads", ["account_id"], unique=False)
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(length=256), nullable=False),
        sa.Column("traits", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "touches",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("touch_key", sa.String(length=264), nullable=False),
        sa.Column("activity_id", sa.String(length=256), nullable=True),
        sa.Column("lead_id", sa.String(length=256), nullable=True),
        sa.Column("anonymous_id", sa.String(length=256), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activity_type", sa.String(length=64), nullable=False),
        sa.Column("properties", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_touches")),
        sa.UniqueConstraint("touch_key", name=op.f("uq_touches_touch_key")),
    )
    op.create_index(op.f("ix_touches_anonymous_id"), "touches", ["anonymous_id"], unique=False)
    op.create_index("ix_touches_lead_time", "touches", ["lead_id", "occurred_at"], unique=False)
    op.create_table(
        "identities",
        sa.Column("anonymous_id", sa.String(length=256), nullable=False),
        sa.Column("lead_id", sa.String(length=256), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("anonymous_id", name=op.f("pk_identities")),
    )
    op.create_index(op.f("ix_identities_lead_id"), "identities", ["lead_id"], unique=False)
    op.create_table(
        "lead_scores",
        sa.Column("lead_id", sa.String(length=256), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("thresholds_version", sa.Integer(), nullable=False),
        sa.Column("fit_score", sa.Float(), nullable=False),
        sa.Column("grade", sa.String(length=8), nullable=False),
        sa.Column("readiness_probability", sa.Float(), nullable=True),
        sa.Column("readiness_score", sa.Float(), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_lead_scores")),
    )
    op.create_table(
        "score_history",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(length=256), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause", sa.String(length=32), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("thresholds_version", sa.Integer(), nullable=False),
        sa.Column("fit_score", sa.Float(), nullable=False),
        sa.Column("grade", sa.String(length=8), nullable=False),
        sa.Column("readiness_probability", sa.Float(), nullable=True),
        sa.Column("readiness_score", sa.Float(), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_history")),
    )
    op.create_index("ix_score_history_lead_time", "score_history", ["lead_id", "scored_at"], unique=False)
    op.create_table(
        "rescore_queue",
        sa.Column("lead_id", sa.String(length=256), nullable=False),
        sa.Column("cause", sa.String(length=32), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_rescore_queue")),
    )
    op.create_index(op.f("ix_rescore_queue_due_at"), "rescore_queue", ["due_at"], unique=False)
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("min_score_change", sa.Float(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.String(length=256), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(op.f("ix_webhook_deliveries_lead_id"), "webhook_deliveries", ["lead_id"], unique=False)
    op.create_index(
        op.f("ix_webhook_deliveries_next_attempt_at"), "webhook_deliveries", ["next_attempt_at"], unique=False
    )
    op.create_index(
        op.f("ix_webhook_deliveries_subscription_id"), "webhook_deliveries", ["subscription_id"], unique=False
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(op.f("ix_webhook_attempts_delivery_id"), "webhook_attempts", ["delivery_id"], unique=False)
    op.create_table(
        "erasures",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=32), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_table(
        "unmapped_events",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_unmapped_events")),
    )


def downgrade() -> None:
    """Drop the timeline's tables, and their rows."""
    for table in reversed(TABLES):
        op.drop_table(table)
