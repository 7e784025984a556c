"""Touches that look automated: the declared limits, bot marks, point in time, and the same result on every path."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.bots import (
    DEFAULT_BOT_LIMITS,
    BotLimits,
    bot_marked_column,
    is_bot_marked,
    keep_touches,
    touch_is_bot,
)
from features.builder import FeatureBuilder, RequestLead
from features.spec import ACTIVITY_TYPES
from features.validation import validate_activities, validate_leads
from tests.factories import lead, leads_frame

PAGE, DEMO, OPEN = (ACTIVITY_TYPES.index(t) for t in ("page_view", "demo_request", "email_open"))
T0 = 1_750_000_000  # a Sunday in June 2025, 15:06:40 UTC
LIMITS = DEFAULT_BOT_LIMITS


def _keep(
    seconds: list[int], types: list[int], leads: list[int] | None = None, flagged: list[bool] | None = None
) -> np.ndarray:
    n = len(seconds)
    return keep_touches(
        np.zeros(n, dtype=np.int64) if leads is None else np.array(leads),
        np.array(seconds, dtype=np.int64),
        np.array(types, dtype=np.int64),
        np.zeros(n, dtype=np.bool_) if flagged is None else np.array(flagged),
    )


def test_a_person_who_requests_a_demo_twice_within_a_minute_keeps_both() -> None:
    assert _keep([T0, T0 + 20], [DEMO, DEMO]).all()
    assert _keep([T0, T0], [DEMO, DEMO]).all()  # even in the same second


def test_forty_identical_page_views_in_a_minute_keep_only_the_first_ten() -> None:
    keep = _keep([T0 + s for s in range(40)], [PAGE] * 40)
    assert keep[: LIMITS.burst_touches].all() and not keep[LIMITS.burst_touches :].any()


def test_the_limit_is_per_type_and_per_person() -> None:
    # Ten page views and ten e-mail opens in one minute: no type is over its limit.
    assert _keep([T0 + s for s in range(20)], [PAGE, OPEN] * 10).all()
    # Two people, ten page views each, in the same minute.
    assert _keep([T0 + s for s in range(20)], [PAGE] * 20, leads=[0, 1] * 10).all()


def test_a_burst_leaves_that_type_untrusted_for_a_week_and_other_types_counted() -> None:
    burst = [T0 + s for s in range(20)]
    day = 86_400
    seconds = [*burst, T0 + 3 * day, T0 + 3 * day + 60, T0 + 8 * day]
    keep = _keep(seconds, [PAGE] * 20 + [PAGE, DEMO, PAGE])
    # A page view three days later is not trusted, the demo request is; eight days later page views count again.
    assert keep[20:].tolist() == [False, True, True]


def test_touches_over_a_days_limit_are_left_out_from_the_first_over() -> None:
    # One page view every 5 minutes, all day: never a burst, but no person does 288 a day.
    seconds = [T0 - T0 % 86_400 + 300 * i for i in range(288)]
    keep = _keep(seconds, [PAGE] * 288)
    assert keep.sum() == LIMITS.daily_touches and keep[: LIMITS.daily_touches].all()
    assert _keep([s + 86_400 for s in seconds[:10]], [PAGE] * 10).all()  # a new day starts afresh


def test_limits_are_declared_with_their_reasons_and_refuse_nonsense() -> None:
    assert (LIMITS.burst_touches, LIMITS.burst_seconds, LIMITS.daily_touches) == (10, 60, 150)
    with pytest.raises(ValueError, match="burst_touches must be at least 1"):
        BotLimits(burst_touches=0)


@pytest.mark.parametrize(
    ("properties", "bot"),
    [
        ({"bot": True}, True),
        ({"is_bot": True}, True),
        ({"isBot": "true"}, True),
        ({"IS-BOT": 1}, True),
        ({"Is Bot Activity": "True"}, True),  # Marketo's attribute on e-mail opens and clicks
        ({"bot": "yes"}, True),
        ({"bot": False}, False),
        ({"is_bot": "false"}, False),
        ({"bot_name": "Googlebot"}, False),  # not a mark: other keys are not read
        ({"page": "/robots.txt"}, False),
        ({}, False),
        (None, False),
    ],
)
def test_bot_marks_in_properties_are_honoured(properties: dict[str, object] | None, bot: bool) -> None:
    assert is_bot_marked(properties) is bot
    assert touch_is_bot(properties) is bot
    text = None if properties is None else json.dumps(properties)
    assert touch_is_bot(text) is bot
    assert bot_marked_column(pd.Series([text, None, text], dtype=object)).tolist() == [bot, False, bot]


def test_text_that_is_not_a_json_object_marks_nothing() -> None:
    assert not touch_is_bot('{"bot": true')  # cut off
    assert not touch_is_bot('["bot", true]')


def test_a_marked_touch_is_left_out_and_counts_towards_no_limit() -> None:
    seconds = [T0 + s for s in range(15)]
    keep = _keep(seconds, [PAGE] * 15, flagged=[True] * 5 + [False] * 10)
    assert keep.tolist() == [False] * 5 + [True] * 10


# ---- point in time ----------------------------------------------------------------------------------------------

touch_lists = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3 * 86_400), st.sampled_from([PAGE, DEMO, OPEN]), st.booleans()),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(touches=touch_lists, cut=st.integers(0, 3 * 86_400), seed=st.integers(0, 2**32 - 1))
def test_whether_a_touch_is_kept_never_depends_on_later_touches_or_the_order_given(
    touches: list[tuple[int, int, int, bool]], cut: int, seed: int
) -> None:
    limits = BotLimits(burst_touches=3, burst_seconds=600, burst_memory_seconds=86_400, daily_touches=20)
    arrays = [np.array(column, dtype=dtype) for column, dtype in
              zip(zip(*touches, strict=True) if touches else ([], [], [], []), (np.int64, np.int64, np.int64, bool),
                  strict=True)]  # fmt: skip
    who, when, kind, marked = arrays
    when = when + T0
    everything = keep_touches(who, when, kind, marked, limits)
    early = when <= T0 + cut
    assert (keep_touches(who[early], when[early], kind[early], marked[early], limits) == everything[early]).all()
    shuffled = np.random.default_rng(seed).permutation(len(who))
    again = keep_touches(who[shuffled], when[shuffled], kind[shuffled], marked[shuffled], limits)
    assert (again == everything[shuffled]).all()


# ---- every path -------------------------------------------------------------------------------------------------

START = dt.datetime(2025, 3, 3, 9, tzinfo=dt.UTC)
AS_OF = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def _touches() -> list[dict[str, object]]:
    """L1 a person (a double demo request), L2 a bot (bursts, a marked touch); L3 a colleague of L2's with bursts."""
    out: list[dict[str, object]] = []
    for k in range(5):
        burst = START + dt.timedelta(days=5 * k, hours=k)
        out += [{"lead_id": who, "occurred_at": burst + dt.timedelta(seconds=s), "activity_type": "page_view",
                 "properties": json.dumps({"page": f"/p{s}"})} for who in ("L2", "L3") for s in range(30)]  # fmt: skip
    out += [
        {"lead_id": "L1", "occurred_at": START + dt.timedelta(days=60, seconds=s), "activity_type": "demo_request"}
        for s in (0, 30)
    ]
    out += [
        {"lead_id": "L1", "occurred_at": START + dt.timedelta(days=d), "activity_type": "email_open"} for d in (1, 9)
    ]
    marked = {"lead_id": "L2", "occurred_at": START + dt.timedelta(days=70), "activity_type": "demo_request",
              "properties": json.dumps({"is_bot": True})}  # fmt: skip
    return [*out, marked, {**marked, "occurred_at": AS_OF + dt.timedelta(days=1)}]  # the last one after as_of


def test_batch_and_request_time_agree_with_bots_present_and_count_what_they_left_out() -> None:
    leads = validate_leads(
        leads_frame(lead("L1", account_id="A1"), lead("L2", account_id="A2"), lead("L3", account_id="A2"))
    )
    touches = _touches()
    activities = validate_activities(pd.DataFrame(touches), leads)
    builder = FeatureBuilder(min_category_count=1).fit(leads)
    pairs = pd.DataFrame({"lead_id": ["L1", "L2"], "as_of": [AS_OF, AS_OF]})
    batch = builder.transform(leads, activities, pairs)[builder.feature_names_].to_numpy()
    records = leads.to_dict("records")
    requests = []
    for me, colleagues in ((records[0], []), (records[1], [records[2]])):
        own = [t for t in touches if t["lead_id"] in {me["lead_id"], *(c["lead_id"] for c in colleagues)}]
        requests.append(RequestLead(me, colleagues, [str(t["lead_id"]) for t in own], [t["occurred_at"] for t in own],
                                    [t["activity_type"] for t in own], AS_OF,
                                    touch_properties=[t.get("properties") for t in own]))  # fmt: skip
        single = builder.record_features(me, own, AS_OF, colleagues)
        np.testing.assert_array_equal(single.rows[0], batch[len(requests) - 1])
    found = builder.request_features(requests)
    np.testing.assert_array_equal(found.rows, batch)
    # L2: the first 10 page views of the first burst are kept; the rest of it, and the next bursts (each within a
    # week of the last) are left out; so is the marked demo request (the one after as_of is not read).
    assert found.ignored_touches.tolist() == [0, 5 * 30 - 10 + 1]
    # The batch path counts the same from the tables (score-batch's notes), and nothing at an earlier moment.
    _, ignored = builder.table_features(leads, activities, pairs)
    assert ignored.tolist() == found.ignored_touches.tolist()
    early = pd.DataFrame({"lead_id": ["L2"], "as_of": [min(t["occurred_at"] for t in touches)]})
    assert builder.table_features(leads, activities, early)[1].tolist() == [0]
    total = builder.feature_names_.index("n_touches_total")
    assert batch[0, total] == 4 and batch[1, total] == 10
    # Without properties every touch would be a person's but for the bursts.
    bare = [
        RequestLead(r.lead, r.colleagues, r.touch_lead_ids, r.touch_times, r.touch_types, r.as_of) for r in requests
    ]
    assert builder.request_features(bare).ignored_touches.tolist() == [0, 5 * 30 - 10]
    with pytest.raises(ValueError, match="1 touch properties for 4 touches"):
        one = bare[0]
        builder.request_features([RequestLead(one.lead, [], one.touch_lead_ids, one.touch_times, one.touch_types, AS_OF,
                                              touch_properties=[None])])  # fmt: skip
