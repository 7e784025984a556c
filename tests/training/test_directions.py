"""The domain's directions, proved on a trained model: over random leads, a touch moves readiness only the right way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.builder import RequestLead
from features.directions import LOWERS, RAISES, monotone_constraints, readiness_directions
from features.engine import OPT_OUT_TYPES
from features.spec import ACTIVITY_TYPES
from tests.conftest import Trained

AS_OF = dt.datetime(2025, 6, 3, 9, 0, tzinfo=dt.UTC)
ENGAGING = [t for t in ACTIVITY_TYPES if t not in OPT_OUT_TYPES]
HIGH_INTENT = ["demo_request", "free_trial_signup", "pricing_page_view", "meeting_booked"]
STAGES = ["lead", "mql", "sal", "recycled"]  # the open stages readiness applies to

# A touch: how long before as_of (minutes, up to 200 days) and its kind.
_touch = st.tuples(st.integers(1, 200 * 24 * 60), st.sampled_from(ACTIVITY_TYPES))
_person = st.fixed_dictionaries(
    {
        "profile": st.integers(0, 10_000),  # which simulated lead lends its profile
        "age_days": st.integers(1, 400),
        "stage": st.sampled_from(STAGES),
        "touches": st.lists(_touch, max_size=25),
    }
)
_lead = st.fixed_dictionaries({"me": _person, "colleagues": st.lists(_person, max_size=3)})


def _ago(minutes: int) -> dt.datetime:
    return AS_OF - dt.timedelta(minutes=minutes)


def _record(trained: Trained, drawn: dict[str, Any], lead_id: str) -> dict[str, Any]:
    """A lead of the drawn age and open stage, with a simulated lead's profile."""
    leads = trained.leads
    row = leads.iloc[drawn["profile"] % len(leads)]
    record = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    for column in ("mql_at", "sal_at", "sql_at", "lost_at", "recycled_at", "requalified_at", "won_at"):
        record[column] = None
    created = AS_OF - dt.timedelta(days=drawn["age_days"])
    step = (AS_OF - created) / 5
    stage = drawn["stage"]
    if stage in ("mql", "sal", "recycled"):
        record["mql_at"] = created + step
    if stage in ("sal", "recycled"):
        record["sal_at"] = created + 2 * step
    if stage == "recycled":
        record["sql_at"] = created + 3 * step
        record["lost_at"] = created + 3.5 * step
        record["recycled_at"] = created + 4 * step
    return {**record, "lead_id": lead_id, "account_id": "acc", "created_at": created}


def _request(trained: Trained, drawn: dict[str, Any], extra: Sequence[tuple[str, int, str]] = ()) -> RequestLead:
    """The drawn lead and colleagues as a request, with `extra` touches (who, minutes before as_of, kind) added."""
    me = _record(trained, drawn["me"], "me")
    colleagues = [_record(trained, c, f"c{i}") for i, c in enumerate(drawn["colleagues"])]
    touches = [("me", m, k) for m, k in drawn["me"]["touches"]]
    for i, colleague in enumerate(drawn["colleagues"]):
        touches += [(f"c{i}", m, k) for m, k in colleague["touches"]]
    touches += list(extra)
    return RequestLead(
        lead=me,
        colleagues=colleagues,
        touch_lead_ids=[who for who, _, _ in touches],
        touch_times=[_ago(m) for _, m, _ in touches],
        touch_types=[k for _, _, k in touches],
        as_of=AS_OF,
    )


def _readiness(trained: Trained, requests: list[RequestLead]) -> np.ndarray:
    scorer = trained.result.scorer
    return scorer.probabilities(scorer.builder.transform_requests(requests))[1]


def _raw(trained: Trained, requests: list[RequestLead]) -> np.ndarray:
    """The booster's log-odds: calibration may flatten a change, the booster must not reverse it."""
    scorer = trained.result.scorer
    features = scorer.builder.transform_requests(requests)
    return np.asarray(scorer.readiness_booster.predict(features, raw_score=True), dtype=np.float64)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(lead=_lead, when=st.integers(1, 200 * 24 * 60))
def test_an_unsubscribe_never_raises_readiness(trained: Trained, lead: dict[str, Any], when: int) -> None:
    requests = [_request(trained, lead), _request(trained, lead, [("me", when, "unsubscribe")])]
    before, after = _raw(trained, requests)
    assert after <= before, f"an unsubscribe {when} minutes before as_of raised readiness: {before} -> {after}"
    calibrated = _readiness(trained, requests)
    assert calibrated[1] <= calibrated[0]


@PROPERTY
@given(lead=_lead, when=st.integers(1, 200 * 24 * 60), kind=st.sampled_from(ENGAGING))
def test_an_engaging_touch_never_lowers_readiness(trained: Trained, lead: dict[str, Any], when: int, kind: str) -> None:
    requests = [_request(trained, lead), _request(trained, lead, [("me", when, kind)])]
    before, after = _raw(trained, requests)
    assert after >= before, f"a {kind} {when} minutes before as_of lowered readiness: {before} -> {after}"


@PROPERTY
@given(lead=_lead, when=st.integers(1, 200 * 24 * 60), kind=st.sampled_from(HIGH_INTENT))
def test_a_colleagues_high_intent_touch_never_lowers_readiness(
    trained: Trained, lead: dict[str, Any], when: int, kind: str
) -> None:
    lead = {**lead, "colleagues": lead["colleagues"] or [lead["me"]]}
    requests = [_request(trained, lead), _request(trained, lead, [("c0", when, kind)])]
    before, after = _raw(trained, requests)
    assert after >= before, f"a colleague's {kind} lowered readiness: {before} -> {after}"


@PROPERTY
@given(lead=_lead, when=st.integers(1, 30 * 24 * 60), older=st.integers(1, 170 * 24 * 60),
       kind=st.sampled_from(HIGH_INTENT))  # fmt: skip
def test_the_same_touch_older_never_raises_readiness(
    trained: Trained, lead: dict[str, Any], when: int, older: int, kind: str
) -> None:
    requests = [_request(trained, lead, [("me", when, kind)]), _request(trained, lead, [("me", when + older, kind)])]
    fresh, stale = _raw(trained, requests)
    assert stale <= fresh, f"a {kind} grew more convincing with age: {fresh} -> {stale}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lead=_lead, when=st.integers(1, 200 * 24 * 60), kind=st.sampled_from(ACTIVITY_TYPES),
       who=st.sampled_from(["me", "c0"]))  # fmt: skip
def test_every_feature_a_touch_moves_has_a_declared_direction(
    trained: Trained, lead: dict[str, Any], when: int, kind: str, who: str
) -> None:
    """The constraints cover the model as a whole: whatever a touch changes, it changes the declared way."""
    lead = {**lead, "colleagues": lead["colleagues"] or [lead["me"]]}
    builder = trained.result.scorer.builder
    before, after = builder.transform_requests([_request(trained, lead), _request(trained, lead, [(who, when, kind)])])
    directions = readiness_directions(builder.config_)
    wanted = LOWERS if kind in OPT_OUT_TYPES else RAISES
    for name, old, new in zip(builder.feature_names_, before, after, strict=True):
        if old == new or (np.isnan(old) and np.isnan(new)):
            continue
        assert name in directions, f"a {kind} by {who} moved {name} ({old} -> {new}), which has no declared direction"
        moved = RAISES if new > old else LOWERS
        assert moved * directions[name].sign == wanted, f"a {kind} by {who} moved {name} the wrong way: {old} -> {new}"


def test_the_trained_booster_carries_the_declared_constraints(trained: Trained) -> None:
    scorer = trained.result.scorer
    expected = monotone_constraints(scorer.builder.feature_names_, scorer.builder.config_)
    dumped = scorer.readiness_booster.dump_model()
    assert dumped["monotone_constraints"] == expected
    assert sum(1 for c in expected if c) >= 40


def test_the_evaluation_reports_what_the_constraints_cost(trained: Trained) -> None:
    readiness = trained.result.readiness
    assert readiness.unconstrained_roc_auc is not None
    assert readiness.unconstrained_roc_auc == pytest.approx(readiness.metrics["model"]["roc_auc"], abs=0.05)
