"""Threshold tuning: replayed routing matches the service's, figures follow their definitions, capacity is kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.policy import (
    QUEUES,
    Capacities,
    GradeCutoffs,
    QueueCapacity,
    RoutingPolicy,
    SegmentMatch,
    SegmentPolicy,
    StageCutoffs,
)
from serving.store import ScoreRecord
from serving.tuning import (
    GRADE_ORDER,
    STAGE_ORDER,
    SampleError,
    ScoreSample,
    holdout_sample,
    recent_sample,
    route,
    simulate,
    solve,
)

START = pd.Timestamp("2025-01-06", tz="UTC")
REGIONS = ("emea", "north america", "apac")


def snapshots(leads: int = 600, weeks: int = 6, seed: int = 0) -> pd.DataFrame:
    """Weekly snapshots of simulated leads: readiness drifts up, the label follows readiness (calibrated)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(leads):
        fit = float(rng.uniform(0, 100))
        base = rng.uniform(-6, -1)
        first = int(rng.integers(0, weeks))
        for w in range(first, weeks):
            p = float(1 / (1 + np.exp(-(base + 0.4 * (w - first)))))
            rows.append(
                {
                    "lead_id": f"L{i:05d}",
                    "as_of": START + pd.Timedelta(weeks=w),
                    "fit_score": fit,
                    "fit_probability": fit / 400,
                    "readiness_probability": p,
                    "label": float(rng.random() < p),
                    "region": REGIONS[i % 3],
                    "size_band": "51-200" if i % 2 else "1001-5000",
                    "source": "webinar" if i % 5 == 0 else "organic search",
                }
            )
    return pd.DataFrame(rows)


def policy(mql: float = 0.1, sql: float = 0.3, **changes: Any) -> RoutingPolicy:
    return RoutingPolicy(grades=GradeCutoffs(A=75, B=50, C=25), stages=StageCutoffs(MQL=mql, SQL=sql), **changes)


def capacities(sales: int, sdr: int, per_rep: float = 5.0) -> Capacities:
    return Capacities(
        queues={
            "sales": QueueCapacity(reps=sales, leads_per_rep_per_week=per_rep),
            "sdr": QueueCapacity(reps=sdr, leads_per_rep_per_week=per_rep),
        }
    )


@pytest.fixture(scope="module")
def sample() -> ScoreSample:
    return holdout_sample(snapshots())


def _queue(simulation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(q for q in simulation["queues"] if q["queue"] == name)


segments_strategy = st.lists(
    st.builds(
        SegmentPolicy,
        match=st.builds(
            SegmentMatch,
            region=st.sampled_from(REGIONS),
            size_band=st.sampled_from([None, "51-200"]),
            source=st.sampled_from([None, "webinar"]),
        ),
        stages=st.builds(StageCutoffs, MQL=st.just(0.02), SQL=st.floats(0.05, 0.9)),
    ),
    max_size=2,
    unique_by=lambda s: (s.match.region, s.match.size_band, s.match.source),
)


@settings(max_examples=25, deadline=None)
@given(
    mql=st.floats(0.01, 0.4),
    gap=st.floats(0.01, 0.5),
    grade_a=st.floats(60, 99),
    segments=segments_strategy,
)
def test_replayed_routing_is_the_services_routing(
    sample: ScoreSample, mql: float, gap: float, grade_a: float, segments: list[SegmentPolicy]
) -> None:
    # Narrower segments first, so that the policy is valid whatever the draw.
    segments = sorted(segments, key=lambda s: -len(s.match.given()))
    try:
        rules = RoutingPolicy(
            grades=GradeCutoffs(A=grade_a, B=50, C=25),
            stages=StageCutoffs(MQL=mql, SQL=min(mql + gap, 0.99)),
            segments=segments,
        )
    except ValueError:
        return  # a shadowed segment: refused, as tested in test_policy
    routed = route(sample, rules)
    frame = sample.frame
    for i in range(0, len(frame), 37):
        row = frame.iloc[i]
        seg = rules.segment_of(row["region"], row["size_band"], row["source"])
        grade = rules.grade(row["fit_score"], seg)
        stage = rules.stage(row["readiness_probability"], seg)
        assert GRADE_ORDER[routed.grade[i]] == grade
        assert STAGE_ORDER[routed.stage[i]] == stage
        assert QUEUES[routed.queue[i]] == rules.route(grade, stage)[0].queue


def test_a_lead_enters_a_queue_once_and_the_first_week_only_says_where_leads_stood() -> None:
    # One lead in sales for weeks 0-2 (there before the data: not counted), one entering sales in week 1 and staying,
    # one entering SDR in week 2 and sales in week 3: 3 entries into sales and SDR over 3 counted weeks.
    def row(lead: str, week: int, fit: float, ready: float, label: float = 0.0) -> dict[str, Any]:
        return {"lead_id": lead, "as_of": START + pd.Timedelta(weeks=week), "fit_score": fit,
                "fit_probability": 0.1, "readiness_probability": ready, "label": label, "region": "emea",
                "size_band": None, "source": None}  # fmt: skip

    frame = pd.DataFrame(
        [row("a", w, 90, 0.5) for w in range(3)]
        + [row("b", 0, 90, 0.01), row("b", 1, 90, 0.5, 1.0), row("b", 2, 90, 0.5, 1.0)]
        + [row("c", 0, 30, 0.01), row("c", 1, 30, 0.01), row("c", 2, 30, 0.15), row("c", 3, 90, 0.5)]
    )
    sim = simulate(holdout_sample(frame), policy(), capacities(10, 10), curves=False)
    assert sim["data"]["weeks"] == 3.0 and sim["data"]["warmup_weeks"] == 1
    sales, sdr = _queue(sim, "sales"), _queue(sim, "sdr")
    assert sales["weekly_leads"] == pytest.approx(2 / 3)  # b (week 1) and c (week 3); a was there already
    assert sdr["weekly_leads"] == pytest.approx(1 / 3)  # c (week 2)
    assert sales["precision"] == pytest.approx(0.5)  # b converted, c did not
    assert sim["totals"]["weekly_leads_worked"] == pytest.approx(2 / 3)  # b and c, each worked first once
    assert sim["totals"]["recall"] == pytest.approx(1.0)  # b, the one SQL not already worked, was captured


def test_leads_wait_past_their_sla_only_when_a_team_is_over_capacity() -> None:
    # 20 leads enter sales in each of weeks 1-3; capacity 2 reps x 5 = 10 a week: a backlog grows, SLAs are missed.
    rows = []
    for w in range(1, 4):
        for k in range(20):
            rows.append({"lead_id": f"w{w}-{k}", "as_of": START + pd.Timedelta(weeks=w), "fit_score": 90.0,
                         "fit_probability": 0.2, "readiness_probability": 0.5, "label": 0.0, "region": None,
                         "size_band": None, "source": None})  # fmt: skip
    rows.append({**rows[0], "lead_id": "x", "as_of": START, "readiness_probability": 0.0})  # opens the data
    sample = holdout_sample(pd.DataFrame(rows))
    over = _queue(simulate(sample, policy(), capacities(2, 2), curves=False), "sales")
    assert over["load"] == pytest.approx(2.0)
    # 4 h SLA at 10 leads per 40 h: every lead after the first waits more than 4 h, except those served at once.
    assert over["past_sla_weekly"] > 10
    enough = _queue(simulate(sample, policy(), capacities(10, 2), curves=False), "sales")
    assert enough["load"] == pytest.approx(0.4)
    assert enough["past_sla_weekly"] == 0


@pytest.mark.parametrize(("sales", "sdr"), [(1, 1), (2, 5), (4, 4), (10, 20), (40, 40)])
def test_solver_respects_every_capacity(sample: ScoreSample, sales: int, sdr: int) -> None:
    caps = capacities(sales, sdr)
    proposal = solve(sample, policy(), caps)
    sim = simulate(sample, proposal.policy, caps, curves=False)
    for name in ("sales", "sdr"):
        queue = _queue(sim, name)
        if proposal.feasible:
            assert queue["weekly_leads"] <= queue["capacity"] + 1e-9
            late = queue["past_sla_weekly"] / queue["weekly_leads"] if queue["weekly_leads"] else 0.0
            assert late <= caps.max_past_sla_share + 1e-9
    assert proposal.policy.capacities == caps  # the proposal records what it was tuned for
    assert proposal.policy.stages.MQL < proposal.policy.stages.SQL


def test_more_capacity_never_captures_fewer_sqls(sample: ScoreSample) -> None:
    captured = [solve(sample, policy(), capacities(n, n)).expected_sqls for n in (1, 2, 4, 8, 16)]
    assert captured == sorted(captured)
    assert captured[-1] > captured[0]


def test_solver_beats_every_feasible_policy_on_its_grid(sample: ScoreSample) -> None:
    caps = capacities(3, 6)
    best = solve(sample, policy(), caps)
    assert best.feasible
    ready = sample.frame["readiness_probability"].to_numpy()
    for mql, sql in [(a, b) for a in np.quantile(ready, [0.5, 0.7, 0.9]) for b in np.quantile(ready, [0.95, 0.99])]:
        candidate = policy(float(mql), float(sql))
        totals = simulate(sample, candidate, caps, curves=False)
        loads = [q["load"] for q in totals["queues"] if q["queue"] in ("sales", "sdr")]
        if all(load <= 1 for load in loads):
            assert totals["totals"]["expected_sqls"] <= best.expected_sqls + 1e-9


def test_when_nothing_fits_the_solver_says_so(sample: ScoreSample) -> None:
    # Every grade's SQL cell goes to sales or SDR, and some leads score above any cut-off: no team, no fit.
    proposal = solve(sample, policy(), capacities(0, 0))
    assert not proposal.feasible
    assert "no MQL/SQL cut-offs fit" in proposal.note and "no capacity" in proposal.note


def test_curves_move_with_the_cut_off(sample: ScoreSample) -> None:
    points = simulate(sample, policy(), capacities(4, 4))["curves"]["MQL"]
    volumes = [p["weekly_leads"] for p in points]
    assert len(points) >= 10
    assert volumes == sorted(volumes, reverse=True)  # a higher MQL cut-off sends fewer leads to be worked
    assert any(p["cutoff"] == pytest.approx(0.1) for p in points)  # the cut-off in force is on the curve


def test_segment_cutoffs_change_only_their_segment(sample: ScoreSample) -> None:
    strict = SegmentPolicy(match=SegmentMatch(region="EMEA"), stages=StageCutoffs(MQL=0.98, SQL=0.99))
    base = simulate(sample, policy(), capacities(4, 4), curves=False)
    narrowed = simulate(sample, policy(segments=[strict]), capacities(4, 4), curves=False)

    def worked(sim: dict[str, Any], region: str) -> float:
        return float(
            sum(s["weekly_leads"] for s in sim["segments"] if s["dimension"] == "region" and s["value"] == region)
        )

    assert worked(narrowed, "emea") < worked(base, "emea")
    assert worked(narrowed, "apac") == pytest.approx(worked(base, "apac"))


def test_matrix_reports_every_cell_with_its_queue(sample: ScoreSample) -> None:
    matrix = simulate(sample, policy(), capacities(4, 4), curves=False)["matrix"]
    assert len(matrix) == 12
    assert {(c["grade"], c["stage"]) for c in matrix} == {(g, s) for g in GRADE_ORDER for s in STAGE_ORDER}
    sql_a = next(c for c in matrix if (c["grade"], c["stage"]) == ("A", "SQL"))
    nurture_a = next(c for c in matrix if (c["grade"], c["stage"]) == ("A", "nurture"))
    assert sql_a["queue"] == "sales"
    assert sql_a["conversion_rate"] > nurture_a["conversion_rate"]  # the label follows readiness


def test_recent_scores_replay_without_labels() -> None:
    now = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    records = [
        ScoreRecord(
            request_id=f"r{i}", lead_id=f"L{i % 50}", scored_at=now + dt.timedelta(days=i % 30), model_version="3",
            thresholds_version=1,
            inputs={"lead": {"lead_id": f"L{i % 50}", "region": "EMEA", "employee_count": 300, "source": "Webinar"}},
            outputs={"fit": {"score": 80.0, "probability": 0.3}, "readiness": {"probability": 0.02 * (i % 25)}},
        )
        for i in range(200)
    ]  # fmt: skip
    sample = recent_sample(records)
    assert sample.kind == "recent" and not sample.labelled
    assert set(sample.frame["size_band"]) == {"201-1000"}
    assert set(sample.frame["region"]) == {"emea"}
    sim = simulate(sample, policy(), capacities(4, 4), curves=False)
    assert sim["queues"][0]["observed_sqls"] is None  # no outcomes yet: only expected figures


def test_a_holdout_without_routing_scores_is_refused_with_the_fix() -> None:
    old = snapshots(20).drop(columns=["fit_score"])
    with pytest.raises(SampleError, match=r"fit_score.*retrain"):
        holdout_sample(old)
