"""Every table of the service store, as one SQLAlchemy MetaData; Alembic migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# SQLite gives a rowid alias (an auto-increment key) only to a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")
Stamp = DateTime(timezone=True)
ID_LENGTH = 256  # lead, account, anonymous and activity ids: as long as the score API accepts

# Names every constraint the same way on every database, so that a migration can name the one it changes.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# ---- what the score service kept before the timeline (revision 0001) -------------------------------------------

score_log = Table(
    "score_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("lead_id", String(256), nullable=False, index=True),
    Column("scored_at", Stamp, nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("thresholds_version", Integer, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("outputs", Text, nullable=False),
)
# One row per Parquet file the score log's retention archived: the records it holds left the score_log table in the
# transaction that wrote this row, so a record is either in the table or in exactly one recorded file.
score_log_archives = Table(
    "score_log_archives",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file", String(512), nullable=False, unique=True),
    Column("host", String(256), nullable=False),  # where the file was written: replicas may archive on their own
    Column("folder", String(1024), nullable=False),
    Column("first_id", Integer, nullable=False),
    Column("last_id", Integer, nullable=False),
    Column("records", Integer, nullable=False),
    Column("oldest", Stamp, nullable=False),
    Column("newest", Stamp, nullable=False),
    Column("archived_at", Stamp, nullable=False),
)
threshold_versions = Table(
    "threshold_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Stamp, nullable=False),
    Column("author", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("policy", Text, nullable=False),
)
# One row per successful POST /v1/admin/reload: the version that worker loaded, for every other worker to follow.
model_reloads = Table(
    "model_reloads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(256), nullable=False),
    Column("version", String(64), nullable=False),
    Column("reloaded_at", Stamp, nullable=False),
)

# ---- the lead timeline (revision 0002) ---------------------------------------------------------------------------

LIFECYCLE_STAMPS: tuple[str, ...] = (
    "mql_at", "sal_at", "sql_at", "lost_at", "recycled_at", "requalified_at", "won_at",
)  # fmt: skip
PROFILE_TEXT: tuple[str, ...] = (
    "industry", "country", "region", "job_title", "seniority", "department", "email_domain", "source", "channel",
)  # fmt: skip

# A lead as the contract's leads table has it (features.spec.LEADS): profile, lifecycle stamps, custom attributes.
leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(ID_LENGTH), primary_key=True),
    Column("account_id", String(ID_LENGTH), nullable=True, index=True),  # None: the lead is its own account
    Column("created_at", Stamp, nullable=False),
    *(Column(name, String(512), nullable=True) for name in PROFILE_TEXT),
    Column("employee_count", BigInteger, nullable=True),
    Column("annual_revenue", Float, nullable=True),
    *(Column(name, Stamp, nullable=True) for name in LIFECYCLE_STAMPS),
    Column("custom", Text, nullable=True),  # JSON object of the contract's custom attributes
    Column("updated_at", Stamp, nullable=False),
)
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(ID_LENGTH), primary_key=True),
    Column("traits", Text, nullable=True),  # JSON object, as a Segment group call sent it (mapped traits only)
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
)
# One row per touch, stored once: touch_key is the caller's activity_id, else a digest of the touch's content.
touches = Table(
    "touches",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("touch_key", String(ID_LENGTH + 8), nullable=False, unique=True),
    Column("activity_id", String(ID_LENGTH), nullable=True),
    Column("lead_id", String(ID_LENGTH), nullable=True),  # None while the touch is only an anonymous visitor's
    Column("anonymous_id", String(ID_LENGTH), nullable=True, index=True),
    Column("occurred_at", Stamp, nullable=False),
    Column("activity_type", String(64), nullable=False),
    Column("properties", Text, nullable=True),  # JSON object
    Column("received_at", Stamp, nullable=False),
    Index("ix_touches_lead_time", "lead_id", "occurred_at"),
)
# Anonymous ids (a browser's cookie) and the lead each turned out to be.
identities = Table(
    "identities",
    metadata,
    Column("anonymous_id", String(ID_LENGTH), primary_key=True),
    Column("lead_id", String(ID_LENGTH), nullable=True, index=True),
    Column("first_seen_at", Stamp, nullable=False),
    Column("identified_at", Stamp, nullable=True),
)
# Each lead's latest score (the whole answer the score API would give) and the columns automation reads.
lead_scores = Table(
    "lead_scores",
    metadata,
    Column("lead_id", String(ID_LENGTH), primary_key=True),
    Column("scored_at", Stamp, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("thresholds_version", Integer, nullable=False),
    Column("fit_score", Float, nullable=False),
    Column("grade", String(8), nullable=False),
    Column("readiness_probability", Float, nullable=True),
    Column("readiness_score", Float, nullable=True),
    Column("stage", String(16), nullable=True),
    Column("queue", String(32), nullable=False),
    Column("response", Text, nullable=False),  # JSON, as POST /v1/score answers
)
score_history = Table(
    "score_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("lead_id", String(ID_LENGTH), nullable=False),
    Column("scored_at", Stamp, nullable=False),
    Column("cause", String(32), nullable=False),  # touch, profile, lifecycle, colleague, sweep, ...
    Column("model_version", String(64), nullable=False),
    Column("thresholds_version", Integer, nullable=False),
    Column("fit_score", Float, nullable=False),
    Column("grade", String(8), nullable=False),
    Column("readiness_probability", Float, nullable=True),
    Column("readiness_score", Float, nullable=True),
    Column("stage", String(16), nullable=True),
    Column("queue", String(32), nullable=False),
    Index("ix_score_history_lead_time", "lead_id", "scored_at"),
)
# Leads waiting to be rescored. A change bumps `generation`; a worker claims a row (claimed_by until claimed_until, a
# lease) and deletes it only if the generation it scored is still the row's, so a change made while it scored gets a
# rescore of its own. A killed worker's lease runs out and another takes the row: no acknowledged change is lost.
rescore_queue = Table(
    "rescore_queue",
    metadata,
    Column("lead_id", String(ID_LENGTH), primary_key=True),
    Column("cause", String(32), nullable=False),
    Column("enqueued_at", Stamp, nullable=False),
    Column("due_at", Stamp, nullable=False, index=True),
    Column("generation", BigInteger, nullable=False, default=1),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", Stamp, nullable=True),
)
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),  # whsec_... (Standard Webhooks)
    Column("events", Text, nullable=False),  # JSON list of event types
    Column("min_score_change", Float, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
)
# The transactional outbox: an event's row is written in the transaction that changed the score, and delivered (at
# least once) from here with retries; a delivery that keeps failing ends as `dead` until replayed.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id header (msg_...): receivers deduplicate on it
    Column(
        "subscription_id",
        String(40),
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("event_type", String(64), nullable=False),
    Column("lead_id", String(ID_LENGTH), nullable=True, index=True),  # for erasure
    Column("payload", Text, nullable=False),
    Column("created_at", Stamp, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Stamp, nullable=True, index=True),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", Stamp, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", Stamp, nullable=True),
)
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        String(40),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempted_at", Stamp, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
)
# An erasure (GDPR article 17) as a fact without personal data: when, by which key kind, how many rows went.
erasures = Table(
    "erasures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("erased_at", Stamp, nullable=False),
    Column("requested_by", String(32), nullable=False),
    Column("counts", Text, nullable=False),  # JSON object: table -> rows deleted
)
# Event names the event map sends nowhere, counted (reported by GET /v1/events/unmapped).
unmapped_events = Table(
    "unmapped_events",
    metadata,
    Column("kind", String(16), primary_key=True),  # track or page
    Column("name", String(ID_LENGTH), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("first_seen_at", Stamp, nullable=False),
    Column("last_seen_at", Stamp, nullable=False),
)
