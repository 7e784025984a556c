"""Input checks before any work, whole accounts per partition, and CSV numbers refused by name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.validation import ContractError
from scaleout.cluster import ClusterError, ClusterSpec
from scaleout.tables import (
    InputError,
    account_bucket,
    canonical_tables,
    check_source,
    locate,
    pandas_partitions,
    source_of,
)
from tests.factories import lead, leads_frame


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    leads = leads_frame(*(lead(f"L{i}", account_id=f"A{i % 7}") for i in range(60)))
    touches = pd.DataFrame(
        {
            "lead_id": [f"L{i % 60}" for i in range(300)],
            "occurred_at": pd.Timestamp("2025-03-01", tz="UTC") + pd.to_timedelta(range(300), unit="h"),
            "activity_type": "page_view",
        }
    )
    return leads, touches


def test_every_partition_holds_whole_accounts_and_their_touches() -> None:
    leads, touches = _tables()
    parts = list(pandas_partitions(leads, touches, 4))
    assert sum(len(p) for p, _ in parts) == len(leads) and sum(len(a) for _, a in parts) == len(touches)
    seen: set[str] = set()
    for part_leads, part_touches in parts:
        accounts = set(part_leads["account_id"])
        assert not accounts & seen
        seen |= accounts
        assert set(part_touches["lead_id"]) <= set(part_leads["lead_id"])
        canonical_tables(part_leads, part_touches)  # each partition validates on its own
    # A bucket is a function of the account id alone: the same in every process.
    assert account_bucket(pd.Series(["A1", "A1", 7])).tolist()[:2] == account_bucket(pd.Series(["A1"])).tolist() * 2


def test_columns_are_checked_from_the_header_naming_table_column_and_problem(tmp_path: Path) -> None:
    leads, touches = _tables()
    leads.drop(columns=["account_id"]).to_parquet(tmp_path / "leads.parquet")
    touches.assign(occurred_at=1.5).to_parquet(tmp_path / "activities.parquet")
    with pytest.raises(InputError, match=r"leads\.account_id: missing column"):
        check_source(locate(str(tmp_path), "leads"))
    with pytest.raises(InputError, match=r"activities\.occurred_at: wrong type double, expected timestamps"):
        check_source(locate(str(tmp_path), "activities"))
    touches.to_csv(tmp_path / "touches.csv", index=False)
    check_source(source_of(str(tmp_path / "touches.csv"), "activities"))
    with pytest.raises(InputError, match="no such file or folder"):
        check_source(source_of(str(tmp_path / "nothing.parquet"), "leads"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no leads table"):
        locate(str(tmp_path / "empty"), "leads")


def test_numbers_read_as_text_are_typed_and_garbage_is_refused_by_name() -> None:
    leads, touches = _tables()
    text = leads.astype({"employee_count": object})
    text["employee_count"] = [" 120", "", *["35"] * (len(text) - 3), "lots"]
    with pytest.raises(
        ContractError, match=r"leads\.employee_count: values are not numbers \(1 rows, e\.g\. lead_id=L59\)"
    ):
        canonical_tables(text, touches)
    text.loc[text.index[-1], "employee_count"] = "4000"
    canonical, _ = canonical_tables(text, touches)
    assert canonical["employee_count"].iloc[0] == 120 and pd.isna(canonical["employee_count"].iloc[1])


def test_cluster_options_that_cannot_work_are_refused_before_a_cluster_starts() -> None:
    with pytest.raises(ClusterError, match="tcp://host:8786"):
        ClusterSpec("dask-scheduler:8786").check()
    with pytest.raises(ClusterError, match="an existing one has its own"):
        ClusterSpec("tcp://dask:8786", workers=4).check()
    with pytest.raises(ClusterError, match="give a size such as 4GB"):
        ClusterSpec(memory_limit="lots").check()
    with pytest.raises(ClusterError, match="at least 256MiB"):
        ClusterSpec(memory_limit="100MB").check()
