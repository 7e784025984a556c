"""Score-request bodies as a CRM sends them to POST /v1/score, built from a salesperson's description of a lead."""

from __future__ import annotations

import datetime as dt
from typing import Any

# The moment every judgement is made, inside the simulated funnel's history (as README's example).
AS_OF = dt.datetime(2025, 6, 3, 9, 0, tzinfo=dt.UTC)


def stamp(days_ago: float, *, seconds: float = 0.0) -> str:
    """The CRM's ISO 8601 UTC time `days_ago` days (plus `seconds`) before AS_OF."""
    at = AS_OF - dt.timedelta(days=days_ago) + dt.timedelta(seconds=seconds)
    return at.isoformat().replace("+00:00", "Z")


def icp_lead(lead_id: str = "L-1", **fields: Any) -> dict[str, Any]:
    """A lead from the ideal customer profile: an IT director at a 2,000-employee software company, business e-mail."""
    lead: dict[str, Any] = {
        "lead_id": lead_id,
        "account_id": f"ACC-{lead_id}",
        "created_at": stamp(120),
        "industry": "Software",
        "employee_count": 2000,
        "annual_revenue": 300_000_000,
        "country": "US",
        "region": "North America",
        "job_title": "Director of IT",
        "seniority": "director",
        "department": "it",
        "email_domain": "northwind-software.com",
        "source": "organic search",
        "channel": "inbound",
    }
    return {**lead, **fields}


def student_lead(lead_id: str = "L-2", **fields: Any) -> dict[str, Any]:
    """A student on a free-mail address at a tiny company: nobody sales would ever sell to."""
    lead: dict[str, Any] = {
        "lead_id": lead_id,
        "account_id": f"ACC-{lead_id}",
        "created_at": stamp(120),
        "industry": "Education",
        "employee_count": 3,
        "annual_revenue": 100_000,
        "country": "BR",
        "region": "LATAM",
        "job_title": "Student",
        "seniority": "student",
        "department": "other",
        "email_domain": "gmail.com",
        "source": "paid social",
        "channel": "inbound",
    }
    return {**lead, **fields}


def touch(days_ago: float, activity_type: str, *, lead_id: str | None = None, seconds: float = 0.0) -> dict[str, Any]:
    """One activity; `lead_id` names a colleague (default: the scored lead)."""
    body: dict[str, Any] = {"occurred_at": stamp(days_ago, seconds=seconds), "activity_type": activity_type}
    if lead_id is not None:
        body["lead_id"] = lead_id
    return body


def interested(shift_days: float = 0.0) -> list[dict[str, Any]]:
    """The touches of a lead doing its homework over the last three weeks (`shift_days` earlier, when given)."""
    pattern = [
        (20, "content_download"), (18, "page_view"), (15, "email_click"), (12, "webinar_registered"),
        (10, "webinar_attended"), (6, "page_view"), (4, "pricing_page_view"), (3, "page_view"), (2, "email_open"),
    ]  # fmt: skip
    return [touch(days + shift_days, kind) for days, kind in pattern]


def request(
    lead: dict[str, Any],
    activities: list[dict[str, Any]] | None = None,
    colleagues: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of one score request as of AS_OF."""
    return {
        "lead": lead,
        "activities": activities or [],
        "colleagues": colleagues or [],
        "as_of": stamp(0),
    }
