"""`export_tables`: the store's leads and touches come back as the simulator's tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, insert

import timeline.export as export_module
from features.spec import DEFAULT_CONTRACT, LeadContract, custom_attribute
from tests.postgres import fresh_database
from timeline.engine import make_engine
from timeline.export import (
    MANIFEST,
    EmptyStoreError,
    ExportError,
    export_tables,
    open_store,
    redact,
)
from timeline.schema import leads, touches
from training.config import SimulationConfig
from training.data import load_tables, read_table
from training.simulator import SimulatedFunnel, simulate

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def funnel(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFunnel:
    return simulate(SimulationConfig(n_leads=250, seed=11, oracle_max_rows=100))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with fresh_database() as name:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def _value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def lead_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The simulator's leads as rows of the store's leads table."""
    rows: list[dict[str, Any]] = []
    for record in frame.astype(object).to_dict("records"):
        row = {str(name): _value(value) for name, value in record.items()}
        rows.append({**row, "custom": None, "updated_at": NOW})
    return rows


def touch_rows(frame: pd.DataFrame, start: int = 0) -> list[dict[str, Any]]:
    """The simulator's activities as stored touches (properties as the ingest keeps them: compact JSON)."""
    rows = []
    for i, record in enumerate(frame.astype(object).to_dict("records"), start=start):
        text = _value(record["properties"])
        rows.append(
            {
                "touch_key": f"k{i}",
                "activity_id": None,
                "lead_id": record["lead_id"],
                "anonymous_id": None,
                "occurred_at": _value(record["occurred_at"]),
                "activity_type": record["activity_type"],
                "properties": None if text is None else json.dumps(json.loads(text), separators=(",", ":")),
                "received_at": NOW,
            }
        )
    return rows


def store(engine: Engine, lead_frame: pd.DataFrame, activity_frame: pd.DataFrame, extra: Sequence[Any] = ()) -> None:
    with engine.begin() as conn:
        conn.execute(insert(leads), lead_rows(lead_frame))
        if len(activity_frame):
            conn.execute(insert(touches), touch_rows(activity_frame))
        for table, rows in extra:
            conn.execute(insert(table), rows)


def sorted_activities(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["lead_id", "occurred_at", "activity_type", "properties"]
    return frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def test_the_store_exports_as_the_simulator_wrote_it(engine: Engine, funnel: SimulatedFunnel, tmp_path: Path) -> None:
    store(engine, funnel.leads, funnel.activities)
    counts = export_tables(engine, tmp_path / "export")

    assert (counts.leads, counts.activities) == (len(funnel.leads), len(funnel.activities))
    exported_leads = read_table(tmp_path / "export" / "leads")
    pd.testing.assert_frame_equal(exported_leads, funnel.leads, check_exact=True)
    exported = read_table(tmp_path / "export" / "activities")
    pd.testing.assert_frame_equal(sorted_activities(exported), sorted_activities(funnel.activities), check_exact=True)
    # The Parquet schema itself (not only what pandas makes of it) is the simulator's.
    funnel.leads.to_parquet(tmp_path / "simulated.parquet", index=False)
    expected = pq.read_schema(tmp_path / "simulated.parquet").remove_metadata()
    assert pq.read_schema(next((tmp_path / "export" / "leads").glob("*.parquet"))).remove_metadata() == expected
    # And the contract's validation reads the folder unchanged.
    validated_leads, validated_activities = load_tables(tmp_path / "export")
    assert len(validated_leads) == len(funnel.leads) and len(validated_activities) == len(funnel.activities)


def test_chunks_become_parts_that_read_back_whole(engine: Engine, funnel: SimulatedFunnel, tmp_path: Path) -> None:
    store(engine, funnel.leads, funnel.activities)
    counts = export_tables(engine, tmp_path / "export", chunk_rows=97)

    lead_parts = sorted((tmp_path / "export" / "leads").glob("part-*.parquet"))
    activity_parts = sorted((tmp_path / "export" / "activities").glob("part-*.parquet"))
    assert len(lead_parts) == -(-len(funnel.leads) // 97)
    assert len(activity_parts) == -(-len(funnel.activities) // 97)
    assert counts.parts == len(lead_parts) + len(activity_parts)
    assert max(len(pd.read_parquet(p)) for p in activity_parts) == 97
    pd.testing.assert_frame_equal(read_table(tmp_path / "export" / "leads"), funnel.leads)
    assert len(read_table(tmp_path / "export" / "activities")) == len(funnel.activities)


def test_anonymous_and_orphan_touches_are_left_out_and_counted(
    engine: Engine, funnel: SimulatedFunnel, tmp_path: Path
) -> None:
    lead_frame = funnel.leads.head(20)
    activity_frame = funnel.activities[funnel.activities["lead_id"].isin(lead_frame["lead_id"])]
    anonymous = touch_rows(funnel.activities.head(3), start=100_000)
    for row in anonymous:
        row.update(lead_id=None, anonymous_id="visitor-1")
    orphans = touch_rows(funnel.activities.tail(2), start=200_000)
    for row in orphans:
        row["lead_id"] = "never-created"
    store(engine, lead_frame, activity_frame, extra=[(touches, anonymous + orphans)])

    counts = export_tables(engine, tmp_path / "export")

    assert (counts.anonymous_touches, counts.orphan_touches) == (3, 2)
    assert counts.activities == len(activity_frame)
    exported = read_table(tmp_path / "export" / "activities")
    assert set(exported["lead_id"]) <= set(lead_frame["lead_id"])
    manifest = json.loads((tmp_path / "export" / MANIFEST).read_text())
    assert (manifest["skipped_anonymous_touches"], manifest["skipped_orphan_touches"]) == (3, 2)


def test_a_lead_without_an_account_is_its_own(engine: Engine, funnel: SimulatedFunnel, tmp_path: Path) -> None:
    lead_frame = funnel.leads.head(5).copy()
    lead_frame["account_id"] = [None, "A1", None, "A1", None]
    store(engine, lead_frame, funnel.activities.head(0))

    export_tables(engine, tmp_path / "export")

    exported = read_table(tmp_path / "export" / "leads")
    ids = lead_frame["lead_id"].tolist()
    assert exported["account_id"].tolist() == [ids[0], "A1", ids[2], "A1", ids[4]]
    assert exported["account_id"].dtype == funnel.leads["account_id"].dtype


def test_properties_come_back_as_the_json_the_contract_takes(
    engine: Engine, funnel: SimulatedFunnel, tmp_path: Path
) -> None:
    lead_frame = funnel.leads.head(1)
    lead_id = lead_frame["lead_id"].iloc[0]
    stamp = lead_frame["created_at"].iloc[0].to_pydatetime()
    sent = [{"page": "/prix", "title": "Tarifs : été"}, {}, None]
    rows = [
        {
            "touch_key": f"t{i}",
            "activity_id": None,
            "lead_id": lead_id,
            "anonymous_id": None,
            "occurred_at": stamp + dt.timedelta(minutes=i),
            "activity_type": "page_view",
            "properties": None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False),
            "received_at": NOW,
        }
        for i, value in enumerate(sent)
    ]
    store(engine, lead_frame, funnel.activities.head(0), extra=[(touches, rows)])

    export_tables(engine, tmp_path / "export")

    exported = read_table(tmp_path / "export" / "activities")
    # Key order kept, written as json.dumps writes it (as the simulator does); an empty object says nothing.
    assert exported["properties"].iloc[0] == json.dumps(sent[0])
    assert exported["properties"].iloc[1:].isna().all()


def test_custom_attributes_of_the_contract_become_leads_columns(
    engine: Engine, funnel: SimulatedFunnel, tmp_path: Path
) -> None:
    contract = LeadContract(
        custom_attributes=(
            custom_attribute("plan", "category", "Product plan."),
            custom_attribute("seats", "int", "Seats bought."),
            custom_attribute("nps", "float", "Net promoter score."),
        )
    )
    lead_frame = funnel.leads.head(3)
    store(engine, lead_frame, funnel.activities.head(0))
    customs = [{"plan": "pro", "seats": 12, "nps": 7.5}, {"plan": "free"}, None]
    with engine.begin() as conn:
        for lead_id, custom in zip(lead_frame["lead_id"], customs, strict=True):
            text = None if custom is None else json.dumps(custom, sort_keys=True)
            conn.execute(leads.update().where(leads.c.lead_id == lead_id).values(custom=text))

    export_tables(engine, tmp_path / "export", contract=contract)

    exported = read_table(tmp_path / "export" / "leads")
    assert list(exported.columns) == list(contract.leads_table.names)
    assert exported["plan"].tolist()[:2] == ["pro", "free"] and pd.isna(exported["plan"].iloc[2])
    assert str(exported["seats"].dtype) == "Int64" and exported["seats"].tolist()[0] == 12
    assert exported["seats"].isna().tolist() == [False, True, True]
    assert exported["nps"].dtype == "float64" and exported["nps"].iloc[0] == 7.5
    validated, _ = load_tables(tmp_path / "export", contract)
    assert validated["seats"].tolist()[0] == 12
    # Without the contract, the columns are the built-in ones only.
    export_tables(engine, tmp_path / "plain")
    assert list(read_table(tmp_path / "plain" / "leads").columns) == list(DEFAULT_CONTRACT.leads_table.names)


def test_an_empty_store_is_refused_and_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(EmptyStoreError, match="the store holds no leads"):
        export_tables(engine, tmp_path / "export")
    assert [p.name for p in tmp_path.iterdir() if "export" in p.name] == []  # nor a staging folder left behind


def test_an_export_replaces_an_earlier_one_but_never_another_folder(
    engine: Engine, funnel: SimulatedFunnel, tmp_path: Path
) -> None:
    store(engine, funnel.leads.head(10), funnel.activities.head(0))
    export_tables(engine, tmp_path / "export")
    with engine.begin() as conn:
        conn.execute(insert(leads), lead_rows(funnel.leads.iloc[10:12]))
    export_tables(engine, tmp_path / "export")
    assert len(read_table(tmp_path / "export" / "leads")) == 12
    assert [p.name for p in tmp_path.iterdir() if "export" in p.name] == ["export"]

    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds more than an earlier export"):
        export_tables(engine, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if "export" in p.name or p.name == "data") == ["data", "export"]


def test_one_snapshot_no_touch_without_its_lead(
    engine: Engine, store_url: str, funnel: SimulatedFunnel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lead and its touch written while the export runs are both in it or both out of it."""
    store(engine, funnel.leads.head(10), funnel.activities.head(0))
    writer = make_engine(store_url)
    late = funnel.leads.iloc[[10]]
    real = export_module._leads_frame

    def leads_frame_then_write(rows: Any, columns: Any) -> pd.DataFrame:
        frame = real(rows, columns)
        with writer.begin() as conn:  # another client of the store, while the export reads
            conn.execute(insert(leads), lead_rows(late))
            row = touch_rows(funnel.activities[funnel.activities["lead_id"] == late["lead_id"].iloc[0]].head(1))
            conn.execute(insert(touches), row)
        return frame

    monkeypatch.setattr(export_module, "_leads_frame", leads_frame_then_write)
    try:
        counts = export_tables(engine, tmp_path / "export")
    finally:
        writer.dispose()

    assert counts.leads == 10 and counts.activities == 0 and counts.orphan_touches == 0
    load_tables(tmp_path / "export")  # the contract's check that every activity has its lead


def test_open_store_reads_and_never_creates(tmp_path: Path, engine: Engine, store_url: str) -> None:
    opened = open_store(store_url)
    opened.dispose()

    missing = tmp_path / "nowhere.db"
    with pytest.raises(ExportError, match="no SQLite store at"):
        open_store(f"sqlite:///{missing}")
    assert not missing.exists()
    other = tmp_path / "other.db"
    make_engine(f"sqlite:///{other}").dispose()
    with make_engine(f"sqlite:///{other}").begin() as conn:
        conn.exec_driver_sql("DROP TABLE touches")
    with pytest.raises(ExportError, match="not a leadscore store"):
        open_store(f"sqlite:///{other}")
    with pytest.raises(ExportError, match="cannot reach the store"):
        open_store("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(ExportError, match="not a database URL"):
        open_store("not a url")


def test_redact_hides_the_password_only() -> None:
    shown = redact("postgresql+psycopg://scott:tiger@db.example:5432/leads")
    assert "tiger" not in shown and shown.startswith("postgresql+psycopg://scott:")
    assert shown.endswith("@db.example:5432/leads")
    assert redact("sqlite:///store.db") == "sqlite:///store.db"
