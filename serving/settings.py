"""Service settings, read from the environment (LEADSCORE_*) when the app is created, never at import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.defaults import DEFAULT_HOST, DEFAULT_PORT

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Same default store as `leadscore train` (training.tracking): a SQLite file in the working directory.
DEFAULT_TRACKING_DB = "mlflow.db"


class Settings(BaseSettings):
    """Everything the score service needs to start; each value has one home, here."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", env_file=None, extra="ignore")

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    model_name: str = "lead-scorer"
    model_alias: str = "champion"
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys that may score."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys that may also reload the model and change thresholds."
    )
    monitoring_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys that may read /metrics and the details of /readyz (as admin keys may); "
        "sent as X-API-Key or as Authorization: Bearer.",
    )
    open_monitoring: bool = Field(
        default=False,
        description="Let anyone read /metrics and the details of /readyz even when keys are configured (for a "
        "scraper on a private network that sends no key).",
    )
    store_url: str = Field(
        default="sqlite:///leadscore-service.db",
        description="SQLAlchemy URL of the score log and threshold versions (any SQLAlchemy URL, e.g. PostgreSQL).",
    )
    journal_dir: str = Field(
        default="leadscore-journal",
        description="Folder of the score log's write-ahead journals (empty: wait for each database commit instead).",
    )
    # The store keeps what threshold tuning replays (8 weeks) and more; the archive, compressed, keeps the rest.
    score_log_retention_days: int | None = Field(
        default=90, ge=1,
        description="Score-log records older than this many days are archived (see LEADSCORE_SCORE_LOG_ARCHIVE_DIR) "
        "and deleted, hourly; unset (empty) keeps every record.",
    )  # fmt: skip
    score_log_archive_dir: str = Field(
        default="leadscore-archive",
        description="Folder the score log's retention writes Parquet files to before it deletes records; empty: "
        "delete without an archive.",
    )
    store_durable_fsync: bool = Field(
        default=False,
        description="SQLite only: fsync every commit (survives power loss, not only a crashed process; slower).",
    )
    # A lead with its colleagues and a year and a half of touches is ~13 kB as a CRM sends it (30 kB at the 95th
    # percentile): the body limit lets a full batch of such leads through (tests/serving/test_limits.py).
    max_body_bytes: int = Field(default=16_000_000, ge=1024, description="Largest request body accepted.")
    max_batch: int = Field(default=1000, ge=1, description="Most leads in one batch request.")
    max_activities: int = Field(default=5000, ge=1, description="Most activities in one lead's request.")
    max_colleagues: int = Field(default=200, ge=0, description="Most colleagues in one lead's request.")
    top_reasons: int = Field(default=3, ge=1, le=10, description="Reasons given per side (fit, behaviour).")
    timeout_keep_alive: int = Field(
        default=5, ge=1, le=3600,
        description="Seconds an idle keep-alive connection stays open after a response. Behind a load balancer, "
        "set it above the balancer's own idle timeout.",
    )  # fmt: skip
    timeout_idle: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds a new connection has to start its first request."
    )
    timeout_request: float = Field(
        default=30.0, gt=0, le=3600,
        description="Seconds a request has to arrive whole (headers and body) once it has started; a slow client "
        "(a slowloris) is cut off after it.",
    )  # fmt: skip
    max_connections: int = Field(
        default=2048, ge=1,
        description="Connections one worker serves at once; requests beyond it get 503. The command raises the "
        "process's open-file limit to fit.",
    )  # fmt: skip
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    # ---- ingest (the lead timeline's write side) ----
    ingest_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys that may write leads, touches and Segment events (admin keys may too).",
    )
    event_map: str | None = Field(
        default=None,
        description="YAML file mapping Segment track/page events to activity types and traits to lead fields; "
        "default: the shipped map (timeline/default_event_map.yaml).",
    )
    max_ingest_batch: int = Field(
        default=1000, ge=1, description="Most leads, touches or Segment messages in one ingest request."
    )
    max_touch_future_hours: float = Field(
        default=24.0, ge=0, description="How far ahead of the service's clock a touch's time may be (clock skew)."
    )
    max_touch_property_bytes: int = Field(
        default=16_384, ge=64, description="Largest properties object of one touch, in bytes of compact JSON."
    )
    max_rescore_backlog: int = Field(
        default=20_000, ge=1,
        description="Due rescores waiting beyond which ingest answers 429 with Retry-After and stores nothing.",
    )  # fmt: skip
    max_rescore_lag_seconds: float = Field(
        default=30.0, gt=0,
        description="How long the longest-waiting due rescore may wait before ingest answers 429 with Retry-After "
        "and stores nothing (how stale scores may grow under load).",
    )  # fmt: skip
    # ---- rescore on change ----
    rescore_batch: int = Field(default=200, ge=1, le=1000, description="Most queued leads a worker rescores at once.")
    rescore_poll_seconds: float = Field(
        default=0.2, gt=0, le=60,
        description="How often an idle worker looks for queued rescores (a busy one goes on at once).",
    )  # fmt: skip
    rescore_lease_seconds: float = Field(
        default=60.0, ge=1, le=3600,
        description="How long a worker holds the leads it claimed: a worker killed meanwhile leaves them to another "
        "after this.",
    )  # fmt: skip
    sweep_seconds: float = Field(
        default=3600.0, gt=0, description="How often each worker queues the open leads whose score has aged."
    )
    rescore_max_age_hours: float = Field(
        default=24.0, gt=0,
        description="An open lead's score older than this is rescored by the sweep (engagement decays, days in a "
        "stage grow).",
    )  # fmt: skip
    # ---- webhooks ----
    webhook_delivery: bool = Field(
        default=True,
        description="Deliver queued webhooks from this process (every replica does by default; leases keep two "
        "from sending the same delivery at once).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="Seconds a receiver has to answer a webhook (connect, send and answer) before the attempt "
        "counts as failed and is retried.",
    )  # fmt: skip
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=100, description="Failed attempts after which a delivery is dead (until replayed)."
    )
    webhook_backoff_base_seconds: float = Field(
        default=5.0, gt=0, description="Wait after a webhook's first failed attempt; each later wait is longer."
    )
    webhook_backoff_factor: float = Field(default=2.0, ge=1, description="How much longer each next wait is.")
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0, description="The longest wait between attempts.")
    webhook_backoff_jitter: float = Field(
        default=0.2, ge=0, lt=1,
        description="Each wait is shortened by a random share up to this, so that deliveries that failed together "
        "do not all come back at once.",
    )  # fmt: skip
    webhook_poll_seconds: float = Field(
        default=0.2, gt=0, le=60, description="How often a process looks for due webhook deliveries."
    )
    webhook_batch: int = Field(
        default=50, ge=1, le=1000, description="Most webhook deliveries one process sends at once."
    )

    @field_validator("score_log_retention_days", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys", "admin_keys", "monitoring_keys", "ingest_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def auth_enabled(self) -> bool:
        """Scoring (and ingest) needs a key once any key is configured."""
        return bool(self.api_keys or self.admin_keys or self.ingest_keys)


def tracking_uri(settings: Settings) -> str:
    """Where the registry is: the setting, else $MLFLOW_TRACKING_URI, else the local SQLite store."""
    return (
        settings.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"
    )
