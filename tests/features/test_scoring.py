"""The scorer's small parts: calibration maps, percentile scores, default cut-offs and reason sentences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from features.engine import NO_TOUCH_DAYS
from features.reasons import NUMPY_RANK_MIN_ROWS, ReasonLabeler, reason_group
from features.scoring import PROBABILITY_FLOOR, Calibrator, CutOffs, ScoreScale


def test_isotonic_calibrator_interpolates_and_never_claims_certainty() -> None:
    cal = Calibrator("isotonic", x_=(-2.0, 0.0, 2.0), y_=(0.0, 0.5, 1.0))
    p = cal.apply(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]))
    assert p.tolist() == pytest.approx([PROBABILITY_FLOOR, 0.25, 0.5, 0.75, 1.0 - PROBABILITY_FLOOR])


def test_sigmoid_calibrator_is_platt_scaling_without_overflow() -> None:
    cal = Calibrator("sigmoid", a=2.0, b=-1.0)
    assert cal.apply(np.array([0.5]))[0] == pytest.approx(0.5)
    with np.errstate(over="raise"):
        extreme = cal.apply(np.array([-1e4, 1e4]))
    assert extreme.tolist() == [PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR]


def test_score_is_the_percentile_among_reference_probabilities() -> None:
    scale = ScoreScale.from_reference(np.linspace(0.0, 1.0, 1001))
    assert scale.score(np.array([0.0, 0.25, 0.5, 1.0])).tolist() == pytest.approx([0.0, 25.0, 50.0, 100.0])
    assert scale.score(np.array([-1.0, 2.0])).tolist() == [0.0, 100.0]


_PROBABILITIES = arrays(np.float64, st.integers(1, 40), elements=st.floats(-0.5, 1.5, allow_nan=False))


@given(reference=arrays(np.float64, st.integers(2, 300), elements=st.floats(0.0, 1.0)), p=_PROBABILITIES)
def test_scores_are_the_percentile_rounded_to_a_tenth_exactly(reference: np.ndarray, p: np.ndarray) -> None:
    # The scale's cheap rounding and cached points must give what np.round(np.interp(...), 1) gives, bit for bit.
    scale = ScoreScale.from_reference(reference)
    xp, fp = np.array(scale.probabilities), np.array(scale.percentiles)
    expected = np.full(p.shape, 50.0) if xp.size == 1 else np.round(np.interp(p, xp, fp, left=0.0, right=100.0), 1)
    assert np.array_equal(scale.score(p), expected)


def test_scores_round_half_tenths_to_even_as_np_round_does() -> None:
    # 0.125 * 98 = 12.25 and 0.375 * 98 = 36.75 exactly: ties, which np.round breaks to the even tenth.
    scores = ScoreScale((0.0, 1.0), (0.0, 98.0)).score(np.array([0.125, 0.375]))
    assert scores.tolist() == [12.2, 36.8] == np.round([12.25, 36.75], 1).tolist()


@given(raw=arrays(np.float64, st.integers(1, 40), elements=st.floats(-50.0, 50.0)))
def test_calibrated_probabilities_are_clipped_as_np_clip_clips(raw: np.ndarray) -> None:
    x, y = (-2.0, -0.5, 0.0, 3.0), (0.0, 0.1, 0.4, 1.0)
    assert np.array_equal(
        Calibrator("isotonic", x_=x, y_=y).apply(raw),
        np.clip(np.interp(raw, x, y), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR),
    )


def test_scales_of_different_models_never_share_points() -> None:
    # Points are cached by tuple identity: many scales built and dropped must each keep answering with their own.
    for i in range(600):
        scale = ScoreScale.from_reference(np.linspace(0.0, 1.0 - i / 1000, 201))
        assert scale.score(np.array([(1.0 - i / 1000) / 2]))[0] == pytest.approx(50.0)


def test_tied_reference_values_score_at_the_middle_of_their_span() -> None:
    # Isotonic calibration gives plateaus: 60 % of leads share the lowest probability.
    reference = np.r_[np.full(600, 0.01), np.linspace(0.02, 0.5, 400)]
    scale = ScoreScale.from_reference(reference)
    assert scale.score(np.array([0.01]))[0] == pytest.approx(30.0, abs=1.0)
    scores = scale.score(np.linspace(0.0, 0.6, 50))
    assert (np.diff(scores) >= 0).all()


def test_cutoffs_grade_and_stage() -> None:
    cutoffs = CutOffs(fit_grades=(80.0, 60.0, 30.0), readiness_mql=0.1, readiness_sql=0.4)
    assert [cutoffs.grade(s) for s in (95.0, 80.0, 70.0, 30.0, 5.0)] == ["A", "A", "B", "C", "D"]
    assert [cutoffs.stage(p) for p in (0.05, 0.1, 0.39, 0.4)] == ["nurture", "MQL", "MQL", "SQL"]


FEATURES = [
    "industry", "employee_count_log", "size_band", "email_free_domain",
    "n_demo_request_7d", "n_demo_request_30d", "days_since_last_demo_request",
    "n_touches_30d", "n_touches_7d", "account_engaged_colleagues_30d", "account_sql_colleagues", "stage",
    "days_in_stage",
]  # fmt: skip
FIT = ["industry", "employee_count_log", "size_band", "email_free_domain"]


def _labeler() -> ReasonLabeler:
    return ReasonLabeler(
        feature_names=FEATURES,
        fit_features=FIT,
        vocabularies={"industry": ["retail", "software"]},
        windows_days=[7, 30, 90],
        buying_group_window_days=30,
    )


@pytest.mark.parametrize(
    ("feature", "group", "side"),
    [
        ("size_band", "company_size", "fit"),
        ("industry", "industry", "fit"),
        ("n_demo_request_30d", "demo_request", "behaviour"),
        ("days_since_last_demo_request", "demo_request", "behaviour"),
        ("account_sql_colleagues", "buying_group", "behaviour"),
        ("n_touches_30d", "activity_level", "behaviour"),
        ("stage", "lifecycle", "context"),
        ("days_since_created", "lead_age", "context"),
        ("days_since_colleague_touch", "buying_group", "behaviour"),
        ("engagement_recent", "activity_level", "behaviour"),
    ],
)
def test_features_fall_into_reason_groups(feature: str, group: str, side: str) -> None:
    assert reason_group(feature, FIT) == (group, side)


def test_reasons_sum_their_features_and_read_like_sentences() -> None:
    labeler = _labeler()
    values = np.array([1.0, np.log1p(250.0), 3.0, 1.0, 1.0, 3.0, 2.4, 12.0, 5.0, 2.0, 0.0, 1.0, 9.0])
    contributions = np.zeros((1, len(FEATURES)))
    contributions[0, FEATURES.index("n_demo_request_30d")] = 0.5
    contributions[0, FEATURES.index("days_since_last_demo_request")] = 0.3
    contributions[0, FEATURES.index("n_touches_30d")] = -0.2
    contributions[0, FEATURES.index("email_free_domain")] = -0.4
    contributions[0, FEATURES.index("industry")] = 0.1
    impacts = labeler.group_impacts(contributions)[0]
    behaviour = labeler.top_reasons(impacts, values, side="behaviour", k=2)
    assert [(r.group, r.impact) for r in behaviour] == [("demo_request", 0.8), ("activity_level", -0.2)]
    assert behaviour[0].label == "requested a demo 2 days ago (3 times in 30 days)"
    assert behaviour[1].label == "12 touches in the last 30 days, 5 in the last 7 days"
    fit = labeler.top_reasons(impacts, values, side="fit", k=3)
    assert [r.label for r in fit] == ["uses a free e-mail address", "industry: software"]


TIED_IMPACTS = [0.0, 0.1, -0.1, 0.25, -0.7]  # few values, so that many groups tie on |impact|


@given(
    # Single leads are ranked in plain Python, batches with numpy: both ways must rank alike.
    st.one_of(st.integers(1, 5), st.integers(NUMPY_RANK_MIN_ROWS, NUMPY_RANK_MIN_ROWS + 8)).flatmap(
        lambda n: arrays(np.float64, (n, len(_labeler().groups)), elements=st.sampled_from(TIED_IMPACTS))
    ),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.1]),
)
def test_reasons_are_the_largest_impacts_of_their_side_ties_in_group_order(
    impacts: np.ndarray, k: int, min_impact: float
) -> None:
    labeler = _labeler()
    values = np.zeros((impacts.shape[0], len(FEATURES)))
    values[:, FEATURES.index("days_since_last_demo_request")] = NO_TOUCH_DAYS  # no touch to put first
    for side in ("fit", "behaviour", "context"):
        columns = [g for g, s in enumerate(labeler.sides) if s == side]
        got = labeler.top_reasons_of_rows(impacts, values, side=side, k=k, min_impact=min_impact)
        for row, reasons in zip(impacts, got, strict=True):
            ranked = sorted(columns, key=lambda g, row=row: -abs(row[g]))  # stable: equal impacts keep group order
            expected = [labeler.groups[g] for g in ranked[:k] if abs(row[g]) > min_impact]
            assert [r.group for r in reasons] == expected
            assert all(r.side == side for r in reasons)
            assert [r.impact for r in reasons] == [round(float(row[labeler.groups.index(g)]), 4) for g in expected]


def test_a_touch_that_helped_comes_first_and_the_lifecycle_is_context() -> None:
    labeler = _labeler()
    values = np.array([1.0, np.log1p(1.0), 0.0, 0.0, 1.0, 1.0, 2.0, 40.0, 20.0, 0.0, 0.0, 1.0, 1.0])
    contributions = np.zeros((1, len(FEATURES)))
    contributions[0, FEATURES.index("days_since_last_demo_request")] = 0.3
    contributions[0, FEATURES.index("n_touches_30d")] = 0.9  # larger, but volume: a rep cannot open a call with it
    contributions[0, FEATURES.index("days_in_stage")] = -1.5
    impacts = labeler.group_impacts(contributions)[0]
    behaviour = labeler.top_reasons(impacts, values, side="behaviour", k=3)
    assert [r.label for r in behaviour] == [
        "requested a demo 2 days ago",
        "40 touches in the last 30 days, 20 in the last 7 days",
    ]
    context = labeler.top_reasons(impacts, values, side="context", k=2)
    assert [(r.label, r.impact) for r in context] == [("MQL for 1 day", -1.5)]
    assert labeler.describe("company_size", values) == "company of 1 employee"
    # A demo request that hurt (a model can say so) is not put first: only touches that helped are.
    contributions[0, FEATURES.index("days_since_last_demo_request")] = -0.3
    impacts = labeler.group_impacts(contributions)[0]
    assert labeler.top_reasons(impacts, values, side="behaviour", k=1)[0].group == "activity_level"


def test_reason_sentences_for_absent_values() -> None:
    labeler = _labeler()
    values = np.full(len(FEATURES), np.nan)
    values[FEATURES.index("industry")] = 2.0  # beyond the vocabulary: an unseen or rare value
    assert labeler.describe("demo_request", values) == "no demo requests so far"
    assert labeler.describe("industry", values) == "industry: other"
    assert labeler.describe("company_size", values) == "company size unknown"
    assert labeler.describe("buying_group", values) == "no colleagues known at the account"


def test_a_high_intent_touch_that_helped_comes_before_other_touches_that_helped_more() -> None:
    names = ["days_since_last_page_view", "n_page_view_30d", "days_since_last_pricing_page_view",
             "n_pricing_page_view_30d"]  # fmt: skip
    labeler = ReasonLabeler(feature_names=names, fit_features=[], vocabularies={}, windows_days=[7, 30, 90],
                            buying_group_window_days=30)  # fmt: skip
    values = np.array([1.0, 12.0, 4.0, 1.0])
    contributions = np.array([[0.3, 0.2, 0.1, 0.0]])  # twelve visits weigh more than one look at the pricing page
    impacts = labeler.group_impacts(contributions)[0]
    reasons = labeler.top_reasons(impacts, values, side="behaviour", k=2)
    # The rep opens the call with the pricing page, whatever the visits weigh.
    assert [r.label for r in reasons] == [
        "viewed the pricing page 4 days ago",
        "visited the website yesterday (12 times in 30 days)",
    ]


def test_a_touch_hours_ago_reads_in_hours_not_as_today() -> None:
    labeler = _labeler()
    values = np.full(len(FEATURES), np.nan)
    values[FEATURES.index("days_since_last_demo_request")] = 0.75  # yesterday afternoon, scored this morning
    values[FEATURES.index("stage")], values[FEATURES.index("days_in_stage")] = 1.0, 1 / 24
    assert labeler.describe("demo_request", values) == "requested a demo 18 hours ago"
    assert labeler.describe("lifecycle", values) == "MQL for 1 hour"
    values[FEATURES.index("days_since_last_demo_request")] = 0.01
    assert labeler.describe("demo_request", values) == "requested a demo within the hour"
