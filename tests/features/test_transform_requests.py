"""The multi-lead request-time path: bit-identical to the single-lead path, lead by lead, in one engine pass."""

from __future__ import annotations

import datetime as dt
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.builder import FeatureBuilder, RequestLead, _seconds_up, record_seconds
from features.spec import ACTIVITY_TYPES, LIFECYCLE_CHAIN, LeadContract, custom_attribute
from features.validation import validate_leads
from tests.factories import lead, leads_frame

CONTRACT = LeadContract(
    custom_attributes=(
        custom_attribute("crm_tier", "category", "Tier set by sales ops."),
        custom_attribute("seats", "int", "Seats asked for."),
        custom_attribute("intent", "float", "Third-party intent score."),
    )
)
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SPELLINGS = {"demo_request": "Demo Request", "page_view": "page-view", "email_open": " EMAIL_OPEN "}


def _builder() -> FeatureBuilder:
    rows = [lead(f"T{i}", industry=["Software", "retail", None][i % 3]) for i in range(30)]
    leads = leads_frame(*rows)
    leads["crm_tier"] = [["gold", "silver", None][i % 3] for i in range(30)]
    leads["seats"] = [i % 7 for i in range(30)]
    leads["intent"] = [i / 10 for i in range(30)]
    return FeatureBuilder(contract=CONTRACT, min_category_count=1).fit(validate_leads(leads, CONTRACT))


def _when(rng: np.random.Generator, *, days: int = 200) -> dt.datetime:
    # Sub-second times exercise the rounding rules.
    return START + dt.timedelta(seconds=int(rng.integers(0, days * 86_400)), microseconds=int(rng.integers(0, 10**6)))


def _pick(rng: np.random.Generator, options: list[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _person(rng: np.random.Generator, lead_id: str) -> dict[str, Any]:
    created = _when(rng, days=100)
    person: dict[str, Any] = {
        "lead_id": lead_id,
        "account_id": "acc",
        "created_at": created,
        "industry": _pick(rng, ["Software", "retail", "Sofware", None]),
        "employee_count": int(rng.integers(1, 20_000)) if rng.random() < 0.8 else None,
        "annual_revenue": float(rng.integers(1, 10**9)) if rng.random() < 0.7 else None,
        "seniority": _pick(rng, ["vp", "director", "wizard", None]),
        "job_title": _pick(rng, ["Head of IT", "engineer", None]),
        "email_domain": _pick(rng, ["gmail.com", "acme.com", None]),
        "crm_tier": _pick(rng, ["gold", "platinum", None]),
        "seats": int(rng.integers(0, 50)) if rng.random() < 0.5 else None,
        "intent": float(rng.random()) if rng.random() < 0.5 else None,
    }
    stamp = created
    for name in LIFECYCLE_CHAIN[1:]:
        if rng.random() < 0.3:
            stamp = stamp + dt.timedelta(days=int(rng.integers(0, 30)), seconds=int(rng.integers(0, 86_400)))
            person[name] = stamp
    return person


def _request(rng: np.random.Generator, k: int, naive_share: float) -> tuple[RequestLead, list[dict[str, object]]]:
    """A random request, and its touches as the records transform_records takes."""
    me = _person(rng, f"L{k}")
    colleagues = [_person(rng, f"L{k}-c{j}") for j in range(int(rng.integers(0, 4)))]
    ids = [me["lead_id"], *(c["lead_id"] for c in colleagues)]
    touches: list[dict[str, object]] = []
    for _ in range(int(rng.integers(0, 60))):
        kind = str(rng.choice(ACTIVITY_TYPES))
        spelt = SPELLINGS.get(kind, kind) if rng.random() < 0.2 else kind
        stamp = _when(rng)
        if rng.random() < naive_share:
            stamp = stamp.replace(tzinfo=None)  # naive means UTC
        elif rng.random() < 0.1:
            stamp = stamp.astimezone(dt.timezone(dt.timedelta(hours=-5)))
        touches.append({"lead_id": str(rng.choice(ids)), "occurred_at": stamp, "activity_type": spelt})
    as_of = _when(rng, days=260)
    request = RequestLead(
        lead=me,
        colleagues=colleagues,
        touch_lead_ids=[str(t["lead_id"]) for t in touches],
        touch_times=[t["occurred_at"] for t in touches],
        touch_types=[t["activity_type"] for t in touches],
        as_of=as_of,
    )
    return request, touches


# Zone-aware times only (the API's case, read without a call per touch), and some naive ones among them.
@pytest.mark.parametrize(("seed", "naive_share"), [(0, 0.0), (1, 0.0), (2, 0.1)])
def test_many_leads_in_one_pass_equal_each_lead_alone(seed: int, naive_share: float) -> None:
    builder = _builder()
    rng = np.random.default_rng(seed)
    pairs = [_request(rng, k, naive_share) for k in range(150)]
    rows = builder.transform_requests([request for request, _ in pairs])
    assert rows.shape == (len(pairs), len(builder.feature_names_))
    for i, (request, touches) in enumerate(pairs):
        alone = builder.transform_records(request.lead, touches, request.as_of, request.colleagues)
        np.testing.assert_array_equal(rows[i], alone, err_msg=f"request {i}")


def test_pandas_timestamps_and_strings_are_read_like_the_single_lead_path() -> None:
    builder = _builder()
    touches: list[dict[str, object]] = [
        {"lead_id": "L1", "occurred_at": pd.Timestamp("2024-02-01 10:00:00.000000001", tz="UTC"),
         "activity_type": "page_view"},
        {"lead_id": "L1", "occurred_at": "2024-02-02T10:00:00+02:00", "activity_type": "email_open"},
    ]  # fmt: skip
    me = {"lead_id": "L1", "account_id": "a", "created_at": pd.Timestamp("2024-01-01", tz="UTC")}
    request = RequestLead(
        lead=me,
        colleagues=[],
        touch_lead_ids=[str(t["lead_id"]) for t in touches],
        touch_times=[t["occurred_at"] for t in touches],
        touch_types=[t["activity_type"] for t in touches],
        as_of=dt.datetime(2024, 2, 3, tzinfo=dt.UTC),
    )
    np.testing.assert_array_equal(
        builder.transform_requests([request])[0], builder.transform_records(me, touches, request.as_of)
    )


def test_no_requests_no_rows_and_bad_touches_are_refused_like_one_lead() -> None:
    builder = _builder()
    assert builder.transform_requests([]).shape == (0, len(builder.feature_names_))
    me = {"lead_id": "L1", "account_id": "a", "created_at": START}
    unknown = RequestLead(me, [], ["L1"], [START], ["carrier_pigeon"], START)
    with pytest.raises(ValueError, match="unknown activity type 'carrier_pigeon'"):
        builder.transform_requests([unknown])
    stranger = RequestLead(me, [], ["L1", "L9"], [START, START], ["page_view"] * 2, START)
    with pytest.raises(
        ValueError, match=r"lead 'L1': activities\[1\]\.lead_id 'L9' is neither the lead nor a colleague"
    ):
        builder.transform_requests([stranger])
    too_late = RequestLead(me, [], ["L1"], [dt.datetime(2200, 1, 1, tzinfo=dt.UTC)], ["page_view"], START)
    with pytest.raises(ValueError, match="between 1970 and 2106"):
        builder.transform_requests([too_late])


def test_a_colleague_with_the_leads_own_id_is_read_like_the_single_lead_path() -> None:
    builder = _builder()
    me = {"lead_id": "L1", "account_id": "a", "created_at": START}
    twin = {"lead_id": "L1", "account_id": "a", "created_at": START, "sql_at": START + dt.timedelta(days=2)}
    touches: list[dict[str, object]] = [
        {"lead_id": "L1", "occurred_at": START + dt.timedelta(days=d), "activity_type": "demo_request"} for d in (1, 3)
    ]
    as_of = START + dt.timedelta(days=5)
    request = RequestLead(me, [twin], ["L1", "L1"], [t["occurred_at"] for t in touches], ["demo_request"] * 2, as_of)
    np.testing.assert_array_equal(
        builder.transform_requests([request])[0], builder.transform_records(me, touches, as_of, [twin])
    )


@settings(max_examples=2000, deadline=None)
@given(
    seconds=st.integers(-86_400, 2**33 - 1),
    micros=st.one_of(st.integers(0, 999_999), st.sampled_from([0, 1, 999_999])),
    offset_minutes=st.integers(-23 * 60, 23 * 60),
)
def test_aware_times_round_up_exactly_like_the_single_lead_path(seconds: int, micros: int, offset_minutes: int) -> None:
    # The request path reads aware datetimes through timestamp(); the single-lead path by integer arithmetic.
    zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
    moment = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds, microseconds=micros)).astimezone(
        zone
    )
    assert _seconds_up([moment, None]) == [record_seconds(moment, round_up=True), record_seconds(None, round_up=True)]


def test_a_pickled_builder_scores_alike_and_carries_no_derived_state() -> None:
    builder = _builder()
    lead_record = {"lead_id": "P1", "account_id": "P1", "created_at": START, "industry": "Software", "seats": 3}
    touches = [{"lead_id": "P1", "occurred_at": START + dt.timedelta(days=2), "activity_type": "demo_request"}]
    as_of = START + dt.timedelta(days=9)
    before = builder.transform_records(lead_record, touches, as_of)  # fills the encoder's memo
    state = pickle.dumps(builder)
    restored = pickle.loads(state)
    np.testing.assert_array_equal(restored.transform_records(lead_record, touches, as_of), before)
    # The engine plan and the memo are derived: a model pickled with another engine version loads all the same.
    assert "plan_" not in builder.__getstate__() and "_memo" not in builder.fit_encoder_.__getstate__()
    stale = FeatureBuilder.__new__(FeatureBuilder)
    stale.__setstate__({**builder.__getstate__(), "plan_": object()})
    np.testing.assert_array_equal(stale.transform_records(lead_record, touches, as_of), before)


def test_a_touch_without_a_time_is_refused_naming_its_lead_and_place_on_both_paths() -> None:
    # Counted as "never", such a touch would silently drop out of every feature.
    builder = _builder()
    people = [{"lead_id": f"L{i}", "account_id": f"a{i}", "created_at": START} for i in range(3)]
    touch = START + dt.timedelta(days=1)
    requests = [
        RequestLead(people[0], [], ["L0"], [touch], ["page_view"], START + dt.timedelta(days=9)),
        RequestLead(people[1], [], [], [], [], START + dt.timedelta(days=9)),
        RequestLead(people[2], [], ["L2"] * 3, [touch, touch, None], ["page_view"] * 3, START + dt.timedelta(days=9)),
    ]
    with pytest.raises(ValueError, match=r"lead 'L2': activities\[2\] has no occurred_at"):
        builder.transform_requests(requests)
    touches = [{"lead_id": "L2", "occurred_at": t, "activity_type": "page_view"} for t in (touch, None)]
    with pytest.raises(ValueError, match=r"lead 'L2': activities\[1\] has no occurred_at"):
        builder.transform_records(people[2], touches, START + dt.timedelta(days=9))
    stranger = [{"lead_id": "L7", "occurred_at": touch, "activity_type": "page_view"}]
    with pytest.raises(ValueError, match=r"lead 'L2': activities\[0\]\.lead_id 'L7' is neither"):
        builder.transform_records(people[2], stranger, START + dt.timedelta(days=9))
