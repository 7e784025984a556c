"""Durable service state on any SQLAlchemy database: the score log, the versioned routing policies, the reloads."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, func, insert, literal, select
from sqlalchemy.exc import IntegrityError

from serving.policy import RoutingPolicy
from timeline.engine import SQLITE_BUSY_SECONDS, make_engine, stored_time
from timeline.schema import metadata, model_reloads, score_log, score_log_archives, threshold_versions

log = logging.getLogger(__name__)

# Re-exported: the service's modules and tests name them from here.
__all__ = [
    "MAX_POLICY_VERSION",
    "SQLITE_BUSY_SECONDS",
    "ModelReload",
    "PolicyStore",
    "PolicyVersion",
    "ReloadStore",
    "ScoreRecord",
    "VersionConflictError",
    "make_engine",
    "metadata",
    "model_reloads",
    "score_log",
    "score_log_archives",
    "stored_time",
    "threshold_versions",
]


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One scored lead as kept for audit and for learning from outcomes later."""

    request_id: str
    lead_id: str
    scored_at: dt.datetime
    model_version: str
    thresholds_version: int
    inputs: dict[str, Any] | str  # a dict, or the JSON text as received (kept verbatim: cheaper and exact)
    outputs: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A stored routing policy with who saved it, when and why."""

    version: int
    created_at: dt.datetime
    author: str
    reason: str
    policy: RoutingPolicy


# Version numbers live in a 32-bit Integer column: larger ones can name no stored version (and PostgreSQL refuses them).
MAX_POLICY_VERSION = 2**31 - 1
# Concurrent saves that lose the race for a number retry after a random pause growing by this much per attempt, so
# that many savers spread out instead of colliding again (on PostgreSQL the losers all wake at the winner's commit).
SAVE_BACKOFF_SECONDS = 0.005
SAVE_ATTEMPTS = 50


class VersionConflictError(Exception):
    """A save based on a version that is not the one in force: another was saved since, or the base is unknown."""

    def __init__(self, base_version: int, latest: int | None) -> None:
        self.base_version = base_version
        self.latest = latest
        super().__init__(f"the save was based on version {base_version}, but version {latest} is in force")

    @property
    def unknown_base(self) -> bool:
        """The base is no stored version: ahead of the latest (or nothing stored yet)."""
        return self.latest is None or self.base_version > self.latest


class PolicyStore:
    """Versioned routing policies: every save is a new version; the latest is in force."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def latest(self) -> PolicyVersion | None:
        """The policy in force, or None before the first save."""
        query = select(threshold_versions).order_by(threshold_versions.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _policy_version(row)

    def get(self, version: int) -> PolicyVersion | None:
        """One stored version; None for a number no version can have."""
        if not 1 <= version <= MAX_POLICY_VERSION:
            return None  # the database would overflow (SQLite) or refuse (PostgreSQL) it
        query = select(threshold_versions).where(threshold_versions.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _policy_version(row)

    def history(self) -> list[PolicyVersion]:
        """Every version, newest first."""
        query = select(threshold_versions).order_by(threshold_versions.c.version.desc())
        with self.engine.connect() as conn:
            return [_policy_version(r) for r in conn.execute(query)]

    def save(self, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion:
        """Store `policy` as the next version.

        The version number is the primary key: two concurrent saves cannot both take the same number, the loser
        retries with the next one, so no version is ever lost or overwritten.
        """
        for attempt in range(SAVE_ATTEMPTS):
            stored = self._insert((self._latest_number() or 0) + 1, policy, author=author, reason=reason)
            if stored is not None:
                return stored
            # another save took this number first: take the next one
            time.sleep(random.uniform(0, SAVE_BACKOFF_SECONDS * (attempt + 1)))
        raise RuntimeError("could not save the policy: too many concurrent saves")

    def save_after(self, base_version: int, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion:
        """Store `policy` as version base_version + 1 if base_version is in force; else raise VersionConflictError.

        For editors that show a version and save changes to it: a save made meanwhile is never silently replaced,
        and a save can never land behind the version in force (it would be stored and never applied). The check and
        the insert are one statement, and the new number is the primary key: of two saves on the same base, one
        stores and the other finds the number taken, on any database.
        """
        if not 1 <= base_version < MAX_POLICY_VERSION:
            raise VersionConflictError(base_version, self._latest_number())
        created_at = dt.datetime.now(dt.UTC)
        table = threshold_versions
        in_force = select(func.max(table.c.version)).scalar_subquery()
        values = select(
            literal(base_version + 1, Integer),
            literal(created_at, table.c.created_at.type),
            literal(author, table.c.author.type),
            literal(reason, table.c.reason.type),
            literal(policy.model_dump_json(), table.c.policy.type),
        ).where(in_force == base_version)
        statement = insert(table).from_select(["version", "created_at", "author", "reason", "policy"], values)
        try:
            with self.engine.begin() as conn:
                # SQLAlchemy reports an INSERT's row count only when asked to (PostgreSQL says -1 otherwise).
                inserted = conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount
        except IntegrityError:
            inserted = 0  # a concurrent save on the same base took the number first
        if inserted != 1:
            raise VersionConflictError(base_version, self._latest_number())
        return PolicyVersion(base_version + 1, created_at, author, reason, policy)

    def rollback(self, version: int, *, author: str, reason: str) -> PolicyVersion | None:
        """Store version `version`'s policy as the newest version (history is never rewritten); None if unknown."""
        earlier = self.get(version)
        if earlier is None:
            return None
        return self.save(earlier.policy, author=author, reason=f"rollback to version {version}: {reason}")

    def ensure_default(self, policy: RoutingPolicy) -> PolicyVersion:
        """The policy in force; stores `policy` as version 1 when none has been saved yet.

        Workers starting together on an empty store all claim version 1: one stores it, the others read it, so the
        default is stored once.
        """
        current = self.latest()
        if current is not None:
            return current
        stored = self._insert(1, policy, author="leadscore", reason="default policy shipped with the model")
        current = stored or self.latest()
        assert current is not None  # version 1 was taken, so a version exists
        return current

    def _latest_number(self) -> int | None:
        with self.engine.connect() as conn:
            current = conn.execute(select(func.max(threshold_versions.c.version))).scalar()
        return None if current is None else int(current)

    def _insert(self, version: int, policy: RoutingPolicy, *, author: str, reason: str) -> PolicyVersion | None:
        """Store `policy` under `version`; None when that number is taken already."""
        created_at = dt.datetime.now(dt.UTC)
        row = {
            "version": version,
            "created_at": created_at,
            "author": author,
            "reason": reason,
            "policy": policy.model_dump_json(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(threshold_versions), [row])
        except IntegrityError:
            return None
        return PolicyVersion(version, created_at, author, reason, policy)


@dataclass(frozen=True, slots=True)
class ModelReload:
    """A reload that one worker answered: which version of which model it loaded, and when."""

    id: int
    model_name: str
    version: str
    reloaded_at: dt.datetime


class ReloadStore:
    """The reloads answered so far: how every worker (and every replica on the same store) learns of one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, model_name: str, version: str) -> ModelReload:
        """Store that `version` of `model_name` was loaded by a reload."""
        reloaded_at = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            # One row, as one statement (not a list of rows): its primary key comes back on every database.
            result = conn.execute(
                insert(model_reloads).values(model_name=model_name, version=version, reloaded_at=reloaded_at)
            )
            key = result.inserted_primary_key
        assert key is not None
        return ModelReload(int(key[0]), model_name, version, reloaded_at)

    def latest(self, model_name: str) -> ModelReload | None:
        """The newest reload of `model_name`, if any."""
        query = (
            select(model_reloads)
            .where(model_reloads.c.model_name == model_name)
            .order_by(model_reloads.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return ModelReload(int(row.id), row.model_name, row.version, stored_time(row.reloaded_at))


def _policy_version(row: Any) -> PolicyVersion:
    return PolicyVersion(
        version=int(row.version),
        created_at=stored_time(row.created_at),
        author=row.author,
        reason=row.reason,
        policy=RoutingPolicy.model_validate_json(row.policy),
    )
