"""Tests of the funnel simulator: contract, lifecycle rules, exact oracle, realism bands, dirty data, I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from features.spec import (
    ACTIVITIES,
    ACTIVITY_TYPES,
    DEPARTMENTS,
    INDUSTRIES,
    LEADS,
    LIFECYCLE_CHAIN,
    LIFECYCLE_PREREQUISITES,
    SENIORITIES,
    SOURCES,
)
from training import simulator as sim
from training.simulator import (
    SimulatedFunnel,
    SimulationConfig,
    conversion_rates,
    readiness_labels,
    simulate,
    write_simulation,
)

LIFECYCLE = LIFECYCLE_CHAIN[1:]
BOFU = ("pricing_page_view", "demo_request", "free_trial_signup", "meeting_booked")
# Several chunks of a few accounts each, so chunk boundaries and global ids are exercised.
SMALL = SimulationConfig(n_leads=1200, seed=3, chunk_accounts=150, oracle_max_rows=5000, p_won_sample=40)
# Big enough for the realism bands, small enough to keep this file fast.
MODERATE = SimulationConfig(n_leads=20_000, oracle_max_rows=40_000, p_won_sample=100)


@pytest.fixture(scope="module")
def small() -> SimulatedFunnel:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def moderate() -> SimulatedFunnel:
    return simulate(MODERATE)


def _frames(funnel: SimulatedFunnel) -> dict[str, pd.DataFrame]:
    return {"leads": funnel.leads, "activities": funnel.activities, "truth": funnel.truth, "oracle": funnel.oracle}


def _norm(values: pd.Series) -> pd.Series:
    return values.dropna().str.strip().str.lower()


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_tables() -> None:
    config = SimulationConfig(n_leads=300, days=200, chunk_accounts=40, oracle_max_rows=2000, p_won_sample=10)
    first, second = _frames(simulate(config)), _frames(simulate(config))
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, second[name], check_exact=True)


def test_different_seed_gives_different_tables() -> None:
    a = simulate(SimulationConfig(n_leads=300, days=200, seed=1, p_won_sample=0))
    b = simulate(SimulationConfig(n_leads=300, days=200, seed=2, p_won_sample=0))
    assert not a.leads["created_at"].equals(b.leads["created_at"])
    assert len(a.activities) != len(b.activities) or not a.activities["occurred_at"].equals(b.activities["occurred_at"])


# --- contract ------------------------------------------------------------------------------------------------------


def test_tables_follow_the_contract(small: SimulatedFunnel) -> None:
    leads, acts = small.leads, small.activities
    default_str = pd.Series(["x"]).dtype
    utc_ns = pd.DatetimeTZDtype("ns", "UTC")
    assert tuple(leads.columns) == LEADS.names
    assert tuple(acts.columns) == ACTIVITIES.names
    assert len(leads) == SMALL.n_leads
    for column in LEADS.columns:
        expected = {"datetime": utc_ns, "int": pd.Int64Dtype(), "float": np.dtype("float64")}.get(
            column.dtype, default_str
        )
        assert leads[column.name].dtype == expected, column.name
    assert acts["lead_id"].dtype == default_str
    assert acts["occurred_at"].dtype == utc_ns
    assert acts["activity_type"].dtype == default_str
    assert acts["properties"].dtype == default_str
    assert leads["lead_id"].is_unique
    assert leads["lead_id"].str.fullmatch(r"L\d{7}").all()
    assert leads["account_id"].str.fullmatch(r"A\d{6}").all()
    for name in (c.name for c in LEADS.columns if not c.nullable):
        assert leads[name].notna().all(), name


def test_activities_are_valid_sorted_and_inside_the_window(small: SimulatedFunnel) -> None:
    leads, acts = small.leads, small.activities
    assert set(acts["activity_type"]) <= set(ACTIVITY_TYPES)
    assert acts["lead_id"].isin(leads["lead_id"]).all()
    keys = list(zip(acts["lead_id"], acts["occurred_at"], strict=True))
    assert keys == sorted(keys)
    created = acts["lead_id"].map(leads.set_index("lead_id")["created_at"])
    assert (acts["occurred_at"] >= created).all()  # no anonymous pre-conversion visits are modelled
    assert (acts["occurred_at"] < SMALL.end_ts).all()
    assert (leads["created_at"] >= SMALL.start_ts).all() and (leads["created_at"] < SMALL.end_ts).all()
    props = acts["properties"].dropna()
    assert 0.5 < len(props) / len(acts) < 1.0
    assert all(isinstance(json.loads(p), dict) for p in props.iloc[:2000])
    pricing = acts.loc[acts["activity_type"] == "pricing_page_view", "properties"].dropna()
    assert pricing.str.contains("/pricing").all()


def test_lifecycle_timestamps_respect_chain_order_and_prerequisites(small: SimulatedFunnel) -> None:
    leads = small.leads
    for i, later in enumerate(LIFECYCLE_CHAIN):
        for earlier in LIFECYCLE_CHAIN[:i]:
            both = leads[earlier].notna() & leads[later].notna()
            assert (leads.loc[both, later] >= leads.loc[both, earlier]).all(), (earlier, later)
    for column, prerequisite in LIFECYCLE_PREREQUISITES:
        assert leads.loc[leads[column].notna(), prerequisite].notna().all(), column
    for column in LIFECYCLE:
        assert (leads[column].dropna() < SMALL.end_ts).all()
    # The chain is exercised, including skips and the recycle cycle.
    assert (leads["sql_at"].notna() & leads["mql_at"].isna()).any()
    assert (leads["lost_at"].notna() & leads["sql_at"].isna()).any()
    assert leads["requalified_at"].notna().any() and leads["won_at"].notna().any()


# --- label rules and oracle ----------------------------------------------------------------------------------------


def test_readiness_labels_follow_the_rules_on_a_hand_made_history() -> None:
    t = pd.Timestamp("2024-03-04", tz="UTC")
    day = pd.Timedelta(days=1)
    nat = pd.NaT
    rows = [  # lead_id, created, mql, sal, sql, lost, recycled, requalified, won -> (eligible, label) at t
        ("L1", t - 9 * day, nat, nat, t + 3 * day, nat, nat, nat, nat),  # lead, SQL inside the window
        ("L2", t - 9 * day, t - 2 * day, nat, t + 40 * day, nat, nat, nat, nat),  # MQL, SQL after the window
        ("L3", t - 9 * day, nat, nat, t - day, nat, nat, nat, nat),  # already SQL
        ("L4", t, nat, nat, t + day, nat, nat, nat, nat),  # created at as_of: not before it
        ("L5", t - 90 * day, nat, nat, t - 60 * day, t - 50 * day, t - day, t + 29 * day, nat),  # recycled
        ("L6", t - 90 * day, t - 80 * day, nat, nat, t - 5 * day, nat, nat, nat),  # lost, not recycled
        ("L7", t - 9 * day, nat, t - day, t + 30 * day, nat, nat, nat, nat),  # SAL, SQL exactly at the window end
        ("L8", t - 9 * day, nat, nat, t, nat, nat, nat, nat),  # SQL exactly at as_of: inside
    ]
    leads = pd.DataFrame(rows, columns=["lead_id", *LIFECYCLE_CHAIN])
    for column in LIFECYCLE_CHAIN:
        leads[column] = pd.to_datetime(leads[column], utc=True)
    eligible, label = readiness_labels(leads, leads["lead_id"], pd.DatetimeIndex([t] * len(rows)), 30)
    assert eligible.tolist() == [True, True, False, False, True, False, True, True]
    assert label.tolist() == [True, False, False, True, True, False, False, True]


def test_oracle_rows_are_eligible_uncensored_grid_snapshots(small: SimulatedFunnel) -> None:
    oracle = small.oracle
    assert list(oracle.columns) == ["lead_id", "as_of", "p_ready"]
    assert oracle["as_of"].dtype == pd.DatetimeTZDtype("ns", "UTC")
    assert not oracle.duplicated(["lead_id", "as_of"]).any()
    offset = oracle["as_of"] - SMALL.start_ts
    assert (offset.dt.seconds == 0).all() and (offset.dt.microseconds == 0).all()  # UTC midnight
    assert (offset.dt.days % SMALL.snapshot_every_days == 0).all() and (offset.dt.days > 0).all()
    assert (oracle["as_of"] + pd.Timedelta(days=SMALL.horizon_days) <= SMALL.end_ts).all()
    assert oracle["p_ready"].between(0.0, 1.0).all()
    eligible, _ = readiness_labels(small.leads, oracle["lead_id"], oracle["as_of"], SMALL.horizon_days)
    assert eligible.all()


def test_oracle_is_capped_by_a_uniform_sample() -> None:
    config = SimulationConfig(n_leads=500, days=300, chunk_accounts=60, oracle_max_rows=700, p_won_sample=0)
    full = simulate(SimulationConfig(n_leads=500, days=300, chunk_accounts=60, oracle_max_rows=10**6, p_won_sample=0))
    capped = simulate(config)
    assert len(full.oracle) > 700
    assert len(capped.oracle) == 700
    # Same history and the same (exact) p_ready for the snapshots kept.
    pd.testing.assert_frame_equal(full.leads, capped.leads)
    merged = capped.oracle.merge(full.oracle, on=["lead_id", "as_of"], suffixes=("", "_full"))
    assert len(merged) == 700
    np.testing.assert_allclose(merged["p_ready"], merged["p_ready_full"])


def test_oracle_matches_monte_carlo_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact propagation agrees with simulating the same states forward with the sampling kernel."""
    calls: list[tuple[Any, ...]] = []
    propagate = sim._propagate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return propagate(*args, **kwargs)

    monkeypatch.setattr(sim, "_propagate", spy)
    simulate(SimulationConfig(n_leads=2500, days=300, oracle_max_rows=20_000, p_won_sample=0))
    model, state, account_level, days, steps, _, hit_stages = calls[-1]
    assert hit_stages == sim.READINESS_HIT_STAGES
    day = int(np.bincount(days).argmax())
    rows = np.flatnonzero(days == day)[:150]
    exact = propagate(model, state.take(rows), account_level[rows], days[rows], steps, sim.PRE_READY_STAGES, hit_stages)
    replicates = 400
    index = np.repeat(rows, replicates)
    copies = state.take(index)
    copies.acct = np.arange(index.size)  # each copy owns a private copy of its account's intent
    levels = account_level[index].copy()
    hit = np.zeros(index.size, dtype=bool)
    rng = np.random.default_rng(0)
    for t in range(steps):
        out = sim._step(copies, levels, day + t, rng, model)
        hit[out.moved_rows[np.isin(out.moved_to, hit_stages)]] = True
    simulated = hit.reshape(-1, replicates).mean(axis=1)
    se = np.sqrt(np.sum(exact * (1 - exact)) / replicates) / rows.size
    assert abs(simulated.mean() - exact.mean()) < 4 * se + 1e-4
    hot = exact > np.quantile(exact, 0.9)
    assert simulated[hot].mean() > 3 * simulated[~hot].mean()


def test_oracle_auc_is_realistic_and_engagement_carries_signal(moderate: SimulatedFunnel) -> None:
    oracle, leads, acts = moderate.oracle, moderate.leads, moderate.activities
    _, label = readiness_labels(leads, oracle["lead_id"], oracle["as_of"], MODERATE.horizon_days)
    assert 0.80 <= roc_auc_score(label, oracle["p_ready"]) <= 0.92
    assert abs(oracle["p_ready"].mean() - label.mean()) < 0.25 * label.mean()  # calibrated on average
    # Leads with a BOFU touch in the week before as_of are far more often ready than the rest.
    recent = oracle[["lead_id", "as_of"]].merge(acts[acts["activity_type"].isin(BOFU)], on="lead_id")
    recent = recent[
        (recent["occurred_at"] < recent["as_of"]) & (recent["occurred_at"] >= recent["as_of"] - pd.Timedelta(days=7))
    ]
    flagged = pd.MultiIndex.from_frame(oracle[["lead_id", "as_of"]]).isin(
        pd.MultiIndex.from_frame(recent[["lead_id", "as_of"]])
    )
    assert label[flagged].mean() > 4 * label[~flagged].mean()


# --- realism ---------------------------------------------------------------------------------------------------------


def test_stage_conversion_rates_fall_in_the_target_bands(moderate: SimulatedFunnel) -> None:
    rates = conversion_rates(moderate.leads, MODERATE.end_ts)
    assert 0.25 <= rates.lead_to_mql <= 0.40
    assert 0.10 <= rates.mql_to_sql <= 0.20
    assert 0.20 <= rates.sql_to_won <= 0.30
    assert rates.n_sql > 300


def test_volume_buying_groups_and_fit(moderate: SimulatedFunnel) -> None:
    leads, acts, truth = moderate.leads, moderate.activities, moderate.truth
    assert 15 <= len(acts) / len(leads) <= 25
    group = leads.groupby("account_id").size()
    assert 3.0 <= group.mean() <= 5.0 and group.max() <= MODERATE.max_buying_group
    assert truth["icp_fit"].between(0, 1).all() and 0.2 < truth["icp_fit"].mean() < 0.5
    assert truth["p_won"].notna().sum() == MODERATE.p_won_sample
    assert truth["p_won"].dropna().between(0, 1).all()
    # Fit matters: the best-fitting fifth of leads wins far more often than the worst.
    won = leads["won_at"].notna().to_numpy()
    fit = truth["icp_fit"].to_numpy()
    assert won[fit > np.quantile(fit, 0.8)].mean() > 4 * won[fit < np.quantile(fit, 0.2)].mean()


def test_buying_groups_move_together(moderate: SimulatedFunnel) -> None:
    """A colleague of an SQL lead is far more likely to become SQL than a lead at an account without one."""
    leads = moderate.leads
    sql = leads["sql_at"].notna().astype(int)
    per_account = sql.groupby(leads["account_id"]).transform("sum")
    colleagues = per_account - sql
    size = leads.groupby("account_id")["lead_id"].transform("size")
    has_peers = size > 1
    with_sql_peer = sql[has_peers & (colleagues > 0)].mean()
    without = sql[has_peers & (colleagues == 0)].mean()
    assert with_sql_peer > 2 * without


def test_bofu_touches_cluster_before_qualification(moderate: SimulatedFunnel) -> None:
    leads, acts = moderate.leads, moderate.activities
    sql_at = acts["lead_id"].map(leads.set_index("lead_id")["sql_at"])
    before = (acts["occurred_at"] < sql_at) & (acts["occurred_at"] >= sql_at - pd.Timedelta(days=30))
    bofu = acts["activity_type"].isin(BOFU)
    assert bofu[before].mean() > 2 * bofu.mean()


def test_seasonality_weekends_august_and_december(moderate: SimulatedFunnel) -> None:
    for stamps in (moderate.leads["created_at"], moderate.activities["occurred_at"]):
        per_day = stamps.dt.floor("D").value_counts()
        days = per_day.index
        weekday = per_day[days.day_of_week < 5].mean()
        assert per_day[days.day_of_week >= 5].mean() < 0.6 * weekday
        weekdays = per_day[days.day_of_week < 5]
        months = weekdays.index.month
        assert weekdays[months == 8].mean() < 0.9 * weekdays[np.isin(months, (5, 6))].mean()
        assert weekdays[months == 12].mean() < 0.9 * weekdays[np.isin(months, (10, 11))].mean()


def test_dirty_data_is_present(moderate: SimulatedFunnel) -> None:
    leads = moderate.leads
    for column in ("employee_count", "annual_revenue", "seniority"):
        assert 0.10 <= leads[column].isna().mean() <= 0.30, column
    industry = leads["industry"].dropna()
    assert industry.isin(["Sofware"]).any()  # typo
    assert industry.str.startswith(" ").any() or industry.str.endswith(" ").any()  # stray spaces
    assert industry.isin(["HEALTHCARE", "Healthcare"]).any()  # case variants
    for column, vocabulary in (
        ("industry", INDUSTRIES),
        ("department", DEPARTMENTS),
        ("source", SOURCES),
        ("seniority", SENIORITIES),
    ):
        values = _norm(leads[column])
        assert (~values.isin(vocabulary)).any(), column  # unseen values and unfixable typos
        assert values.isin(vocabulary).mean() > 0.85, column  # but mostly recognisable
    assert leads["country"].isin(["USA", "UK"]).any()
    assert leads["email_domain"].isin(["gmail.com", "yahoo.com"]).any()


# --- chunks and files --------------------------------------------------------------------------------------------


def test_write_simulation_writes_the_same_tables_chunk_by_chunk(small: SimulatedFunnel, tmp_path: Path) -> None:
    summary = write_simulation(SMALL, tmp_path)
    n_chunks = -(-small.leads["account_id"].nunique() // SMALL.chunk_accounts)
    assert summary.n_parts == n_chunks > 1
    assert (summary.n_leads, summary.n_activities) == (len(small.leads), len(small.activities))
    assert (summary.n_truth, summary.n_oracle) == (len(small.truth), len(small.oracle))
    for name, frame in _frames(small).items():
        parts = sorted((tmp_path / name).glob("part-*.parquet"))
        assert len(parts) == n_chunks
        read = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        pd.testing.assert_frame_equal(read, frame, check_dtype=False)
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
                assert read[column].dtype == frame[column].dtype, (name, column)


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="horizon_days"):
        SimulationConfig(days=20, horizon_days=30)
    with pytest.raises(ValueError, match="account_burst_to"):
        SimulationConfig(account_burst_to=(0.5, 0.5))
