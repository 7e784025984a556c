"""Erasure (GDPR article 17): a lead, its touches, identities, scores, webhook payloads and logged requests go."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select

from timeline.queue import enqueue
from timeline.schema import (
    erasures,
    identities,
    lead_scores,
    leads,
    rescore_queue,
    score_history,
    score_log,
    touches,
    webhook_deliveries,
)


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure deleted, table by table, and the colleagues queued for a rescore (their group changed)."""

    counts: dict[str, int]
    colleagues: int

    @property
    def found(self) -> bool:
        """Whether anything about the lead was stored."""
        return any(self.counts.values())


def erase_lead(conn: Connection, lead_id: str, *, requested_by: str, now: dt.datetime) -> Erasure:
    """Delete everything stored about `lead_id`, in the caller's transaction, and record the erasure without it.

    The lead's row goes first: on PostgreSQL that locks it, so a rescore storing this lead's score at the same moment
    either committed before (its score is deleted here) or finds the lead gone (see serving.rescore). Touches the lead
    sent as an anonymous visitor go with the identities that tie them to it. The erasures row keeps counts only.
    """
    deleted = conn.execute(delete(leads).where(leads.c.lead_id == lead_id).returning(leads.c.account_id)).first()
    account_id = None if deleted is None else deleted.account_id
    counts = {"leads": 0 if deleted is None else 1}
    anonymous = list(conn.execute(select(identities.c.anonymous_id).where(identities.c.lead_id == lead_id)).scalars())
    gone = touches.c.lead_id == lead_id
    if anonymous:
        gone = gone | touches.c.anonymous_id.in_(anonymous)
    counts["touches"] = conn.execute(delete(touches).where(gone)).rowcount
    counts["identities"] = conn.execute(delete(identities).where(identities.c.lead_id == lead_id)).rowcount
    counts["lead_scores"] = conn.execute(delete(lead_scores).where(lead_scores.c.lead_id == lead_id)).rowcount
    counts["score_history"] = conn.execute(delete(score_history).where(score_history.c.lead_id == lead_id)).rowcount
    counts["rescore_queue"] = conn.execute(delete(rescore_queue).where(rescore_queue.c.lead_id == lead_id)).rowcount
    counts["webhook_deliveries"] = conn.execute(
        delete(webhook_deliveries).where(webhook_deliveries.c.lead_id == lead_id)
    ).rowcount
    counts["score_log"] = conn.execute(delete(score_log).where(score_log.c.lead_id == lead_id)).rowcount
    colleagues: list[str] = []
    if account_id is not None:
        # The buying group lost a member: its other leads' group features changed.
        colleagues = sorted(conn.execute(select(leads.c.lead_id).where(leads.c.account_id == account_id)).scalars())
        enqueue(conn, colleagues, "colleague")
    erasure = Erasure(counts=counts, colleagues=len(colleagues))
    if erasure.found:
        row = {"erased_at": now, "requested_by": requested_by, "counts": json.dumps(counts, sort_keys=True)}
        conn.execute(erasures.insert().values(**row))
    return erasure
