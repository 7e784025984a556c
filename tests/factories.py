"""Small hand-built leads and activities for tests."""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.spec import LEADS


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value, tz="UTC")


def lead(lead_id: str, *, account_id: str = "acc-1", created_at: str = "2024-01-01", **fields: Any) -> dict[str, Any]:
    """A lead row with sensible defaults; lifecycle fields are given as ISO strings."""
    row: dict[str, Any] = {name: None for name in LEADS.names}
    row.update(
        lead_id=lead_id,
        account_id=account_id,
        created_at=created_at,
        industry="Software",
        employee_count=250,
        annual_revenue=4.0e7,
        country="US",
        region="North America",
        job_title="Director of IT",
        seniority="director",
        department="it",
        email_domain="example.com",
        source="organic search",
        channel="inbound",
    )
    row.update(fields)
    return row


def leads_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(LEADS.names))
    for name in LEADS.names:
        if LEADS.column(name).dtype == "datetime":
            frame[name] = pd.to_datetime(frame[name], utc=True)
    frame["employee_count"] = frame["employee_count"].astype("Int64")
    frame["annual_revenue"] = frame["annual_revenue"].astype("float64")
    return frame


def activities_frame(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """Activities from (lead_id, occurred_at, activity_type) tuples."""
    frame = pd.DataFrame(rows, columns=["lead_id", "occurred_at", "activity_type"])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    frame["properties"] = None
    return frame
