"""A stored lead's history as the score API takes it: the lead, its touches and its colleagues, point in time."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, select

from timeline.engine import stored_time
from timeline.schema import LIFECYCLE_STAMPS, PROFILE_TEXT, leads, touches

# The score API's own limits (serving.settings: max_activities, max_colleagues): a stored history is cut to the most
# recent of each, as a CRM sending it would have to.
MAX_ACTIVITIES = 5000
MAX_COLLEAGUES = 200


def lead_record(row: Row[Any], as_of: dt.datetime | None = None, *, text: bool = True) -> dict[str, Any]:
    """A stored lead as the score API's `lead` object; stamps after `as_of` were not known then and are left out.

    Times as ISO text, or (text=False) as UTC datetimes.
    """
    when = _iso if text else _utc
    record: dict[str, Any] = {"lead_id": row.lead_id, "created_at": when(row.created_at)}
    if row.account_id is not None:
        record["account_id"] = row.account_id
    for name in (*PROFILE_TEXT, "employee_count", "annual_revenue"):
        value = getattr(row, name)
        if value is not None:
            record[name] = value
    for name in LIFECYCLE_STAMPS:
        value = getattr(row, name)
        if value is not None and (as_of is None or stored_time(value) <= as_of):
            record[name] = when(value)
    if row.custom:
        record["custom"] = json.loads(row.custom)
    return record


def scoring_requests(
    conn: Connection,
    lead_ids: Sequence[str],
    as_of: dt.datetime | None = None,
    *,
    max_activities: int = MAX_ACTIVITIES,
    max_colleagues: int = MAX_COLLEAGUES,
) -> dict[str, dict[str, Any]]:
    """Score-request bodies (`lead`, `activities`, `colleagues`, `as_of`) for the stored leads among `lead_ids`.

    Times are UTC datetimes (`msgspec.json.encode` writes a body as the JSON the score API takes): the rescore reads
    thousands of touches a second, and text would only be parsed back.

    Point in time: with `as_of`, a lead created later is missing from the answer, and touches, colleagues and
    stamps after it are left out. Without it, the whole history (scored as of now).
    """
    if not lead_ids:
        return {}
    query = select(leads).where(leads.c.lead_id.in_(lead_ids))
    if as_of is not None:
        query = query.where(leads.c.created_at <= as_of)
    found = {row.lead_id: row for row in conn.execute(query)}
    accounts = {row.account_id for row in found.values() if row.account_id is not None}
    colleagues: dict[str, list[Row[Any]]] = {account: [] for account in accounts}
    if accounts:
        query = select(leads).where(leads.c.account_id.in_(accounts)).order_by(leads.c.created_at.desc())
        if as_of is not None:
            query = query.where(leads.c.created_at <= as_of)
        for row in conn.execute(query):
            colleagues[row.account_id].append(row)
    people = set(found) | {row.lead_id for rows in colleagues.values() for row in rows}
    touched: dict[str, list[Row[Any]]] = {lead_id: [] for lead_id in people}
    if people:
        query = select(touches.c.lead_id, touches.c.occurred_at, touches.c.activity_type, touches.c.properties).where(
            touches.c.lead_id.in_(people)
        )
        if as_of is not None:
            query = query.where(touches.c.occurred_at <= as_of)
        for row in conn.execute(query.order_by(touches.c.occurred_at.desc())):
            touched[row.lead_id].append(row)
    stamp = None if as_of is None else _utc(as_of)
    # Each person's touches are made once, as theirs and as a colleague's: a buying group's members share them.
    owned: dict[str, list[dict[str, Any]]] = {}
    shared: dict[str, list[dict[str, Any]]] = {}

    def own(person: str) -> list[dict[str, Any]]:
        if person not in owned:
            owned[person] = [_activity(t, None) for t in touched[person]]
        return owned[person]

    def as_colleague(person: str) -> list[dict[str, Any]]:
        if person not in shared:
            shared[person] = [{**a, "lead_id": person} for a in own(person)]
        return shared[person]

    bodies: dict[str, dict[str, Any]] = {}
    for lead_id in lead_ids:
        if (lead := found.get(lead_id)) is None:
            continue
        mates = [m for m in colleagues.get(lead.account_id, []) if m.lead_id != lead_id][:max_colleagues]
        activities = list(own(lead_id))
        for mate in mates:
            activities += as_colleague(mate.lead_id)
        activities.sort(key=lambda a: a["occurred_at"], reverse=True)
        body: dict[str, Any] = {
            "lead": lead_record(lead, as_of, text=False),
            "activities": activities[:max_activities],
            "colleagues": [lead_record(m, as_of, text=False) for m in mates],
        }
        if stamp is not None:
            body["as_of"] = stamp
        bodies[lead_id] = body
    return bodies


def _activity(row: Row[Any], colleague: str | None) -> dict[str, Any]:
    activity: dict[str, Any] = {"occurred_at": _utc(row.occurred_at), "activity_type": row.activity_type}
    if colleague is not None:
        activity["lead_id"] = colleague
    if row.properties:
        activity["properties"] = json.loads(row.properties)
    return activity


def _utc(value: dt.datetime) -> dt.datetime:
    # The score API's own zone object: its canonical check asks for it (PostgreSQL's driver gives another).
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _iso(value: dt.datetime) -> str:
    return stored_time(value).isoformat().replace("+00:00", "Z")
