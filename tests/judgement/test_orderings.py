"""Which of two leads a salesperson calls first, and what the answer tells them: judged through the score API's path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.judgement.conftest import Judge
from tests.judgement.crm import icp_lead, request, stamp, student_lead, touch

README = Path(__file__).resolve().parents[2] / "README.md"


def readiness(answer: dict[str, Any]) -> float:
    """The readiness probability the CRM reads off an answer."""
    value: float = answer["readiness"]["probability"]
    return value


def labels(answer: dict[str, Any], side: str) -> list[str]:
    """The reason labels of one side (fit, behaviour, context) of an answer, in the order given."""
    return [reason["label"] for reason in answer["reasons"][side]]


def mql(lead_id: str = "L-1", **fields: Any) -> dict[str, Any]:
    """An ICP lead marketing qualified 13 days ago (the stage of README's example)."""
    return icp_lead(lead_id, **{"mql_at": stamp(13), **fields})


def first_steps() -> list[dict[str, Any]]:
    """A lead's light early interest: a white paper last month, a visit, an opened newsletter."""
    return [touch(25, "content_download"), touch(20, "page_view"), touch(10, "email_open")]


def readme_request() -> dict[str, Any]:
    """The JSON body of README's curl example for POST /v1/score, as the README shows it today."""
    match = re.search(r"curl [^\n]*/v1/score.*?-d '(?P<body>\{.*?\})'", README.read_text(), re.DOTALL)
    assert match is not None, "README.md has no curl example for /v1/score with a -d '{...}' body"
    body: dict[str, Any] = json.loads(match["body"])
    return body


def test_a_fresh_demo_request_beats_the_same_request_six_months_old(judge: Judge) -> None:
    """A demo request is a buying signal for weeks, not half a year: the rep calls the one who asked this week."""
    lead = mql(created_at=stamp(300))
    fresh, stale = judge.answers(
        request(lead, [*first_steps(), touch(2, "demo_request")]),
        request(lead, [*first_steps(), touch(182, "demo_request")]),
    )
    assert readiness(fresh) > readiness(stale), (readiness(fresh), readiness(stale))


def test_a_demo_request_beats_no_demo_request_and_leads_the_reasons(judge: Judge) -> None:
    """A rep must read "requested a demo 2 days ago" first, and call this lead before its twin."""
    demo, plain = judge.answers(
        request(mql(), [*first_steps(), touch(2, "demo_request")]),
        request(mql(), first_steps()),
    )
    assert readiness(demo) > readiness(plain), (readiness(demo), readiness(plain))
    assert labels(demo, "behaviour")[0].startswith("requested a demo 2 days ago"), labels(demo, "behaviour")


def test_readmes_example_answers_with_its_demo_request_first(judge: Judge) -> None:
    """What a newcomer sends first must read right: README's lead asked for a demo, and the answer says so first."""
    answer = judge.answer(readme_request())
    behaviour = labels(answer, "behaviour")
    assert any(label.startswith("requested a demo") for label in behaviour), behaviour
    assert behaviour[0].startswith("requested a demo"), behaviour


def test_readmes_example_goes_to_sales_now(judge: Judge) -> None:
    """An IT director at an 850-person software company who asked for a demo is a call today, with an SLA."""
    route = judge.answer(readme_request())["route"]
    assert route["queue"] == "sales" and route["priority"] == 1 and route["sla_hours"] is not None, route


def test_an_icp_director_fits_better_than_a_student_on_free_mail(judge: Judge) -> None:
    """Same touches, but only one of them can ever buy: fit separates who we sell to from who we never will."""
    director, student = judge.answers(request(icp_lead(), first_steps()), request(student_lead(), first_steps()))
    assert director["fit"]["probability"] > student["fit"]["probability"]
    assert director["fit"]["score"] > student["fit"]["score"]
    assert director["fit"]["grade"] < student["fit"]["grade"], (director["fit"], student["fit"])  # "A" before "D"


def test_a_student_who_asks_for_a_demo_is_not_handed_to_an_account_executive(judge: Judge) -> None:
    """Low fit but eager: SDR qualification or self-serve, never an AE's priority call."""
    answer = judge.answer(request(student_lead(), [*first_steps(), touch(2, "demo_request")]))
    assert answer["route"]["queue"] != "sales", answer["route"]


@pytest.mark.parametrize("stage", ["lead", "MQL"])
def test_an_unsubscribe_never_makes_a_lead_readier(judge: Judge, stage: str) -> None:
    """Someone who opted out of our e-mail yesterday is not a warmer call than their twin who did not."""
    lead = icp_lead() if stage == "lead" else mql()
    twin, unsubscribed = judge.answers(
        request(lead, first_steps()), request(lead, [*first_steps(), touch(1, "unsubscribe")])
    )
    assert readiness(unsubscribed) <= readiness(twin), (readiness(unsubscribed), readiness(twin))


def bot_touches() -> list[dict[str, Any]]:
    """2,000 page views in bursts of 50 a minute: 650 in the last 30 days, the rest over the year before."""
    burst = 50
    recent = [touch(1 + 2.2 * b, "page_view", seconds=s) for b in range(13) for s in range(burst)]
    older = [touch(31 + 12 * b, "page_view", seconds=s) for b in range(27) for s in range(burst)]
    return recent + older


def test_a_bot_is_not_sales_ready_and_the_answer_says_touches_were_ignored(judge: Judge) -> None:
    """A crawler clicking 50 pages a minute is not a buyer, and the rep must be told why the visits do not count."""
    # Judged as a plain lead, not an MQL: on the small session model an MQL stamp alone puts an ICP lead with no
    # touch at all at the SQL cut-off (0.0400 vs 0.0400 at seed 5; 0.0327 vs 0.0311 at seed 11).
    touches = bot_touches()
    assert len(touches) == 2000 and sum(t["occurred_at"] >= stamp(30) for t in touches) == 650
    answer = judge.answer(request(icp_lead(), touches))
    assert answer["readiness"]["stage"] != "SQL", answer["readiness"]
    assert any("were ignored" in note for note in answer["notes"]), answer["notes"]


def sql_colleague(lead_id: str) -> dict[str, Any]:
    """A VP at the lead's company whom sales qualified five days ago."""
    return icp_lead(
        lead_id, account_id="ACC-L-1", created_at=stamp(60), job_title="VP Engineering", seniority="vp",
        department="engineering", mql_at=stamp(20), sql_at=stamp(5),
    )  # fmt: skip


def test_a_lead_whose_colleague_is_already_sql_and_active_beats_the_same_lead_alone(judge: Judge) -> None:
    """B2B buys in groups: when a colleague is in a sales conversation this week, this lead is part of a live deal."""
    colleague = [touch(1, "meeting_booked", lead_id="C-1"), touch(3, "pricing_page_view", lead_id="C-1"),
                 touch(4, "demo_request", lead_id="C-1")]  # fmt: skip
    with_group, alone = judge.answers(
        request(mql(), [*first_steps(), *colleague], [sql_colleague("C-1")]),
        request(mql(), first_steps()),
    )
    assert readiness(with_group) > readiness(alone), (readiness(with_group), readiness(alone))


def test_a_lead_quiet_for_90_days_is_less_ready_than_the_same_lead_active_this_week(judge: Judge) -> None:
    """Interest cools: the same homework done three months ago is a nurture lead, done this week it is a call."""
    homework = [(6, "content_download"), (5, "page_view"), (4, "webinar_attended"), (3, "pricing_page_view"),
                (1, "email_click")]  # fmt: skip
    lead = mql(created_at=stamp(200), mql_at=stamp(13))
    active, quiet = judge.answers(
        request(lead, [touch(days, kind) for days, kind in homework]),
        request(lead, [touch(days + 90, kind) for days, kind in homework]),
    )
    assert readiness(quiet) < readiness(active), (readiness(quiet), readiness(active))


# "1 days", "1 employees", "1 touches", "1 colleagues": a count of one followed by a plural noun.
_ONE_AND_A_PLURAL = re.compile(r"(?<![\d.,])1 [a-z-]+s\b")
# Lifecycle bookkeeping as the answer words it ("MQL for 13 days", "lead for 120 days", "SQL for 5 hours").
_BOOKKEEPING = re.compile(r"^(lead|MQL|SAL|SQL|lost|recycled|requalified|won|stage:)\b.*\b(for|since)\b")


def singular_leads() -> dict[str, dict[str, Any]]:
    """Leads whose reasons count one of everything: one employee, one day, one touch, one colleague."""
    one_touch = [touch(1, "pricing_page_view")]
    return {
        "one employee, one day": request(icp_lead(employee_count=1, created_at=stamp(1), mql_at=stamp(1)), one_touch),
        "one touch yesterday": request(mql(), one_touch),
        "one colleague": request(
            mql(), [*one_touch, touch(1, "demo_request", lead_id="C-1")], [sql_colleague("C-1")]
        ),
        "one colleague, one touch": request(
            mql(), [*one_touch, touch(2, "page_view", lead_id="C-1")],
            [icp_lead("C-1", account_id="ACC-L-1", created_at=stamp(40))],
        ),
    }  # fmt: skip


def test_reasons_count_one_of_a_thing_in_the_singular(judge: Judge) -> None:
    """A rep reads "1 day", "1 employee", "1 touch": "1 days" reads as a bug and costs the reasons their trust."""
    bodies = singular_leads()
    answers = dict(zip(bodies, judge.answers(*bodies.values()), strict=True))
    wrong = {
        (name, label)
        for name, answer in answers.items()
        for side in ("fit", "behaviour", "context")
        for label in labels(answer, side)
        if _ONE_AND_A_PLURAL.search(label)
    }
    assert not wrong, sorted(wrong)
    assert "MQL for 1 day" in labels(answers["one employee, one day"], "context")
    assert "lead created yesterday" in labels(answers["one employee, one day"], "context")


def test_lifecycle_bookkeeping_is_context_never_the_first_behaviour_reason(judge: Judge) -> None:
    """Being an MQL for 13 days is where the lead stands, not something it did: background, never the headline."""
    bodies = [
        request(mql(), first_steps()),
        request(mql(), [*first_steps(), touch(2, "demo_request")]),
        request(mql(), []),
        readme_request(),
    ]
    for answer in judge.answers(*bodies):
        assert "MQL for 13 days" in labels(answer, "context"), answer["reasons"]
        first = answer["reasons"]["behaviour"][0]
        assert not _BOOKKEEPING.search(first["label"]), answer["reasons"]
        assert first["group"] not in ("lifecycle", "lead_age"), answer["reasons"]
