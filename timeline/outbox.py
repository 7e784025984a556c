"""Webhook subscriptions and the transactional outbox their deliveries leave from (at least once, with retries)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import random
import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, Row, delete, insert, select, tuple_, update

from timeline.engine import stored_time
from timeline.schema import webhook_attempts, webhook_deliveries, webhook_subscriptions
from timeline.scores import ScoreState

# The events a subscription may ask for; `webhook.test` is only ever sent on request (POST /v1/webhooks/{id}/test).
LEAD_ROUTED = "lead.routed"
LEAD_SCORE_CHANGED = "lead.score_changed"
LEAD_GRADE_CHANGED = "lead.grade_changed"
EVENT_TYPES: tuple[str, ...] = (LEAD_ROUTED, LEAD_SCORE_CHANGED, LEAD_GRADE_CHANGED)
TEST_EVENT = "webhook.test"

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES: tuple[str, ...] = (PENDING, DELIVERED, DEAD)

SECRET_PREFIX = "whsec_"  # Standard Webhooks: the prefix, then the key in base64
SECRET_BYTES = 24  # 192 bits, within the spec's 24 to 64 bytes
MAX_URL_LENGTH = 2000
MAX_ERROR_CHARS = 1000  # what the delivery log keeps of an error or an answer's body
SCORE_RANGE = 100.0  # readiness and fit scores are 0-100: a larger minimum change could never fire


class SubscriptionError(ValueError):
    """A subscription field that cannot be stored: which field, and what is accepted."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where to send which lead events, and the secret they are signed with."""

    id: str
    url: str
    secret: str
    events: tuple[str, ...]
    min_score_change: float
    active: bool
    description: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at delivering: when, what the receiver answered (or why nothing came back), how long it took."""

    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one subscription, as the outbox holds it, with every attempt so far (oldest first)."""

    id: str
    subscription_id: str
    event_type: str
    lead_id: str | None
    payload: str  # the JSON body, byte for byte as signed and sent
    created_at: dt.datetime
    status: str
    attempts: int  # attempts since it was queued or last replayed (the retry budget spent)
    next_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None
    log: tuple[Attempt, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery a worker holds the lease on: what it must send, where, and signed with which secret."""

    id: str
    subscription_id: str
    url: str
    secret: str  # the subscription's secret when claimed: a rotation signs every later attempt with the new one
    payload: str
    attempts: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed delivery is tried again: base x factor^(n-1) seconds after the n-th failure, capped, jittered.

    Jitter shortens each wait by up to `jitter` of it, so that deliveries failing together (a receiver that was
    down) do not all come back at the same instant; a delivery is `dead` after `max_attempts` failures.
    """

    base_seconds: float = 5.0
    factor: float = 2.0
    max_seconds: float = 3600.0
    jitter: float = 0.2
    max_attempts: int = 8

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt."""
        nominal = min(self.max_seconds, self.base_seconds * self.factor ** max(failures - 1, 0))
        spread = (rng or _rng).random() * self.jitter
        return nominal * (1.0 - spread)


_rng = random.SystemRandom()


# ---- subscriptions ------------------------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """The URL, if it is an absolute http(s) URL with a host (SubscriptionError on `url` otherwise)."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise SubscriptionError("url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is no number or out of range
    except ValueError as err:
        raise SubscriptionError("url", f"not a URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubscriptionError("url", f"{url!r} is not an http:// or https:// URL with a host")
    return url


def check_events(events: Sequence[str]) -> tuple[str, ...]:
    """The event types, each once (SubscriptionError on `events` for none, or one not in EVENT_TYPES)."""
    if isinstance(events, str):
        raise SubscriptionError("events", f"a list of event types is expected, such as [{EVENT_TYPES[0]!r}]")
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown:
        raise SubscriptionError(
            "events", f"unknown event type {unknown[0]!r}: the event types are {', '.join(EVENT_TYPES)}"
        )
    if not events:
        raise SubscriptionError("events", f"at least one event type is needed, of {', '.join(EVENT_TYPES)}")
    return tuple(dict.fromkeys(events))


def check_min_score_change(value: float) -> float:
    """The minimum change of score that fires lead.score_changed, 0-100 points (0: any change)."""
    if not 0.0 <= value <= SCORE_RANGE:  # NaN fails this too
        raise SubscriptionError("min_score_change", f"must be between 0 and {SCORE_RANGE:g} points, not {value}")
    return float(value)


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def create_subscription(
    conn: Connection,
    url: str,
    events: Sequence[str],
    min_score_change: float,
    description: str | None = None,
    *,
    active: bool = True,
    now: dt.datetime | None = None,
) -> Subscription:
    """Store a new subscription with a new id (wh_...) and secret; SubscriptionError names a field it refuses."""
    conn.info.pop(_SUBSCRIPTIONS, None)  # what this transaction read of the subscriptions is stale
    now = _utc(now)
    subscription = Subscription(
        id=f"wh_{uuid.uuid4().hex}",
        url=check_url(url),
        secret=new_secret(),
        events=check_events(events),
        min_score_change=check_min_score_change(min_score_change),
        active=active,
        description=description,
        created_at=now,
        updated_at=now,
    )
    values = {**_subscription_values(subscription), "id": subscription.id, "created_at": now}
    conn.execute(insert(webhook_subscriptions).values(values))
    return subscription


def get_subscription(conn: Connection, subscription_id: str) -> Subscription | None:
    """The subscription, or None."""
    row = conn.execute(select(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id)).first()
    return None if row is None else _subscription(row)


def list_subscriptions(conn: Connection, *, active_only: bool = False) -> list[Subscription]:
    """Every subscription (or the active ones), oldest first."""
    table = webhook_subscriptions.c
    query = select(webhook_subscriptions).order_by(table.created_at, table.id)
    if active_only:
        query = query.where(table.active.is_(True))
    return [_subscription(row) for row in conn.execute(query)]


def update_subscription(
    conn: Connection,
    subscription_id: str,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    active: bool | None = None,
    min_score_change: float | None = None,
    description: str | None = None,
    rotate_secret: bool = False,
    now: dt.datetime | None = None,
) -> Subscription | None:
    """Change what is given (None leaves a field as it is); None when there is no such subscription.

    A new secret signs every attempt from now on, those of deliveries already queued included (they are signed when
    sent, not when queued). A deactivated subscription's pending deliveries wait, and go when it is active again.
    """
    conn.info.pop(_SUBSCRIPTIONS, None)  # what this transaction read of the subscriptions is stale
    current = get_subscription(conn, subscription_id)
    if current is None:
        return None
    changed = Subscription(
        id=current.id,
        url=current.url if url is None else check_url(url),
        secret=new_secret() if rotate_secret else current.secret,
        events=current.events if events is None else check_events(events),
        min_score_change=(
            current.min_score_change if min_score_change is None else check_min_score_change(min_score_change)
        ),
        active=current.active if active is None else active,
        description=current.description if description is None else description,
        created_at=current.created_at,
        updated_at=_utc(now),
    )
    table = webhook_subscriptions.c
    conn.execute(update(webhook_subscriptions).where(table.id == subscription_id).values(_subscription_values(changed)))
    return changed


def delete_subscription(conn: Connection, subscription_id: str) -> bool:
    """Delete the subscription with its deliveries and their log; False when there was none."""
    conn.info.pop(_SUBSCRIPTIONS, None)  # what this transaction read of the subscriptions is stale
    deliveries = select(webhook_deliveries.c.id).where(webhook_deliveries.c.subscription_id == subscription_id)
    # Explicitly, not by the foreign keys' ON DELETE CASCADE: a SQLite connection opened without
    # PRAGMA foreign_keys would leave the rows behind.
    conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries)))
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.subscription_id == subscription_id))
    gone = conn.execute(delete(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id))
    return gone.rowcount > 0


# ---- events into the outbox ---------------------------------------------------------------------------------------


def score_events(before: ScoreState | None, after: ScoreState) -> list[str]:
    """The events a rescore from `before` to `after` makes, before each subscription's minimum change.

    A lead's first score routes it (lead.routed with previous_queue null); a score or grade change needs a score
    before it to change from. lead.score_changed is listed for any change of score (see `score_change`).
    """
    if before is None:
        return [LEAD_ROUTED]
    events = []
    if after.queue != before.queue:
        events.append(LEAD_ROUTED)
    if score_change(before, after) != 0.0:
        events.append(LEAD_SCORE_CHANGED)
    if after.grade != before.grade:
        events.append(LEAD_GRADE_CHANGED)
    return events


def score_change(before: ScoreState, after: ScoreState) -> float:
    """How far the score moved, in points (0-100): readiness when both scores have it, else fit.

    Readiness stops applying when a lead becomes an opportunity, is lost or won (and may start again when it is
    recycled); across such a change the fit score is the score both sides have.
    """
    if before.readiness_score is not None and after.readiness_score is not None:
        return after.readiness_score - before.readiness_score
    return after.fit_score - before.fit_score


def emit_score_events(
    conn: Connection, lead_id: str, before: ScoreState | None, after: ScoreState, *, now: dt.datetime
) -> int:
    """Queue the webhook deliveries a rescore makes, in the caller's transaction (the one storing `after`).

    One delivery per active subscription and event it asked for: lead.routed when the queue changes (or on the
    lead's first score, `before` None), lead.score_changed when the score moves by at least the subscription's
    min_score_change, lead.grade_changed when the grade changes. Returns how many deliveries were queued.
    """
    events = score_events(before, after)
    if not events:
        return 0
    now = _utc(now)
    change = abs(score_change(before, after)) if before is not None else 0.0
    payloads = {event: _json(_score_payload(event, lead_id, before, after, now)) for event in events}
    rows = []
    for subscription in _active_subscriptions(conn):
        for event in events:
            if event not in subscription.events:
                continue
            if event == LEAD_SCORE_CHANGED and change < subscription.min_score_change:
                continue
            rows.append(_delivery_row(subscription.id, event, lead_id, payloads[event], now))
    if rows:
        conn.execute(insert(webhook_deliveries), rows)
    return len(rows)


_SUBSCRIPTIONS = "leadscore.active_subscriptions"


def _active_subscriptions(conn: Connection) -> list[Subscription]:
    """The active subscriptions, read once per transaction: a rescore batch emits for hundreds of leads in one."""
    transaction = conn.get_transaction()
    cached = conn.info.get(_SUBSCRIPTIONS)
    if cached is not None and transaction is not None and cached[0] is transaction:
        found: list[Subscription] = cached[1]
        return found
    found = list_subscriptions(conn, active_only=True)
    if transaction is not None:
        conn.info[_SUBSCRIPTIONS] = (transaction, found)
    return found


def queue_test_event(conn: Connection, subscription_id: str, *, now: dt.datetime | None = None) -> Delivery | None:
    """Queue a `webhook.test` event for the subscription, whatever events it asked for; None when there is none."""
    if get_subscription(conn, subscription_id) is None:
        return None
    now = _utc(now)
    payload = {"type": TEST_EVENT, "timestamp": _iso(now), "data": {"subscription_id": subscription_id}}
    row = _delivery_row(subscription_id, TEST_EVENT, None, _json(payload), now)
    conn.execute(insert(webhook_deliveries).values(row))
    return get_delivery(conn, row["id"])


def _score_payload(
    event: str, lead_id: str, before: ScoreState | None, after: ScoreState, now: dt.datetime
) -> dict[str, Any]:
    """The body of a lead event, Standard Webhooks style: type, timestamp and the lead's score as data."""
    response = after.response
    readiness = (
        None
        if after.readiness_score is None
        else {"probability": after.readiness_probability, "score": after.readiness_score, "stage": after.stage}
    )
    data: dict[str, Any] = {
        "lead_id": lead_id,
        "queue": after.queue,
        "previous_queue": None if before is None else before.queue,
        "grade": after.grade,
        "previous_grade": None if before is None else before.grade,
        "readiness": readiness,
        "previous_readiness_score": None if before is None else before.readiness_score,
        "fit": {"score": after.fit_score, "grade": after.grade},
        "previous_fit_score": None if before is None else before.fit_score,
        "route": response.get("route"),
        "reasons": response.get("reasons"),
        "model_version": after.model_version,
        "thresholds_version": after.thresholds_version,
    }
    if event == LEAD_SCORE_CHANGED and before is not None:
        data["score_change"] = score_change(before, after)
    return {"type": event, "timestamp": _iso(now), "data": data}


def _delivery_row(
    subscription_id: str, event: str, lead_id: str | None, payload: str, now: dt.datetime
) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "subscription_id": subscription_id,
        "event_type": event,
        "lead_id": lead_id,
        "payload": payload,
        "created_at": now,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "claimed_by": None,
        "claimed_until": None,
        "last_status_code": None,
        "last_error": None,
        "delivered_at": None,
    }


# ---- delivering ---------------------------------------------------------------------------------------------------


def claim_due(
    conn_or_engine: Connection | Engine, worker_id: str, limit: int, lease_seconds: float, now: dt.datetime
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries of active subscriptions to `worker_id` for `lease_seconds`.

    Two workers never hold the same delivery at once: on PostgreSQL the rows are locked FOR UPDATE SKIP LOCKED (a
    second worker takes the next ones instead of waiting), on SQLite the claim is one immediate transaction (the
    write lock from the first read). A worker that dies holding a lease lets the delivery go when the lease ends.
    Given an engine, the claim commits on its own; given a connection, in the caller's transaction.
    """
    now = _utc(now)
    if isinstance(conn_or_engine, Engine):
        with _write_transaction(conn_or_engine) as conn:
            return _claim(conn, worker_id, limit, lease_seconds, now)
    return _claim(conn_or_engine, worker_id, limit, lease_seconds, now)


def _claim(
    conn: Connection, worker_id: str, limit: int, lease_seconds: float, now: dt.datetime
) -> list[ClaimedDelivery]:
    d, s = webhook_deliveries.c, webhook_subscriptions.c
    due = (
        select(d.id)
        .join(webhook_subscriptions, s.id == d.subscription_id)
        .where(d.status == PENDING, d.next_attempt_at <= now, s.active.is_(True))
        .where((d.claimed_until.is_(None)) | (d.claimed_until <= now))
        .order_by(d.next_attempt_at, d.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=webhook_deliveries)  # SQLite renders no FOR UPDATE: its lock is held
    )
    ids = list(conn.execute(due).scalars())
    if not ids:
        return []
    until = now + dt.timedelta(seconds=lease_seconds)
    conn.execute(update(webhook_deliveries).where(d.id.in_(ids)).values(claimed_by=worker_id, claimed_until=until))
    rows = conn.execute(
        select(d.id, d.subscription_id, s.url, s.secret, d.payload, d.attempts)
        .join(webhook_subscriptions, s.id == d.subscription_id)
        .where(d.id.in_(ids))
        .order_by(d.next_attempt_at, d.id)
    )
    return [ClaimedDelivery(r.id, r.subscription_id, r.url, r.secret, r.payload, r.attempts) for r in rows]


@contextlib.contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the database's write lock from its first statement on SQLite; engine.begin() elsewhere.

    SQLite's default (deferred) transaction reads first and asks for the write lock only at the UPDATE, which fails
    at once (no busy wait) when another connection wrote in between; BEGIN IMMEDIATE waits for the lock up front.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        # The sqlite3 module begins transactions by itself before a write; an explicit BEGIN comes first instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def record_attempt(
    conn: Connection,
    delivery_id: str,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    now: dt.datetime,
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
) -> str | None:
    """Log one attempt and move the delivery on: `delivered` on a 2xx, else pending until the next try, or `dead`.

    Returns the delivery's status after it (None when it no longer exists: its subscription was deleted). A
    delivery another worker already delivered (its lease ran out meanwhile) stays delivered.
    """
    now = _utc(now)
    d = webhook_deliveries.c
    row = conn.execute(select(d.status, d.attempts).where(d.id == delivery_id)).first()
    if row is None:
        return None
    text = None if error is None else error[:MAX_ERROR_CHARS]
    conn.execute(
        insert(webhook_attempts).values(
            delivery_id=delivery_id, attempted_at=now, status_code=status_code, error=text, duration_ms=duration_ms
        )
    )
    ok = error is None and status_code is not None and 200 <= status_code < 300
    if row.status != PENDING:
        return str(row.status)
    attempts = row.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_status_code": status_code,
        "last_error": text,
        "claimed_by": None,
        "claimed_until": None,
    }
    if ok:
        values |= {"status": DELIVERED, "delivered_at": now, "next_attempt_at": None}
    elif attempts >= policy.max_attempts:
        values |= {"status": DEAD, "next_attempt_at": None}
    else:
        values["next_attempt_at"] = now + dt.timedelta(seconds=policy.delay(attempts, rng))
    conn.execute(update(webhook_deliveries).where(d.id == delivery_id).values(values))
    return str(values.get("status", PENDING))


def replay(conn: Connection, delivery_id: str, now: dt.datetime) -> Delivery | None:
    """Send a dead or delivered delivery again (same id, same body): pending now, with a new retry budget.

    Its earlier attempts stay in the log. None when there is no such delivery; a pending one is left as it is
    (ReplayError), since it is on its way already.
    """
    current = get_delivery(conn, delivery_id, with_log=False)
    if current is None:
        return None
    if current.status == PENDING:
        raise ReplayError(f"delivery {delivery_id} is pending already: it will be tried at {current.next_attempt_at}")
    now = _utc(now)
    conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id)
        .values(status=PENDING, attempts=0, next_attempt_at=now, claimed_by=None, claimed_until=None, delivered_at=None)
    )
    return get_delivery(conn, delivery_id)


class ReplayError(ValueError):
    """A replay of a delivery that is still pending."""


# ---- the delivery log ---------------------------------------------------------------------------------------------


def get_delivery(conn: Connection, delivery_id: str, *, with_log: bool = True) -> Delivery | None:
    """One delivery (with its attempts), or None."""
    row = conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).first()
    if row is None:
        return None
    return _delivery(row, _attempts(conn, [delivery_id]).get(delivery_id, ()) if with_log else ())


def deliveries(
    conn: Connection,
    subscription_id: str,
    status: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> list[Delivery]:
    """A subscription's deliveries, newest first, each with its attempts: the delivery log.

    `before` is the id of the last delivery of the previous page: the page goes on after it.
    """
    d = webhook_deliveries.c
    query = select(webhook_deliveries).where(d.subscription_id == subscription_id)
    if status is not None:
        if status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}: one of {', '.join(STATUSES)}")
        query = query.where(d.status == status)
    if before is not None:
        cursor = conn.execute(select(d.created_at, d.id).where(d.id == before)).first()
        if cursor is not None:
            query = query.where(tuple_(d.created_at, d.id) < tuple_(cursor.created_at, cursor.id))
    rows = list(conn.execute(query.order_by(d.created_at.desc(), d.id.desc()).limit(limit)))
    attempts = _attempts(conn, [row.id for row in rows])
    return [_delivery(row, attempts.get(row.id, ())) for row in rows]


def _attempts(conn: Connection, delivery_ids: list[str]) -> dict[str, tuple[Attempt, ...]]:
    if not delivery_ids:
        return {}
    a = webhook_attempts.c
    found: dict[str, list[Attempt]] = {}
    rows = conn.execute(select(webhook_attempts).where(a.delivery_id.in_(delivery_ids)).order_by(a.id))
    for row in rows:
        attempt = Attempt(stored_time(row.attempted_at), row.status_code, row.error, row.duration_ms)
        found.setdefault(row.delivery_id, []).append(attempt)
    return {key: tuple(value) for key, value in found.items()}


# ---- rows ---------------------------------------------------------------------------------------------------------


def _subscription_values(subscription: Subscription) -> dict[str, Any]:
    return {
        "url": subscription.url,
        "secret": subscription.secret,
        "events": json.dumps(list(subscription.events)),
        "min_score_change": subscription.min_score_change,
        "active": subscription.active,
        "description": subscription.description,
        "updated_at": subscription.updated_at,
    }


def _subscription(row: Row[Any]) -> Subscription:
    return Subscription(
        id=row.id,
        url=row.url,
        secret=row.secret,
        events=tuple(json.loads(row.events)),
        min_score_change=row.min_score_change,
        active=bool(row.active),
        description=row.description,
        created_at=stored_time(row.created_at),
        updated_at=stored_time(row.updated_at),
    )


def _delivery(row: Row[Any], log: tuple[Attempt, ...]) -> Delivery:
    return Delivery(
        id=row.id,
        subscription_id=row.subscription_id,
        event_type=row.event_type,
        lead_id=row.lead_id,
        payload=row.payload,
        created_at=stored_time(row.created_at),
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=None if row.next_attempt_at is None else stored_time(row.next_attempt_at),
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        delivered_at=None if row.delivered_at is None else stored_time(row.delivered_at),
        log=log,
    )


def _utc(now: dt.datetime | None) -> dt.datetime:
    """`now` in UTC (SQLite keeps times as text without a zone: every stored time must be UTC to compare)."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("times must be time-zone aware")
    return now.astimezone(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
