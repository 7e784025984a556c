"""Hand-built cases for every label rule: eligibility, horizon, censoring, already-SQL, recycling, fit labels."""

from __future__ import annotations

import pandas as pd
import pytest

from features.validation import validate_leads
from tests.conftest import Trained
from tests.factories import lead, leads_frame, ts
from training.config import SnapshotConfig
from training.snapshots import build_fit_examples, build_readiness_snapshots

# Mondays in 2024: Jan 1, 8, 15, 22, 29, Feb 5, 12, ...
ALL = SnapshotConfig(horizon_days=30, max_per_lead=None)


def _snapshots(*rows: dict[str, object], end: str = "2024-06-03", config: SnapshotConfig = ALL) -> pd.DataFrame:
    return build_readiness_snapshots(validate_leads(leads_frame(*rows)), ts(end), config)


def _by_date(frame: pd.DataFrame, lead_id: str) -> dict[str, int]:
    part = frame[frame["lead_id"] == lead_id]
    return {d.strftime("%Y-%m-%d"): int(v) for d, v in zip(part["as_of"], part["label"], strict=True)}


def test_label_is_sql_within_horizon_and_sql_leads_are_not_examples() -> None:
    frame = _snapshots(
        lead("L1", created_at="2024-01-03", mql_at="2024-01-20", sql_at="2024-02-10", lost_at="2024-03-01")
    )
    labels = _by_date(frame, "L1")
    # First grid date strictly after creation is Jan 8; SQL on Feb 10 is within 30 days of Jan 15 .. Feb 5.
    assert labels == {"2024-01-08": 0, "2024-01-15": 1, "2024-01-22": 1, "2024-01-29": 1, "2024-02-05": 1}
    # From Feb 12 on the lead is SQL, then lost: never an example again.


def test_stage_at_as_of_is_recorded() -> None:
    frame = _snapshots(
        lead(
            "L1",
            created_at="2024-01-03",
            mql_at="2024-01-20",
            sal_at="2024-01-30",
            sql_at="2024-02-20",
            lost_at="2024-03-01",
        )
    )
    stages = dict(zip(frame["as_of"].dt.strftime("%m-%d"), frame["stage"].astype(str), strict=True))
    assert stages["01-15"] == "lead" and stages["01-22"] == "mql" and stages["02-05"] == "sal"


def test_snapshots_whose_window_passes_data_end_are_censored() -> None:
    frame = _snapshots(lead("L1", created_at="2024-05-01"), end="2024-06-03")
    # Grid dates after creation: May 6, 13, 20, 27, Jun 3; only May 6 + 30 days <= Jun 3 (May 6 -> Jun 5 is not).
    assert _by_date(frame, "L1") == {}
    frame = _snapshots(lead("L1", created_at="2024-05-01"), end="2024-06-05")
    assert _by_date(frame, "L1") == {"2024-05-06": 0}


def test_sql_exactly_at_as_of_counts_as_future() -> None:
    frame = _snapshots(lead("L1", created_at="2024-01-03", sql_at="2024-01-15"))
    assert _by_date(frame, "L1") == {"2024-01-08": 1, "2024-01-15": 1}


def test_sql_exactly_at_horizon_end_does_not_count() -> None:
    frame = _snapshots(lead("L1", created_at="2024-01-03", sql_at="2024-02-07"))  # Jan 8 + 30 days = Feb 7
    assert _by_date(frame, "L1")["2024-01-08"] == 0
    assert _by_date(frame, "L1")["2024-01-15"] == 1


def test_disqualified_lead_leaves_until_recycled_then_label_is_requalification() -> None:
    frame = _snapshots(
        lead(
            "L1",
            created_at="2024-01-03",
            mql_at="2024-01-10",
            lost_at="2024-01-20",
            recycled_at="2024-03-01",
            requalified_at="2024-03-20",
            won_at="2024-05-01",
        )
    )
    labels = _by_date(frame, "L1")
    assert labels["2024-01-15"] == 0  # MQL, disqualified later without SQL
    assert not any(d in labels for d in ("2024-01-22", "2024-02-26"))  # lost, not yet recycled
    assert labels["2024-03-04"] == 1 and labels["2024-03-18"] == 1  # recycled; requalified on Mar 20
    assert "2024-03-25" not in labels  # requalified: SQL again, not an example


def test_closed_won_lead_is_not_an_example() -> None:
    frame = _snapshots(lead("L1", created_at="2024-01-03", sql_at="2024-01-05", won_at="2024-02-01"))
    assert _by_date(frame, "L1") == {}


def test_max_per_lead_samples_deterministically() -> None:
    rows = [lead(f"L{i}", created_at="2024-01-02") for i in range(5)]
    config = SnapshotConfig(max_per_lead=3, seed=4)
    a = _snapshots(*rows, config=config)
    b = _snapshots(*rows, config=config)
    assert a.groupby("lead_id").size().max() == 3
    pd.testing.assert_frame_equal(a, b)
    draws = set(a.groupby("lead_id")["as_of"].apply(tuple))
    assert len(draws) > 1  # each lead gets its own draw


def test_fit_label_is_won_for_old_enough_leads_and_young_leads_are_censored_whatever_their_outcome() -> None:
    leads = validate_leads(
        leads_frame(
            lead("old_won", created_at="2024-01-10", sql_at="2024-02-25", won_at="2024-05-30"),
            lead("young_won", created_at="2024-05-20", sql_at="2024-05-25", won_at="2024-05-30"),
            lead("old", created_at="2024-01-01"),
            lead("young", created_at="2024-05-01"),
        )
    )
    frame = build_fit_examples(leads, ts("2024-06-03"), SnapshotConfig(fit_horizon_days=90))
    assert dict(zip(frame["lead_id"], frame["label"], strict=True)) == {"old_won": 1, "old": 0}


def test_max_rows_keeps_a_uniform_seeded_sample() -> None:
    leads = validate_leads(leads_frame(*(lead(f"L{i}", created_at="2024-01-01") for i in range(40))))
    full = build_readiness_snapshots(leads, ts("2024-12-30"), SnapshotConfig(max_per_lead=None, max_rows=None))
    capped = build_readiness_snapshots(leads, ts("2024-12-30"), SnapshotConfig(max_per_lead=None, max_rows=300))
    again = build_readiness_snapshots(leads, ts("2024-12-30"), SnapshotConfig(max_per_lead=None, max_rows=300))
    assert len(full) > 1000 and len(capped) == 300
    pd.testing.assert_frame_equal(capped, again)
    assert capped.merge(full, on=["lead_id", "as_of"], how="left", indicator=True)["_merge"].eq("both").all()
    # Uniform: early and late grid dates keep about their share.
    early = full["as_of"] < full["as_of"].median()
    assert abs(capped["as_of"].lt(full["as_of"].median()).mean() - early.mean()) < 0.1


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SnapshotConfig(horizon_days=0)


@pytest.mark.parametrize("config", [SnapshotConfig(), SnapshotConfig(max_per_lead=None, max_rows=5_000)])
def test_the_grid_laid_out_a_block_of_leads_at_a_time_gives_the_same_snapshots(
    trained: Trained, config: SnapshotConfig
) -> None:
    # Blocks keep a training driver's memory bounded at millions of leads; they must not change a single snapshot.
    leads = trained.leads
    end = trained.training_set.data_end
    whole = build_readiness_snapshots(leads, end, config, block=len(leads))
    assert len(whole) > 1_000 and whole["stage"].nunique() > 2
    for block in (1, 7, 997):
        pd.testing.assert_frame_equal(build_readiness_snapshots(leads, end, config, block=block), whole)
