"""Writes to the lead timeline: leads created and changed, touches stored once, Segment messages; rescores queued.

Every function works in the caller's transaction and queues the rescores its change calls for in it (the durable
rescore queue), so a change and its rescore commit together. A refused change raises IngestError naming the field;
the caller rolls the transaction back, so nothing of a refused request is stored.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Connection, Row, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from features.spec import ACTIVITY_TYPES, LIFECYCLE_CHAIN, LIFECYCLE_PREREQUISITES
from timeline.engine import stored_time
from timeline.event_map import ACCOUNT_TARGETS, CUSTOM_PREFIX, EventMap
from timeline.history import lead_record
from timeline.queue import enqueue_causes
from timeline.schema import (
    LIFECYCLE_STAMPS,
    PROFILE_TEXT,
    accounts,
    identities,
    leads,
    rescore_queue,
    touches,
    unmapped_events,
)

Loc = tuple[str | int, ...]
NOT_FOUND, CONFLICT, INVALID = 404, 409, 422

# As the score API accepts them (serving.schemas): the feature engine keeps epoch seconds in 32 bits, so a stored
# touch or stamp outside these years could never be scored.
EARLIEST = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
MAX_TEXT = 256  # the score API's text limit: a stored field must fit a score request
# A touch dated a little ahead is a client clock running fast; far ahead is a bug (a date typed wrong, ms for s).
DEFAULT_MAX_FUTURE = dt.timedelta(days=1)
# Touch details are page URLs, campaign names, form fields: a few hundred bytes. Far more is a body pasted in.
DEFAULT_MAX_PROPERTY_BYTES = 16_384
# Rows per INSERT: a few statements per request, well under SQLite's 32,766 bound variables (9 columns a row).
INSERT_CHUNK = 500

NUMBER_FIELDS = ("employee_count", "annual_revenue")
LEAD_FIELDS: tuple[str, ...] = ("account_id", "created_at", *PROFILE_TEXT, *NUMBER_FIELDS, *LIFECYCLE_STAMPS, "custom")
_STAMP_SET = frozenset(LIFECYCLE_STAMPS)
_ACTIVITY_TYPE_SET = frozenset(ACTIVITY_TYPES)


@dataclass(frozen=True, slots=True)
class Problem:
    """One refused value: where (a FastAPI-style loc, without the leading "body"), what is wrong, its kind."""

    loc: Loc
    msg: str
    type: str

    def as_detail(self, *prefix: str | int) -> dict[str, object]:
        """The problem as an entry of a 4xx's detail list, its loc under `prefix`."""
        return {"loc": [*prefix, *self.loc], "msg": self.msg, "type": self.type}


class IngestError(Exception):
    """A change the store refuses: the HTTP status it means (404, 409 or 422) and every problem, by field."""

    def __init__(self, status: int, problems: Sequence[Problem]) -> None:
        self.status = status
        self.problems = list(problems)
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in self.problems))


def _refuse(status: int, loc: Loc, msg: str, kind: str) -> IngestError:
    return IngestError(status, [Problem(loc, msg, kind)])


@dataclass(frozen=True, slots=True)
class LeadChange:
    """What a create or update did: the lead as stored now, whether it was new, and each changed field."""

    lead_id: str
    created: bool
    changed: dict[str, tuple[Any, Any]]  # field -> (before, after); a new lead's given fields have before None
    lead: dict[str, Any]  # the stored lead, as the score API's `lead` object
    accounts: tuple[str, ...] = ()  # the accounts before and after: whose colleagues the change concerns


@dataclass(frozen=True, slots=True)
class TouchIn:
    """A touch to store: a stored lead's, or an anonymous visitor's (anonymous_id without lead_id)."""

    occurred_at: dt.datetime
    activity_type: str
    lead_id: str | None = None
    anonymous_id: str | None = None
    properties: Mapping[str, Any] | None = None
    activity_id: str | None = None


@dataclass(frozen=True, slots=True)
class TouchesAdded:
    """Touches stored (new) and duplicates (already stored, or twice in the request); the leads that got new ones."""

    stored: int
    duplicates: int
    lead_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TouchLimits:
    """What a touch may be: how far ahead of now its time, how large its properties (compact JSON, UTF-8)."""

    max_future: dt.timedelta = DEFAULT_MAX_FUTURE
    max_property_bytes: int = DEFAULT_MAX_PROPERTY_BYTES


# What a write queues for a rescore is gathered on the connection and queued in one statement when the write is
# done (timeline.queue.enqueue_causes says why). A lead given several causes is recorded under the most direct.
_QUEUED = "leadscore.rescores_to_queue"
_P = ParamSpec("_P")
_R = TypeVar("_R")
_CAUSE_RANK = {cause: rank for rank, cause in enumerate(("touch", "identify", "lifecycle", "profile", "colleague"))}


def _defer(conn: Connection, lead_ids: Iterable[str], cause: str) -> None:
    queued: dict[str, str] = conn.info.setdefault(_QUEUED, {})
    for lead_id in lead_ids:
        if lead_id not in queued or _CAUSE_RANK[cause] < _CAUSE_RANK[queued[lead_id]]:
            queued[lead_id] = cause


def _queueing(write: Callable[Concatenate[Connection, _P], _R]) -> Callable[Concatenate[Connection, _P], _R]:
    """A public write: what it queues for a rescore is queued once, when it is done."""

    @functools.wraps(write)
    def queued_once(conn: Connection, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        conn.info.pop(_QUEUED, None)  # left by a write that failed half-way on this connection: rolled back
        result = write(conn, *args, **kwargs)
        _queue_deferred(conn)
        return result

    return queued_once


def _queue_deferred(conn: Connection) -> None:
    queued: dict[str, str] = conn.info.pop(_QUEUED, {})
    if queued:
        enqueue_causes(conn, queued)


# ---- leads -------------------------------------------------------------------------------------------------------


@_queueing
def upsert_lead(conn: Connection, lead_id: str, changes: Mapping[str, Any], *, now: dt.datetime) -> LeadChange:
    """Create the lead, or change only the fields given (None clears a profile field); queue its rescore.

    Lifecycle stamps only move forward, as the contract has them: a stamp cannot be cleared or moved earlier, must
    not precede the stamps before it in LIFECYCLE_CHAIN (created_at first), and recycled_at needs lost_at,
    requalified_at needs recycled_at. A stored lead's created_at does not change. Custom attributes merge (a None
    value removes one). Refusals raise IngestError: 409 when the change conflicts with what is stored, 422 else.
    """
    change = _upsert(conn, lead_id, changes, now=now, loc=())
    _queue_lead_changes(conn, [change])
    return change


@_queueing
def upsert_leads(
    conn: Connection, items: Sequence[tuple[str, Mapping[str, Any]]], *, now: dt.datetime
) -> list[LeadChange]:
    """upsert_lead for each (lead_id, changes), in order; a refusal names the item (loc `leads`, index, field)."""
    changes = [_upsert(conn, lead_id, values, now=now, loc=("leads", i)) for i, (lead_id, values) in enumerate(items)]
    _queue_lead_changes(conn, changes)
    return changes


def _upsert(conn: Connection, lead_id: str, changes: Mapping[str, Any], *, now: dt.datetime, loc: Loc) -> LeadChange:
    problems = [p for name, value in changes.items() if (p := _value_problem(name, value, (*loc, name)))]
    if problems:
        raise IngestError(INVALID, problems)
    values = {name: _utc(value) if isinstance(value, dt.datetime) else value for name, value in changes.items()}
    row = _lead_row(conn, lead_id)
    if row is None:
        if values.get("created_at") is None:
            raise _refuse(INVALID, (*loc, "created_at"), "created_at is required to create a lead", "missing")
        merged = _checked(lead_id, {}, values, loc, stored=False)
        record = _row_values(merged)
        created = conn.execute(
            _insert(conn, leads)
            .values(lead_id=lead_id, updated_at=now, **record)
            .on_conflict_do_nothing(index_elements=[leads.c.lead_id])
            .returning(leads.c.lead_id)
        ).first()
        if created is not None:
            changed = {name: (None, merged[name]) for name in values if merged.get(name) not in (None, {})}
            after = _lead_row(conn, lead_id)
            assert after is not None  # inserted in this transaction
            return LeadChange(lead_id, True, changed, lead_record(after), _accounts(None, merged.get("account_id")))
        row = _lead_row(conn, lead_id)  # created meanwhile by a concurrent request: this one is an update
        assert row is not None
    before = _stored(row)
    merged = _checked(lead_id, before, values, loc, stored=True)
    changed = {
        name: (before.get(name), merged.get(name)) for name in LEAD_FIELDS if before.get(name) != merged.get(name)
    }
    if changed:
        record = _row_values({name: merged.get(name) for name in changed})
        conn.execute(update(leads).where(leads.c.lead_id == lead_id).values(updated_at=now, **record))
        row = _lead_row(conn, lead_id)
        assert row is not None
    accounts_touched = _accounts(before.get("account_id"), merged.get("account_id"))
    return LeadChange(lead_id, False, changed, lead_record(row), accounts_touched)


def _lead_row(conn: Connection, lead_id: str) -> Row[Any] | None:
    # FOR UPDATE (PostgreSQL; SQLite has one writer anyway): two changes of one lead check and write in turn.
    return conn.execute(select(leads).where(leads.c.lead_id == lead_id).with_for_update()).first()


def _accounts(*account_ids: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for a in account_ids if isinstance(a, str)))


def _stored(row: Row[Any]) -> dict[str, Any]:
    """A stored lead's fields, times in UTC and custom attributes as a dict."""
    values: dict[str, Any] = {}
    for name in LEAD_FIELDS:
        if name == "custom":
            values[name] = json.loads(row.custom) if row.custom else {}
            continue
        value = getattr(row, name)
        values[name] = stored_time(value) if isinstance(value, dt.datetime) else value
    return values


def _row_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Fields as the leads table stores them (custom attributes as JSON, None when there are none)."""
    record = dict(values)
    if "custom" in record:
        custom = record["custom"]
        record["custom"] = json.dumps(custom, sort_keys=True) if custom else None
    return record


def _checked(
    lead_id: str, before: Mapping[str, Any], values: Mapping[str, Any], loc: Loc, *, stored: bool
) -> dict[str, Any]:
    """The lead's fields after the change, or IngestError naming each field the change may not set so."""
    merged = dict(before)
    for name, value in values.items():
        if name == "custom":
            custom = dict(before.get("custom") or {}) if value is not None else {}
            for key, item in (value or {}).items():
                if item is None:
                    custom.pop(key, None)
                else:
                    custom[key] = item
            merged["custom"] = custom
        else:
            merged[name] = value
    problems: list[tuple[int, Problem]] = []

    def shown(name: str) -> str:
        at = merged[name]
        return f"{name} {_iso(at)} ({'stored' if name not in values else 'given'})"

    if stored and "created_at" in values and values["created_at"] != before.get("created_at"):
        problems.append((CONFLICT, Problem((*loc, "created_at"),
                         f"created_at of stored lead {lead_id!r} cannot change (stored: {_iso(before['created_at'])})",
                         "immutable")))  # fmt: skip
    for name in LIFECYCLE_STAMPS:
        if name not in values or before.get(name) is None:
            continue
        old, new = before[name], values[name]
        if new is None:
            problems.append((CONFLICT, Problem((*loc, name), f"{name} cannot be cleared: lifecycle stamps only move "
                             f"forward (stored: {_iso(old)})", "lifecycle_backwards")))  # fmt: skip
        elif new < old:
            problems.append((CONFLICT, Problem((*loc, name), f"{name} {_iso(new)} is earlier than the stored "
                             f"{_iso(old)}: lifecycle stamps only move forward", "lifecycle_backwards")))  # fmt: skip
    if not problems:
        for i, later in enumerate(LIFECYCLE_CHAIN[1:], start=1):
            for earlier in LIFECYCLE_CHAIN[:i]:
                if merged.get(later) is None or merged.get(earlier) is None or merged[later] >= merged[earlier]:
                    continue
                if later not in values and earlier not in values:
                    continue  # stored that way before this change: not this request's doing
                named = later if later in values else earlier
                other = earlier if named == later else later
                status = CONFLICT if other not in values else INVALID
                problems.append((status, Problem((*loc, named), f"{shown(later)} is earlier than {shown(earlier)}: "
                                 "lifecycle stamps must not run backwards", "lifecycle_order")))  # fmt: skip
        for column, prerequisite in LIFECYCLE_PREREQUISITES:
            if merged.get(column) is not None and merged.get(prerequisite) is None and column in values:
                message = f"{column} needs {prerequisite}, which lead {lead_id!r} does not have"
                status = CONFLICT if stored else INVALID
                problems.append((status, Problem((*loc, column), message, "lifecycle_prerequisite")))
    if problems:
        raise IngestError(max(status for status, _ in problems), [problem for _, problem in problems])
    return merged


def _value_problem(name: str, value: object, loc: Loc) -> Problem | None:
    """Why `value` cannot be stored as the lead field `name` (a wrong type, out of bounds), or None."""
    if name not in LEAD_FIELDS:
        return Problem(loc, f"{name!r} is not a lead field (one of {', '.join(LEAD_FIELDS)})", "extra_forbidden")
    if value is None:
        return None
    if name == "created_at" or name in _STAMP_SET:
        if not isinstance(value, dt.datetime):
            return Problem(loc, "must be a time", "datetime_type")
        if not EARLIEST <= _utc(value) <= LATEST:
            return Problem(loc, f"must lie between {EARLIEST.date()} and {LATEST.date()}", "value_error")
        return None
    if name in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            return Problem(loc, "must be a finite number >= 0", "value_error")
        if name == "employee_count" and not float(value).is_integer():
            return Problem(loc, "must be a whole number", "int_type")
        return None
    if name == "custom":
        if not isinstance(value, Mapping):
            return Problem(loc, "must be an object of custom attributes", "dict_type")
        for key, item in value.items():
            if item is not None and (isinstance(item, bool) or not isinstance(item, int | float | str)):
                return Problem((*loc, key), "a custom attribute is a number or text", "value_error")
            if isinstance(item, float) and not math.isfinite(item):
                return Problem((*loc, key), "must be a finite number", "finite_number")
        return None
    if not isinstance(value, str):
        return Problem(loc, "must be text", "string_type")
    if len(value) > MAX_TEXT:
        return Problem(loc, f"at most {MAX_TEXT} characters", "string_too_long")
    if name == "account_id" and not value:
        return Problem(loc, "must not be empty", "string_too_short")
    return None


def _queue_lead_changes(conn: Connection, changes: Sequence[LeadChange]) -> None:
    """Rescore each changed lead (lifecycle when a stamp moved, else profile) and its colleagues.

    Colleagues too, whatever changed: the buying-group features read colleagues' lifecycle stamps and count who is
    known at the account, and an account change moves the lead between two buying groups (both are rescored).
    """
    done = [c for c in changes if c.changed]
    lifecycle = sorted({c.lead_id for c in done if _STAMP_SET & c.changed.keys()})
    profile = sorted({c.lead_id for c in done} - set(lifecycle))
    _defer(conn, lifecycle, "lifecycle")
    _defer(conn, profile, "profile")
    _queue_colleagues(conn, [a for c in done for a in c.accounts], {c.lead_id for c in done})


def _queue_colleagues(conn: Connection, account_ids: Iterable[str], exclude: set[str]) -> None:
    wanted = sorted(set(account_ids))
    if not wanted:
        return
    found = conn.execute(select(leads.c.lead_id).where(leads.c.account_id.in_(wanted))).scalars()
    _defer(conn, sorted(set(found) - exclude), "colleague")


# ---- touches -----------------------------------------------------------------------------------------------------

# How a touch's fields are named in a request: the activities API's own names, or a Segment message's.
ACTIVITY_NAMES: Mapping[str, str] = {
    "lead_id": "lead_id", "anonymous_id": "anonymous_id", "occurred_at": "occurred_at",
    "activity_type": "activity_type", "properties": "properties", "activity_id": "activity_id",
}  # fmt: skip
SEGMENT_NAMES: Mapping[str, str] = {
    "lead_id": "userId", "anonymous_id": "anonymousId", "occurred_at": "timestamp",
    "activity_type": "event", "properties": "properties", "activity_id": "messageId",
}  # fmt: skip


@_queueing
def add_touches(
    conn: Connection, new: Sequence[TouchIn], *, now: dt.datetime, limits: TouchLimits = TouchLimits()
) -> TouchesAdded:
    """Store each touch once (by activity_id, else by its content); queue the touched leads and their colleagues.

    A touch of a lead not stored yet is refused (404) unless it comes under an anonymous_id alone: then it waits,
    lead_id None, until that id is identified (or goes straight to the lead it was identified as). Refusals name
    the touch's index (loc `activities`, index, field).
    """
    return _add_touches(conn, new, [("activities", i) for i in range(len(new))], ACTIVITY_NAMES, now, limits)


def _add_touches(
    conn: Connection,
    new: Sequence[TouchIn],
    locs: Sequence[Loc],
    names: Mapping[str, str],
    now: dt.datetime,
    limits: TouchLimits,
) -> TouchesAdded:
    problems: list[Problem] = []
    details: list[str | None] = []
    for touch, loc in zip(new, locs, strict=True):
        found, text = _touch_problems(touch, loc, names, now, limits)
        problems += found
        details.append(text)
    if problems:
        raise IngestError(INVALID, problems)
    named = sorted({t.lead_id for t in new if t.lead_id is not None})
    known = set(conn.execute(select(leads.c.lead_id).where(leads.c.lead_id.in_(named))).scalars()) if named else set()
    unknown = [
        Problem((*loc, names["lead_id"]), f"lead {t.lead_id!r} is not stored: create it first (PUT /v1/leads/"
                "{lead_id}), or send the touch under an anonymous id", "not_found")
        for t, loc in zip(new, locs, strict=True) if t.lead_id is not None and t.lead_id not in known
    ]  # fmt: skip
    if unknown:
        raise IngestError(NOT_FOUND, unknown)
    anonymous = sorted({t.anonymous_id for t in new if t.lead_id is None and t.anonymous_id is not None})
    identified = _identified(conn, anonymous, now)
    rows: dict[str, dict[str, Any]] = {}
    for touch, text in zip(new, details, strict=True):
        key = touch_key(touch, text)
        if key in rows:
            continue  # the same touch twice in one request: a duplicate like any other
        lead_id = touch.lead_id if touch.lead_id is not None else identified.get(touch.anonymous_id or "")
        rows[key] = {
            "touch_key": key,
            "activity_id": touch.activity_id,
            "lead_id": lead_id,
            "anonymous_id": touch.anonymous_id,
            "occurred_at": _utc(touch.occurred_at),
            "activity_type": touch.activity_type,
            "properties": text,
            "received_at": now,
        }
    batch = list(rows.values())
    touched: set[str] = set()
    stored = 0
    for start in range(0, len(batch), INSERT_CHUNK):
        inserted = _insert_new_touches(conn, batch[start : start + INSERT_CHUNK])
        stored += len(inserted)
        touched.update(lead_id for lead_id in inserted if lead_id is not None)
    lead_ids = sorted(touched)
    if lead_ids:
        _defer(conn, lead_ids, "touch")
        _queue_account_colleagues(conn, lead_ids)
    return TouchesAdded(stored=stored, duplicates=len(new) - stored, lead_ids=tuple(lead_ids))


_TOUCH_COLUMNS = ("touch_key", "activity_id", "lead_id", "anonymous_id", "occurred_at", "activity_type", "properties",
                  "received_at")  # fmt: skip


def _insert_new_touches(conn: Connection, rows: list[dict[str, Any]]) -> Sequence[str | None]:
    """Insert the rows whose touch_key is new, in one statement; the lead_id of each inserted row."""
    if conn.dialect.name == "postgresql":
        # One array per column, unnested into rows: a short statement whatever the batch size, which the driver
        # prepares once, instead of a VALUES list of 8 parameters a row that it parses again for every batch.
        arrays = func.unnest(
            *(bindparam(name, type_=ARRAY(touches.c[name].type)) for name in _TOUCH_COLUMNS)
        ).table_valued(*_TOUCH_COLUMNS).render_derived(name="new")  # fmt: skip
        statement = (
            postgresql.insert(touches)
            .from_select(list(_TOUCH_COLUMNS), select(*(arrays.c[name] for name in _TOUCH_COLUMNS)))
            .on_conflict_do_nothing(index_elements=[touches.c.touch_key])
            .returning(touches.c.lead_id)
        )
        columns = {name: [row[name] for row in rows] for name in _TOUCH_COLUMNS}
        return conn.execute(statement, columns).scalars().all()
    # Executed with many rows, SQLAlchemy sends multi-row INSERTs ("insertmanyvalues") of a statement compiled once.
    statement = (
        _insert(conn, touches).on_conflict_do_nothing(index_elements=[touches.c.touch_key]).returning(touches.c.lead_id)
    )
    return conn.execute(statement, rows).scalars().all()


def _touch_problems(
    touch: TouchIn, loc: Loc, names: Mapping[str, str], now: dt.datetime, limits: TouchLimits
) -> tuple[list[Problem], str | None]:
    """What is wrong with one touch, and its properties as stored (compact JSON)."""
    problems: list[Problem] = []
    if touch.lead_id is None and touch.anonymous_id is None:
        problems.append(Problem((*loc, names["lead_id"]), f"a touch needs {names['lead_id']} (a stored lead) or "
                                f"{names['anonymous_id']} (an anonymous visitor)", "missing"))  # fmt: skip
    if touch.activity_type not in _ACTIVITY_TYPE_SET:
        problems.append(Problem((*loc, names["activity_type"]), f"{touch.activity_type!r} is not an activity type "
                                f"(one of {', '.join(ACTIVITY_TYPES)})", "literal_error"))  # fmt: skip
    at = _utc(touch.occurred_at)
    latest = now + limits.max_future
    if at < EARLIEST:
        problems.append(Problem((*loc, names["occurred_at"]), f"{_iso(at)} is before {EARLIEST.date()}: not a real "
                                "touch", "too_early"))  # fmt: skip
    elif at > latest:
        problems.append(Problem((*loc, names["occurred_at"]), f"{_iso(at)} is more than "
                                f"{_duration(limits.max_future)} ahead of now ({_iso(now)})", "in_future"))  # fmt: skip
    text = None
    if touch.properties is not None:
        try:
            text = json.dumps(
                touch.properties, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as err:
            problems.append(Problem((*loc, names["properties"]), f"not storable as JSON: {err}", "value_error"))
        else:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > limits.max_property_bytes:
                problems.append(Problem((*loc, names["properties"]), f"{size:,} bytes as JSON; at most "
                                        f"{limits.max_property_bytes:,} per touch", "too_large"))  # fmt: skip
    return problems, text


def touch_key(touch: TouchIn, properties: str | None = None) -> str:
    """The touch's identity: its activity_id, else a digest of its content (who, when in UTC, what, details).

    `properties`: the touch's properties as sorted compact JSON, when the caller has it already.
    """
    if touch.activity_id is not None:
        return f"id:{touch.activity_id}"
    if properties is None and touch.properties is not None:
        properties = json.dumps(touch.properties, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    who = f"lead:{touch.lead_id}" if touch.lead_id is not None else f"anon:{touch.anonymous_id}"
    # Unit separators between the parts: no id, type or time contains one, so two touches never share a content.
    content = "\x1f".join((who, _iso(touch.occurred_at), touch.activity_type, properties or ""))
    return "sha:" + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


def _identified(conn: Connection, anonymous_ids: Sequence[str], now: dt.datetime) -> dict[str, str]:
    """The lead each anonymous id was identified as; an id seen for the first time is recorded (not identified)."""
    if not anonymous_ids:
        return {}
    query = select(identities.c.anonymous_id, identities.c.lead_id).where(identities.c.anonymous_id.in_(anonymous_ids))
    found = {row.anonymous_id: row.lead_id for row in conn.execute(query)}
    new = [{"anonymous_id": a, "lead_id": None, "first_seen_at": now} for a in anonymous_ids if a not in found]
    if new:
        conn.execute(_insert(conn, identities).values(new).on_conflict_do_nothing(index_elements=["anonymous_id"]))
    return {anonymous_id: lead_id for anonymous_id, lead_id in found.items() if lead_id is not None}


def _queue_account_colleagues(conn: Connection, lead_ids: Sequence[str]) -> None:
    """Queue the other leads of these leads' accounts ("colleague"): their buying-group features changed."""
    their_accounts = select(leads.c.account_id).where(leads.c.lead_id.in_(lead_ids), leads.c.account_id.is_not(None))
    found = conn.execute(select(leads.c.lead_id).where(leads.c.account_id.in_(their_accounts.scalar_subquery())))
    _defer(conn, sorted(set(found.scalars()) - set(lead_ids)), "colleague")


# ---- Segment -----------------------------------------------------------------------------------------------------

SegmentType = Literal["identify", "track", "page", "screen", "group", "alias"]


@dataclass(frozen=True, slots=True)
class SegmentMessage:
    """A Segment-spec message, as validated by the API (spec field names in snake case)."""

    type: SegmentType
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    name: str | None = None
    properties: Mapping[str, Any] | None = None
    traits: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None
    timestamp: dt.datetime | None = None  # when it happened: timestamp, else originalTimestamp, sentAt, receivedAt
    message_id: str | None = None
    group_id: str | None = None
    previous_id: str | None = None


@dataclass(slots=True)
class EventsApplied:
    """What a request's Segment messages did."""

    messages: int = 0
    leads_changed: list[str] = field(default_factory=list)
    touches_stored: int = 0
    duplicates: int = 0
    identified: int = 0  # anonymous touches that joined a lead's history
    unmapped: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, name) -> how often, ignored


@_queueing
def apply_events(
    conn: Connection,
    messages: Sequence[SegmentMessage],
    event_map: EventMap,
    *,
    now: dt.datetime,
    limits: TouchLimits = TouchLimits(),
    loc: Loc = ("batch",),
) -> EventsApplied:
    """Apply Segment messages in order, in the caller's transaction.

    identify upserts a lead (and links its anonymous id), track and page store touches through the event map, group
    sets the account, alias links an anonymous id to a lead. A message's problem is named by its index under `loc`
    (empty for a single message) and the spec's field name.
    """
    applied = EventsApplied(messages=len(messages))
    pending: list[tuple[TouchIn, Loc]] = []  # touches are stored together, before any message that reads them

    def flush() -> None:
        if pending:
            added = _add_touches(conn, [t for t, _ in pending], [at for _, at in pending], SEGMENT_NAMES, now, limits)
            applied.touches_stored += added.stored
            applied.duplicates += added.duplicates
            pending.clear()

    for i, message in enumerate(messages):
        at: Loc = (*loc, i) if loc else ()
        if message.type in ("track", "page", "screen"):
            touch = _segment_touch(message, event_map, at, now, applied)
            if touch is not None:
                pending.append((touch, at))
            continue
        flush()
        if message.type == "identify":
            _identify(conn, message, event_map, at, now, applied)
        elif message.type == "group":
            _group(conn, message, event_map, at, now, applied)
        else:
            _alias(conn, message, at, now, applied)
    flush()
    if applied.unmapped:
        _count_unmapped(conn, applied.unmapped, now)
    return applied


def _when(message: SegmentMessage, now: dt.datetime) -> dt.datetime:
    return message.timestamp if message.timestamp is not None else now


def _segment_touch(
    message: SegmentMessage, event_map: EventMap, at: Loc, now: dt.datetime, applied: EventsApplied
) -> TouchIn | None:
    if message.type == "track":
        if not message.event:
            raise _refuse(INVALID, (*at, "event"), "a track call needs the event's name", "missing")
        kind, name, activity_type = "track", message.event, event_map.track_type(message.event)
        where = "event"
    else:
        properties = message.properties or {}
        page_name = message.name or _text(properties.get("name"))
        path = _page_path(message)
        kind, name = "page", page_name or path or "(unnamed page)"
        activity_type = event_map.page.activity_type(page_name, path)
        where = "name"
    if activity_type is None:
        if event_map.unknown == "refuse":
            raise _refuse(INVALID, (*at, where), f"{kind} event {name!r} is not in the event map (LEADSCORE_EVENT_MAP "
                          "sends it nowhere, and refuses unknown events)", "unknown_event")  # fmt: skip
        applied.unmapped[(kind, name)] = applied.unmapped.get((kind, name), 0) + 1
        return None
    return TouchIn(
        occurred_at=_when(message, now),
        activity_type=activity_type,
        lead_id=message.user_id,
        anonymous_id=message.anonymous_id,
        properties=message.properties,
        activity_id=message.message_id,
    )


def _page_path(message: SegmentMessage) -> str | None:
    """The page's path: properties.path, else context.page.path, else the path of properties.url."""
    path = _text((message.properties or {}).get("path"))
    if path is None and isinstance(page := (message.context or {}).get("page"), Mapping):
        path = _text(page.get("path"))
    if path is None and (url := _text((message.properties or {}).get("url"))) is not None:
        rest = url.split("://", 1)[-1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return path


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _identify(
    conn: Connection, message: SegmentMessage, event_map: EventMap, at: Loc, now: dt.datetime, applied: EventsApplied
) -> None:
    if message.user_id is None:
        if message.anonymous_id is None:
            raise _refuse(INVALID, (*at, "userId"), "an identify call needs userId or anonymousId", "missing")
        _identified(conn, [message.anonymous_id], now)  # a visitor's traits without a lead: nothing to keep
        return
    changes = trait_changes(message.traits or {}, event_map, (*at, "traits"))
    if _lead_row(conn, message.user_id) is None:
        changes.setdefault("created_at", _when(message, now))
    else:
        # A stored lead's created_at never changes: a createdAt trait sent again (or a CRM's rounding of it) says
        # nothing new, and must not refuse every later identify call of the lead.
        changes.pop("created_at", None)
    change = _upsert(conn, message.user_id, changes, now=now, loc=(*at, "traits"))
    _queue_lead_changes(conn, [change])
    if change.changed:
        applied.leads_changed.append(change.lead_id)
    if message.anonymous_id is not None:
        applied.identified += _link(conn, message.anonymous_id, message.user_id, (*at, "anonymousId"), now)


def _group(
    conn: Connection, message: SegmentMessage, event_map: EventMap, at: Loc, now: dt.datetime, applied: EventsApplied
) -> None:
    if message.group_id is None:
        raise _refuse(INVALID, (*at, "groupId"), "a group call needs groupId (the account)", "missing")
    if message.user_id is None:
        raise _refuse(INVALID, (*at, "userId"), "a group call needs the userId of a stored lead", "missing")
    if _lead_row(conn, message.user_id) is None:
        raise _refuse(NOT_FOUND, (*at, "userId"), f"lead {message.user_id!r} is not stored: identify it first",
                      "not_found")  # fmt: skip
    mapped = trait_changes(message.traits or {}, event_map, (*at, "traits"))
    account_fields = {name: value for name, value in mapped.items() if name in ACCOUNT_TARGETS}
    _store_account(conn, message.group_id, account_fields, now)
    change = _upsert(conn, message.user_id, {**account_fields, "account_id": message.group_id}, now=now, loc=at)
    _queue_lead_changes(conn, [change])
    if change.changed:
        applied.leads_changed.append(change.lead_id)


def _store_account(conn: Connection, account_id: str, traits: Mapping[str, Any], now: dt.datetime) -> None:
    row = conn.execute(select(accounts).where(accounts.c.account_id == account_id).with_for_update()).first()
    if row is None:
        text = json.dumps(dict(traits), sort_keys=True) if traits else None
        conn.execute(
            _insert(conn, accounts)
            .values(account_id=account_id, traits=text, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["account_id"])
        )
        return
    if traits:
        merged = {**(json.loads(row.traits) if row.traits else {}), **traits}
        conn.execute(
            update(accounts)
            .where(accounts.c.account_id == account_id)
            .values(traits=json.dumps(merged, sort_keys=True), updated_at=now)
        )


def _alias(conn: Connection, message: SegmentMessage, at: Loc, now: dt.datetime, applied: EventsApplied) -> None:
    previous, user = message.previous_id, message.user_id
    if previous is None or user is None:
        missing = "previousId" if previous is None else "userId"
        raise _refuse(INVALID, (*at, missing), "an alias call needs previousId and userId", "missing")
    if previous == user:
        return
    stored = set(conn.execute(select(leads.c.lead_id).where(leads.c.lead_id.in_([previous, user]))).scalars())
    if stored == {previous, user}:
        raise _refuse(CONFLICT, (*at, "previousId"), f"alias would merge two stored leads, {previous!r} and "
                      f"{user!r}: leads are never merged silently (merge them in the CRM, then erase one)",
                      "lead_merge")  # fmt: skip
    if user not in stored:
        raise _refuse(NOT_FOUND, (*at, "userId"), f"lead {user!r} is not stored: identify it first", "not_found")
    applied.identified += _link(conn, previous, user, (*at, "previousId"), now)


def _link(conn: Connection, anonymous_id: str, lead_id: str, loc: Loc, now: dt.datetime) -> int:
    """Record that `anonymous_id` is `lead_id`, give the lead that id's waiting touches; how many it got."""
    row = conn.execute(select(identities).where(identities.c.anonymous_id == anonymous_id).with_for_update()).first()
    if row is not None and row.lead_id not in (None, lead_id):
        raise _refuse(CONFLICT, loc, f"anonymous id {anonymous_id!r} is already identified as lead {row.lead_id!r}, "
                      f"not {lead_id!r}: leads are never merged silently", "identity_conflict")  # fmt: skip
    if row is None:
        conn.execute(
            _insert(conn, identities)
            .values(anonymous_id=anonymous_id, lead_id=lead_id, first_seen_at=now, identified_at=now)
            .on_conflict_do_nothing(index_elements=["anonymous_id"])
        )
    elif row.lead_id is None:
        conn.execute(
            update(identities)
            .where(identities.c.anonymous_id == anonymous_id)
            .values(lead_id=lead_id, identified_at=now)
        )
    claimed = conn.execute(
        update(touches)
        .where(touches.c.anonymous_id == anonymous_id, touches.c.lead_id.is_(None))
        .values(lead_id=lead_id)
    ).rowcount
    if claimed:
        _defer(conn, [lead_id], "identify")
        _queue_account_colleagues(conn, [lead_id])
    return int(claimed)


def trait_changes(traits: Mapping[str, Any], event_map: EventMap, loc: Loc) -> dict[str, Any]:
    """Lead field changes from Segment traits, through the event map's `traits`; IngestError naming a bad trait.

    Traits the map does not name, and traits whose value is null, change nothing. `email` keeps only its domain:
    the address itself is never stored.
    """
    changes: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    problems: list[Problem] = []
    for trait, target in event_map.traits.items():
        value = _trait(traits, trait)
        if value is None:
            continue
        where = (*loc, *trait.split("."))
        converted, problem = _trait_value(target, value)
        if problem is not None:
            problems.append(Problem(where, problem, "value_error"))
        elif target.startswith(CUSTOM_PREFIX):
            custom[target.removeprefix(CUSTOM_PREFIX)] = converted
        else:
            changes[target] = converted
    if problems:
        raise IngestError(INVALID, problems)
    if custom:
        changes["custom"] = custom
    return changes


def _trait(traits: Mapping[str, Any], dotted: str) -> object:
    value: object = traits
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _trait_value(target: str, value: object) -> tuple[Any, str | None]:
    """The trait's value as the lead field `target` holds it, or why it cannot be."""
    if target == "created_at" or target in _STAMP_SET:
        if not isinstance(value, str):
            return None, "must be an ISO 8601 time"
        try:
            at = _utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None, f"{value[:40]!r} is not an ISO 8601 time"
        return at, None
    if target in NUMBER_FIELDS:
        number: float
        if isinstance(value, bool):
            return None, "must be a number"
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.replace(",", "").strip())
            except ValueError:
                return None, f"{value[:40]!r} is not a number"
        else:
            return None, "must be a number"
        if not math.isfinite(number) or number < 0:
            return None, "must be a finite number >= 0"
        if target == "employee_count":
            if not float(number).is_integer():
                return None, "must be a whole number"
            return int(number), None
        return float(number), None
    if target.startswith(CUSTOM_PREFIX):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None, "a custom attribute is a number or text"
        return value, None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None, "must be text"
    text = str(value).strip()
    if target == "email_domain" and "@" in text:
        text = text.rsplit("@", 1)[1].strip().casefold()  # the domain only: the address is personal data
    if len(text) > MAX_TEXT:
        return None, f"at most {MAX_TEXT} characters"
    return text or None, None


def _count_unmapped(conn: Connection, counts: Mapping[tuple[str, str], int], now: dt.datetime) -> None:
    rows = [
        {"kind": kind, "name": name, "count": count, "first_seen_at": now, "last_seen_at": now}
        for (kind, name), count in sorted(counts.items())
    ]
    statement = _insert(conn, unmapped_events)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[unmapped_events.c.kind, unmapped_events.c.name],
            set_={
                "count": unmapped_events.c.count + statement.excluded.count,
                "last_seen_at": statement.excluded.last_seen_at,
            },
        ),
        rows,
    )


@dataclass(frozen=True, slots=True)
class UnmappedEvent:
    """An event name the map sends nowhere: how often it came, first and last."""

    kind: str
    name: str
    count: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


def unmapped(conn: Connection) -> list[UnmappedEvent]:
    """Every unmapped event name counted so far, most frequent first."""
    table = unmapped_events.c
    query = select(table.kind, table.name, table.count, table.first_seen_at, table.last_seen_at)
    return [
        UnmappedEvent(kind, name, int(count), stored_time(first), stored_time(last))
        for kind, name, count, first, last in conn.execute(query.order_by(table.count.desc(), table.kind, table.name))
    ]


def _changes_due(now: dt.datetime) -> ColumnElement[bool]:
    # Rescores of changes only: those the sweep queued for aged scores are upkeep, drained at leisure, and must not
    # hold back ingest (a sweep of a large store queues tens of thousands at once).
    return (rescore_queue.c.due_at <= now) & (rescore_queue.c.cause != "sweep")


def rescore_backlog(conn: Connection, now: dt.datetime) -> int:
    """Leads waiting for a due rescore of a change: what ingest holds back on when it grows too long."""
    query = select(func.count()).select_from(rescore_queue).where(_changes_due(now))
    return int(conn.execute(query).scalar_one())


def rescore_lag(conn: Connection, now: dt.datetime) -> dt.timedelta:
    """How long the longest-waiting due rescore of a change has waited (zero: none waits): how stale scores are."""
    oldest = conn.execute(select(func.min(rescore_queue.c.due_at)).where(_changes_due(now))).scalar()
    return dt.timedelta(0) if oldest is None else max(now - stored_time(oldest), dt.timedelta(0))


# ---- helpers -----------------------------------------------------------------------------------------------------


def _insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which knows ON CONFLICT."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the lead timeline supports SQLite and PostgreSQL, not {dialect}")


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _iso(value: dt.datetime) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z")


def _duration(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 else f"{hours:g} hours"
