"""Leads sales already works or has closed: no new hand-off, whatever they click (the lifecycle-aware routing contract).

The contract: a won lead answers `"readiness": null` and goes to a queue that is not a sales hand-off (planned:
`customer`); an SQL lead stays with its owner (planned queue: `owner`), never a new priority-1 hand-off; a lost lead
goes back to nurture. The routes come from the policy's lifecycle routes (serving/policy.py), here its defaults.
"""

from __future__ import annotations

from typing import Any

from tests.judgement.conftest import Judge
from tests.judgement.crm import icp_lead, request, stamp, touch


def busy_touches() -> list[dict[str, Any]]:
    """A week of buying signals: without its lifecycle, this lead would be a priority-1 call."""
    return [touch(6, "content_download"), touch(4, "pricing_page_view"), touch(3, "page_view"),
            touch(2, "demo_request"), touch(1, "meeting_booked")]  # fmt: skip


def test_a_won_lead_has_no_readiness_and_is_not_handed_to_sales(judge: Judge) -> None:
    """A customer browsing the pricing page is the account manager's, not a new lead to call."""
    won = icp_lead(mql_at=stamp(60), sql_at=stamp(40), won_at=stamp(10))
    answer = judge.answer(request(won, busy_touches()))
    assert answer["readiness"] is None, answer["readiness"]
    assert answer["route"]["queue"] == "customer", answer["route"]
    assert answer["lifecycle"]["stage"] == "won" and answer["lifecycle"]["readiness_applies"] is False
    assert answer["reasons"]["fit"], "the fit score still serves expansion, with its reasons"


def test_an_sql_lead_stays_with_its_owner(judge: Judge) -> None:
    """A rep already works this lead: a meeting booked yesterday is their news, not a new priority-1 hand-off."""
    sql = icp_lead(mql_at=stamp(30), sql_at=stamp(10))
    route = judge.answer(request(sql, busy_touches()))["route"]
    assert route["queue"] == "owner" and route["priority"] != 1, route


def test_a_lost_lead_goes_back_to_nurture(judge: Judge) -> None:
    """Closed-lost ten days ago: marketing nurtures it until it is recycled, sales does not call it again now."""
    lost = icp_lead(mql_at=stamp(60), sql_at=stamp(40), lost_at=stamp(10))
    route = judge.answer(request(lost, busy_touches()))["route"]
    assert route["queue"] == "nurture", route
