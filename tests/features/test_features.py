"""Point-in-time features: hand-checked values, no leakage (property-based), and batch/request-time parity."""

from __future__ import annotations

import datetime as dt
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.builder import FeatureBuilder, IncompatibleModelError, RequestLead
from features.engine import NO_TOUCH_DAYS, NOT_YET_CREATED, STAGE_CODE, FeatureConfig
from features.spec import ACTIVITY_TYPES
from features.validation import validate_activities, validate_leads
from tests.factories import activities_frame, lead, leads_frame, ts

BASE = pd.Timestamp("2024-01-01", tz="UTC")


def _build(
    leads: pd.DataFrame, acts: pd.DataFrame, config: FeatureConfig | None = None
) -> tuple[FeatureBuilder, pd.DataFrame, pd.DataFrame]:
    leads = validate_leads(leads)
    acts = validate_activities(acts, leads)
    return FeatureBuilder(config=config, min_category_count=1).fit(leads), leads, acts


def _row(builder: FeatureBuilder, leads: pd.DataFrame, acts: pd.DataFrame, lead_id: str, as_of: str) -> pd.Series:
    pairs = pd.DataFrame({"lead_id": [lead_id], "as_of": [ts(as_of)]})
    return builder.transform(leads, acts, pairs).iloc[0]


def test_counts_recency_and_stage_use_only_the_past() -> None:
    builder, leads, acts = _build(
        leads_frame(lead("L1", created_at="2024-01-01", mql_at="2024-01-20")),
        activities_frame(
            ("L1", "2024-01-02", "page_view"),
            ("L1", "2024-01-25", "pricing_page_view"),
            ("L1", "2024-01-30", "demo_request"),
            ("L1", "2024-01-31", "demo_request"),  # the scoring day itself: not yet known
        ),
    )
    row = _row(builder, leads, acts, "L1", "2024-01-31")
    assert row["n_demo_request_7d"] == 1 and row["n_pricing_page_view_7d"] == 1
    assert row["n_touches_7d"] == 2 and row["n_touches_30d"] == 3 and row["n_touches_total"] == 3
    assert row["days_since_last_demo_request"] == pytest.approx(1.0)
    # "Never" reads as longer ago than any touch, so that no touch can never look better than an old one.
    assert row["days_since_last_free_trial_signup"] == NO_TOUCH_DAYS
    assert row["stage"] == STAGE_CODE["mql"] and row["days_in_stage"] == pytest.approx(11.0)
    assert row["days_since_created"] == pytest.approx(30.0)
    assert row["days_created_to_mql"] == pytest.approx(19.0) and np.isnan(row["days_since_sal"])
    assert row["n_high_intent_30d"] == 2 and row["n_high_intent_3d"] == 1


def test_an_unsubscribe_is_no_touch() -> None:
    builder, leads, acts = _build(
        leads_frame(lead("L1")),
        activities_frame(("L1", "2024-01-10", "page_view"), ("L1", "2024-01-20", "unsubscribe")),
    )
    row = _row(builder, leads, acts, "L1", "2024-01-21")
    assert row["n_touches_30d"] == 1 and row["n_touches_total"] == 1 and row["n_unsubscribe_30d"] == 1
    assert row["days_since_last_touch"] == pytest.approx(11.0) and row["unsubscribed"] == 1
    assert row["days_since_last_unsubscribe"] == pytest.approx(1.0)


def test_decayed_engagement_halves_every_half_life() -> None:
    config = FeatureConfig(half_life_days=10.0)
    builder, leads, acts = _build(
        leads_frame(lead("L1")), activities_frame(("L1", "2024-01-05", "demo_request")), config
    )
    at_10 = _row(builder, leads, acts, "L1", "2024-01-15")["engagement_decayed"]
    at_20 = _row(builder, leads, acts, "L1", "2024-01-25")["engagement_decayed"]
    weight = config.engagement_weights["demo_request"]
    assert at_10 == pytest.approx(weight / 2) and at_20 == pytest.approx(weight / 4)


def test_recent_engagement_sees_this_weeks_streak_and_fades_within_days() -> None:
    builder, leads, acts = _build(leads_frame(lead("L1")), activities_frame(("L1", "2024-02-26", "demo_request")))
    weight = FeatureConfig().engagement_weights["demo_request"]
    at_3 = _row(builder, leads, acts, "L1", "2024-02-29")
    at_9 = _row(builder, leads, acts, "L1", "2024-03-06")
    assert at_3["engagement_recent"] == pytest.approx(weight / 2)  # one 3-day half-life
    assert at_9["engagement_recent"] == pytest.approx(weight / 8)
    assert at_9["engagement_decayed"] > 4 * at_9["engagement_recent"]  # the 14-day half-life still remembers it


def test_buying_group_counts_known_and_engaged_colleagues() -> None:
    builder, leads, acts = _build(
        leads_frame(
            lead("me"),
            lead("boss", created_at="2024-01-05", sql_at="2024-02-10"),
            lead("peer", created_at="2024-01-06"),
            lead("later", created_at="2024-03-15"),  # not known yet at as_of
            lead("other", account_id="acc-9"),
        ),
        activities_frame(
            ("boss", "2024-02-20", "pricing_page_view"),
            ("boss", "2024-02-21", "demo_request"),
            ("peer", "2024-01-10", "page_view"),  # outside the 30-day window
            ("later", "2024-02-25", "demo_request"),  # before as_of, but "later" only joins the CRM after it
            ("later", "2024-03-20", "page_view"),
            ("other", "2024-02-25", "demo_request"),
        ),
    )
    row = _row(builder, leads, acts, "me", "2024-03-01")
    assert row["account_known_colleagues"] == 2
    assert row["account_engaged_colleagues_30d"] == 1
    assert row["account_colleague_touches_30d"] == 2
    assert row["account_colleague_high_intent_30d"] == 2
    assert row["account_sql_colleagues"] == 1
    assert row["account_open_opportunities"] == 1  # boss is SQL, neither won nor lost
    assert row["account_colleague_touches_7d"] == 0  # boss's touches are 9 and 10 days old
    assert row["days_since_colleague_touch"] == pytest.approx(9.0)
    assert row["account_age_days"] == pytest.approx(60.0)  # "me", created 2024-01-01, is the account's first lead


def test_buying_group_reads_colleagues_funnel_stages() -> None:
    builder, leads, acts = _build(
        leads_frame(
            lead("me"),
            lead("mql", mql_at="2024-01-10"),
            lead("sal", mql_at="2024-01-10", sal_at="2024-01-12"),
            lead("lost", mql_at="2024-01-10", sql_at="2024-01-15", lost_at="2024-02-01"),
            lead("won", sql_at="2024-01-15", won_at="2024-02-01"),
            lead("late", mql_at="2024-03-10"),  # MQL after as_of
        ),
        activities_frame(("lost", "2024-02-20", "unsubscribe")),  # an opt-out is no colleague touch
    )
    row = _row(builder, leads, acts, "me", "2024-03-01")
    assert row["account_mql_colleagues"] == 3 and row["account_sal_colleagues"] == 1
    assert row["account_lost_colleagues"] == 1 and row["account_sql_colleagues"] == 2
    assert row["account_open_opportunities"] == 0  # one lost, one won
    assert row["account_colleague_touches_30d"] == 0 and row["days_since_colleague_touch"] == NO_TOUCH_DAYS


def test_unseen_and_misspelt_categories_are_scored_as_other() -> None:
    leads = leads_frame(
        *[lead(f"L{i}", industry="Software") for i in range(3)],
        lead("typo", industry="Sofware"),
        lead("new", industry="Space Mining"),
    )
    builder = FeatureBuilder(min_category_count=2).fit(validate_leads(leads))
    codes = builder.fit_encoder_.transform(validate_leads(leads))[:, 0]
    assert codes[0] == 0 and codes[3] == codes[4] == 1  # one known value; everything else is "other"


# ---- no leakage: anything at or after as_of never changes a feature ---------------------------------------------

HORIZON_S = 120 * 86_400
_times = st.integers(min_value=0, max_value=HORIZON_S)
_acts = st.lists(st.tuples(st.integers(0, 3), _times, st.sampled_from(ACTIVITY_TYPES)), max_size=30)
_stamps = st.lists(st.one_of(st.none(), _times), min_size=7, max_size=7)


def _at(seconds: int) -> pd.Timestamp:
    return BASE + pd.Timedelta(seconds=seconds)


def _people(created: list[int], stamps: list[list[int | None]]) -> pd.DataFrame:
    rows = []
    for i, (c, s) in enumerate(zip(created, stamps, strict=True)):
        mql, sal, sql, lost, recycled, requalified, won = s
        recycled = recycled if lost is not None else None
        requalified = requalified if recycled is not None else None
        chain: dict[str, Any] = {}
        # Build a lifecycle that respects the contract's ordering from random draws.
        t = c
        for name, value in (
            ("mql_at", mql),
            ("sal_at", sal),
            ("sql_at", sql),
            ("lost_at", lost),
            ("recycled_at", recycled),
            ("requalified_at", requalified),
            ("won_at", won),
        ):
            if value is not None and not (name == "won_at" and lost is not None and requalified is None):
                t = max(t, value)
                chain[name] = _at(t)
        rows.append(lead(f"L{i}", account_id="acc-1" if i < 3 else "acc-2", created_at=_at(c), **chain))
    return leads_frame(*rows)


def _fitted(leads: pd.DataFrame) -> FeatureBuilder:
    return FeatureBuilder(min_category_count=1).fit(validate_leads(leads))


def _activities(acts: list[tuple[str, int, str]]) -> pd.DataFrame:
    return activities_frame(*[(who, _at(t), kind) for who, t, kind in acts])


def _features(
    builder: FeatureBuilder, leads: pd.DataFrame, acts: list[tuple[str, int, str]], as_of: int, lead_ids: list[str]
) -> dict[str, np.ndarray]:
    """Feature rows of `lead_ids` at as_of through each path: batch, one request per lead, and all requests at once.

    A request carries the lead, every colleague at its account in `leads` and all their touches, as the CRM would send.
    """
    v_leads = validate_leads(leads)
    v_acts = validate_activities(_activities(acts), v_leads)
    at = _at(as_of)
    pairs = pd.DataFrame({"lead_id": lead_ids, "as_of": [at] * len(lead_ids)})
    batch = builder.transform(v_leads, v_acts, pairs).iloc[:, 2:].to_numpy(dtype=np.float64)
    people = {r["lead_id"]: r for r in v_leads.astype(object).where(v_leads.notna(), None).to_dict("records")}
    touches = v_acts.astype(object).to_dict("records")
    requests = []
    for lead_id in lead_ids:
        me = people[lead_id]
        colleagues = [p for p in people.values() if p["account_id"] == me["account_id"] and p is not me]
        ids = {lead_id, *(c["lead_id"] for c in colleagues)}
        own = [t for t in touches if t["lead_id"] in ids]
        requests.append((me, colleagues, own))
    records = np.array([builder.transform_records(me, own, at, colleagues) for me, colleagues, own in requests])
    many = builder.transform_requests(
        [
            RequestLead(
                lead=me,
                colleagues=colleagues,
                touch_lead_ids=[t["lead_id"] for t in own],
                touch_times=[t["occurred_at"] for t in own],
                touch_types=[t["activity_type"] for t in own],
                as_of=at.to_pydatetime(),
            )
            for me, colleagues, own in requests
        ]
    )
    return {"batch": batch, "transform_records": records, "transform_requests": many}


def _assert_same(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], what: str) -> None:
    for path, rows in expected.items():
        np.testing.assert_array_equal(actual[path], rows, err_msg=f"{what} changed the {path} features")


BASE_IDS = [f"L{i}" for i in range(4)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    created=st.lists(st.integers(0, HORIZON_S // 2), min_size=4, max_size=4),
    stamps=st.lists(_stamps, min_size=4, max_size=4),
    past=_acts,
    future=_acts,
    changed_future=_acts,
    as_of=st.integers(HORIZON_S // 4, HORIZON_S),
)
def test_activities_and_stamps_at_or_after_as_of_never_change_features(
    created: list[int],
    stamps: list[list[int | None]],
    past: list[tuple[int, int, str]],
    future: list[tuple[int, int, str]],
    changed_future: list[tuple[int, int, str]],
    as_of: int,
) -> None:
    before = [(f"L{w}", t, k) for w, t, k in past if t < as_of]
    after = [(f"L{w}", as_of + t % (HORIZON_S // 2), k) for w, t, k in future]
    after_changed = [(f"L{w}", as_of + t % (HORIZON_S // 2), k) for w, t, k in changed_future]
    leads = _people(created, stamps)
    builder = _fitted(leads)
    reference = _features(builder, leads, before + after, as_of, BASE_IDS)
    # Batch and request time agree, so that the properties below hold for what training and serving both compute.
    _assert_same(reference, {path: reference["batch"] for path in reference}, "request time instead of batch")
    # Adding, removing and changing future touches (of the lead or its colleagues) changes nothing.
    _assert_same(reference, _features(builder, leads, before, as_of, BASE_IDS), "removing future touches")
    _assert_same(reference, _features(builder, leads, before + after_changed, as_of, BASE_IDS), "other future touches")
    # Neither does what happens to the lifecycle at or after as_of.
    cut = leads.copy()
    for name in ("mql_at", "sal_at", "sql_at", "lost_at", "recycled_at", "requalified_at", "won_at"):
        cut.loc[cut[name] >= _at(as_of), name] = pd.NaT
    _assert_same(reference, _features(builder, cut, before + after, as_of, BASE_IDS), "future lifecycle stamps")


# People who join an account at or after as_of: when they join (0 = at as_of exactly), their lifecycle after that, and
# touches at any time, some before as_of (anonymous visits a CRM attaches to a contact once it is created).
_late_people = st.lists(
    st.tuples(st.integers(0, 1), st.one_of(st.just(0), _times), _stamps, _acts), min_size=1, max_size=3
)


def _late(as_of: int, drawn: list[tuple[int, int, list[int | None], list[tuple[int, int, str]]]]) -> tuple[
    pd.DataFrame, list[tuple[str, int, str]]
]:  # fmt: skip
    """Leads N0, N1... created at or after as_of at acc-1 or acc-2, and their touches."""
    frames, touches = [], []
    for i, (account, offset, stamps, acts) in enumerate(drawn):
        person = _people([as_of + offset], [stamps]).assign(lead_id=f"N{i}", account_id=f"acc-{account + 1}")
        frames.append(person)
        touches += [(f"N{i}", t, kind) for _, t, kind in acts]
    return pd.concat(frames, ignore_index=True), touches


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    created=st.lists(st.integers(0, HORIZON_S // 2), min_size=4, max_size=4),
    stamps=st.lists(_stamps, min_size=4, max_size=4),
    acts=_acts,
    late=_late_people,
    moved_late=_late_people,
    delay=st.integers(1, HORIZON_S // 4),
    as_of=st.integers(HORIZON_S // 4, HORIZON_S),
)
def test_people_created_at_or_after_as_of_never_change_features(
    created: list[int],
    stamps: list[list[int | None]],
    acts: list[tuple[int, int, str]],
    late: list[tuple[int, int, list[int | None], list[tuple[int, int, str]]]],
    moved_late: list[tuple[int, int, list[int | None], list[tuple[int, int, str]]]],
    delay: int,
    as_of: int,
) -> None:
    leads = _people(created, stamps)
    touches = [(f"L{w}", t, k) for w, t, k in acts]
    builder = _fitted(leads)
    reference = _features(builder, leads, touches, as_of, BASE_IDS)
    # A colleague who joins the account at or after as_of was not known then: neither their arrival nor their touches
    # (even those dated before as_of) may count, and when exactly they arrive does not matter.
    for drawn in (late, moved_late):
        joined, joined_touches = _late(as_of, drawn)
        with_late = pd.concat([leads, joined], ignore_index=True)
        changed = _features(builder, with_late, touches + joined_touches, as_of, BASE_IDS)
        _assert_same(reference, changed, "a colleague created at or after as_of")

    # A lead scored before it exists is "not yet created", however late its creation: only days_since_created (then
    # negative: days until creation) says when.
    unborn = [i for i, c in enumerate(created) if c >= as_of]
    later = leads.copy()
    stamp_columns = ["created_at", "mql_at", "sal_at", "sql_at", "lost_at", "recycled_at", "requalified_at", "won_at"]
    later.loc[unborn, stamp_columns] += pd.Timedelta(seconds=delay)  # the whole lifecycle, to keep its order
    moved = _features(builder, later, touches, as_of, BASE_IDS)
    days = builder.feature_names_.index("days_since_created")
    stage = builder.feature_names_.index("stage")
    for path, rows in reference.items():
        assert (rows[unborn, stage] == NOT_YET_CREATED).all(), path
        expected = rows.copy()
        expected[unborn, days] -= delay / 86_400
        np.testing.assert_allclose(moved[path][:, days], expected[:, days], rtol=0, atol=1e-9, err_msg=path)
        expected[:, days] = moved[path][:, days]
        # The account's age counts from its first known lead: an unborn lead with no colleague known at as_of is
        # that lead itself, so its account's age moves with its creation as days_since_created does.
        age = builder.feature_names_.index("account_age_days")
        for i in unborn:
            if not any(j != i and (j < 3) == (i < 3) and created[j] < as_of for j in range(len(created))):
                expected[i, age] -= delay / 86_400
        np.testing.assert_allclose(moved[path][:, age], expected[:, age], rtol=0, atol=1e-9, err_msg=path)
        expected[:, age] = moved[path][:, age]
        np.testing.assert_array_equal(moved[path], expected, err_msg=f"a later creation changed the {path} features")


# ---- parity: request-time path == batch row ------------------------------------------------------------------------


def _random_world(seed: int, n_leads: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_leads):
        created = int(rng.integers(0, 90 * 86_400))
        fields: dict[str, Any] = {}
        if rng.random() < 0.5:
            fields["mql_at"] = _at(created + int(rng.integers(1, 40 * 86_400)))
            if rng.random() < 0.4:
                fields["sql_at"] = fields["mql_at"] + pd.Timedelta(days=int(rng.integers(1, 20)))
        rows.append(
            lead(
                f"L{i:03d}",
                account_id=f"acc-{i // 4}",
                created_at=_at(created),
                industry=str(rng.choice(["Software", "retail", "Sofware", None])),
                employee_count=int(rng.integers(1, 20_000)),
                **fields,
            )
        )
    acts = []
    for _ in range(n_leads * 20):
        # Sub-second times exercise the rounding rules.
        acts.append(
            (
                f"L{int(rng.integers(0, n_leads)):03d}",
                _at(int(rng.integers(0, 200 * 86_400))) + pd.Timedelta(microseconds=int(rng.integers(0, 10**6))),
                str(rng.choice(ACTIVITY_TYPES)),
            )
        )
    return leads_frame(*rows), activities_frame(*acts)


@pytest.mark.parametrize("block_activities", [50, 1_000_000])
def test_request_time_features_equal_batch_row(block_activities: int) -> None:
    raw_leads, raw_acts = _random_world(seed=block_activities)
    builder, leads, acts = _build(raw_leads, raw_acts)
    as_of = dt.datetime(2024, 4, 2, 9, 30, 15, 500_000, tzinfo=dt.UTC)
    pairs = pd.DataFrame({"lead_id": leads["lead_id"], "as_of": pd.Timestamp(as_of)})
    batch = builder.transform(leads, acts, pairs, max_block_activities=block_activities)
    records = leads.astype(object).where(leads.notna(), None).to_dict("records")
    by_id = {r["lead_id"]: r for r in records}
    act_records = acts.astype(object).to_dict("records")
    for i, target in enumerate(records):
        colleagues = [r for r in records if r["account_id"] == target["account_id"] and r is not target]
        ids = {target["lead_id"], *(c["lead_id"] for c in colleagues)}
        own = [a for a in act_records if a["lead_id"] in ids]
        online = builder.transform_records(by_id[target["lead_id"]], own, as_of, colleagues)
        np.testing.assert_array_equal(
            online, batch.iloc[i, 2:].to_numpy(dtype=np.float64), err_msg=f"lead {target['lead_id']}"
        )


def test_a_model_trained_on_features_this_engine_no_longer_computes_is_refused_by_name() -> None:
    builder = _fitted(leads_frame(lead("L1")))
    assert pickle.loads(pickle.dumps(builder)).feature_names_ == builder.feature_names_  # today's models load
    old = pickle.loads(pickle.dumps(builder))
    old.__dict__["engagement_feature_names_"] = [*builder.engagement_feature_names_[:-1], "engagement_velocity"]
    with pytest.raises(IncompatibleModelError, match=r"engagement_velocity.*account_age_days.*leadscore train"):
        pickle.loads(pickle.dumps(old))
