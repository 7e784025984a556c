"""The store's leads and touches as the contract's `leads` and `activities` tables, in Parquet parts, for training."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Select, and_, create_engine, exists, func, inspect, not_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from features.spec import ACTIVITIES, DEFAULT_CONTRACT, LEADS, ColumnSpec, LeadContract
from timeline.schema import leads, touches

log = logging.getLogger(__name__)

# Rows per Parquet part (and per fetch from the database): ~30 MB of Python objects for the widest table, so an
# export of any size runs in bounded memory, and parts stay large enough for Parquet to compress well.
DEFAULT_CHUNK_ROWS = 100_000
TABLES = ("leads", "activities")
MANIFEST = "export.json"  # what the export holds and where it came from; with the two tables, all an export writes


class ExportError(Exception):
    """The store cannot be exported (unreachable, not a store, no leads) or the output folder cannot take it."""


class EmptyStoreError(ExportError):
    """The store holds no leads: there is nothing to train on."""


class OutputFolderError(ExportError):
    """The output folder cannot take an export (a file, or a folder holding more than an earlier export)."""


@dataclass(frozen=True, slots=True)
class ExportCounts:
    """What an export wrote, and the touches it left out because the contract has no place for them."""

    out_dir: Path
    leads: int
    activities: int
    anonymous_touches: int  # touches of visitors never identified (lead_id NULL): not the contract's
    orphan_touches: int  # touches of a lead id the store holds no lead for: the contract refuses them
    parts: int  # Parquet parts written, both tables


def redact(url: str) -> str:
    """`url` with any password masked, as it may be shown and recorded."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a database URL>"


def open_store(url: str) -> Engine:
    """An engine reading the service store at `url`; ExportError if it is not a URL, unreachable, or not a store.

    Unlike the service's `make_engine`, it never creates or upgrades a store: an export only reads, and a wrong URL
    must not leave an empty database behind.
    """
    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ExportError(f"{shown} is not a database URL: {err}") from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not Path(database).is_file():
        raise ExportError(f"there is no SQLite store at {parsed.database}")
    try:
        engine = create_engine(parsed)
        found = set(inspect(engine).get_table_names())
    except ImportError as err:
        raise ExportError(f"the store {shown} needs a database driver that is not installed: {err}") from None
    except (SQLAlchemyError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"cannot reach the store {shown}: {first}") from None
    missing = [table.name for table in (leads, touches) if table.name not in found]
    if missing:
        engine.dispose()
        raise ExportError(f"{shown} is not a leadscore store (no {' or '.join(missing)} table)")
    return engine


def export_tables(
    engine: Engine,
    out_dir: Path,
    *,
    contract: LeadContract | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    source: str = "",
) -> ExportCounts:
    """Write the store's leads and touches to out_dir/{leads,activities}/part-NNNNN.parquet and out_dir/export.json.

    The tables have the columns, order and dtypes the simulator writes (plus the contract's custom attributes as
    leads columns), so that validation, build-dataset and train read them unchanged. Both are read in one snapshot,
    in chunks of `chunk_rows`; the folder appears whole or not at all (an existing export there is replaced; any
    other folder with content is refused). A lead without an account is its own account. Anonymous touches and
    touches of unknown leads are left out and counted. EmptyStoreError when the store holds no leads. `source` (a
    redacted URL) is recorded in the manifest.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (got {chunk_rows})")
    out_dir = Path(out_dir)
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        with _snapshot(engine) as conn:
            counts = _write(conn, staging, contract or DEFAULT_CONTRACT, chunk_rows)
        manifest = {
            "source": source,
            "exported_at": dt.datetime.now(dt.UTC).isoformat(),
            "leads": counts.leads,
            "activities": counts.activities,
            "skipped_anonymous_touches": counts.anonymous_touches,
            "skipped_orphan_touches": counts.orphan_touches,
            "custom_attributes": [a.name for a in (contract or DEFAULT_CONTRACT).custom_attributes],
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = ExportCounts(
        out_dir, counts.leads, counts.activities, counts.anonymous_touches, counts.orphan_touches, counts.parts
    )
    log.info(
        "exported %d leads and %d activities to %s (left out: %d anonymous touches, %d touches of unknown leads)",
        result.leads,
        result.activities,
        out_dir,
        result.anonymous_touches,
        result.orphan_touches,
    )
    return result


def _check_target(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but an earlier export (it would be deleted)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir} is a file, not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in (*TABLES, MANIFEST))
    if foreign:
        raise OutputFolderError(
            f"{out_dir} holds more than an earlier export ({', '.join(foreign[:5])}); "
            "choose an empty or new folder, or one an earlier export wrote"
        )


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only connection that sees one state of the store for all its queries.

    Leads and touches are read by separate queries while the service keeps writing: without one snapshot, a lead
    created between them could have its touches exported without itself, which the contract refuses.
    """
    with engine.connect() as opened:
        conn = opened
        if conn.dialect.name == "postgresql":
            conn = opened.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif conn.dialect.name == "sqlite":
            # pysqlite opens no transaction for reads: each SELECT would see the database as it is then. An explicit
            # BEGIN holds one read snapshot (in WAL mode) until the connection rolls back.
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()


@dataclass(frozen=True, slots=True)
class _Written:
    leads: int
    activities: int
    anonymous_touches: int
    orphan_touches: int
    parts: int


def _write(conn: Connection, out: Path, contract: LeadContract, chunk_rows: int) -> _Written:
    known_lead = exists().where(leads.c.lead_id == touches.c.lead_id)
    anonymous = conn.execute(select(func.count()).select_from(touches).where(touches.c.lead_id.is_(None))).scalar()
    orphans = conn.execute(
        select(func.count()).select_from(touches).where(and_(touches.c.lead_id.is_not(None), not_(known_lead)))
    ).scalar()
    table = contract.leads_table
    lead_columns = [leads.c[name] for name in LEADS.names if name != "account_id"]
    lead_query = select(leads.c.account_id, leads.c.custom, *lead_columns).order_by(leads.c.lead_id)
    n_leads, lead_parts = _write_table(
        conn, lead_query, out / "leads", chunk_rows, lambda rows: _leads_frame(rows, table.columns)
    )
    if n_leads == 0:
        raise EmptyStoreError("the store holds no leads")
    touch_query = (
        select(touches.c.lead_id, touches.c.occurred_at, touches.c.activity_type, touches.c.properties)
        .join(leads, leads.c.lead_id == touches.c.lead_id)
        .order_by(touches.c.lead_id, touches.c.occurred_at, touches.c.id)
    )
    n_touches, touch_parts = _write_table(conn, touch_query, out / "activities", chunk_rows, _activities_frame)
    return _Written(n_leads, n_touches, int(anonymous or 0), int(orphans or 0), lead_parts + touch_parts)


def _write_table(
    conn: Connection,
    query: Select[Any],
    folder: Path,
    chunk_rows: int,
    to_frame: Callable[[Sequence[Any]], pd.DataFrame],
) -> tuple[int, int]:
    """Stream `query` into Parquet parts of `chunk_rows` rows; an empty table still gets one (empty) part."""
    folder.mkdir()
    rows_written = parts = 0
    for chunk in _chunks(conn, query, chunk_rows):
        frame = to_frame(chunk)
        frame.to_parquet(folder / f"part-{parts:05d}.parquet", index=False)
        rows_written += len(frame)
        parts += 1
    return rows_written, parts


def _chunks(conn: Connection, query: Select[Any], chunk_rows: int) -> Iterator[Sequence[Any]]:
    # yield_per streams: a server-side cursor on PostgreSQL, rows fetched as they are read on SQLite.
    result = conn.execution_options(yield_per=chunk_rows).execute(query)
    empty = True
    for partition in result.partitions():
        empty = False
        yield partition
    if empty:
        yield []


def _column(values: list[Any], spec: ColumnSpec) -> pd.Series:
    """One column in the dtype the contract's canonical tables (and the simulator) use."""
    if spec.dtype == "datetime":
        stamps = [None if v is None else (v if v.tzinfo else v.replace(tzinfo=dt.UTC)) for v in values]
        return pd.to_datetime(pd.Series(stamps, dtype=object), utc=True).astype("datetime64[ns, UTC]")
    if spec.dtype == "int":
        return pd.Series(pd.array(values, dtype="Int64"))
    if spec.dtype == "float":
        return pd.Series([float("nan") if v is None else v for v in values], dtype="float64")
    return pd.Series(values, dtype="str")


def _leads_frame(rows: Sequence[Any], columns: Sequence[ColumnSpec]) -> pd.DataFrame:
    data: dict[str, list[Any]] = {spec.name: [] for spec in columns}
    built_in = [name for name in LEADS.names if name != "account_id"]
    custom = [spec for spec in columns if spec.name not in LEADS.names]
    for row in rows:
        mapping = row._mapping
        for name in built_in:
            data[name].append(mapping[name])
        # The API's rule: a lead sent without an account is its own account.
        data["account_id"].append(row.account_id if row.account_id is not None else row.lead_id)
        attributes = json.loads(row.custom) if row.custom else {}
        for spec in custom:
            data[spec.name].append(attributes.get(spec.name))
    out: dict[str, pd.Series] = {}
    for spec in columns:
        try:
            out[spec.name] = _column(data[spec.name], spec)
        except (TypeError, ValueError) as err:
            raise ExportError(f"leads.{spec.name}: stored values are not of dtype {spec.dtype} ({err})") from None
    return pd.DataFrame(out)


def _properties(text: str | None) -> str | None:
    """The stored JSON object as the contract's string, written as json.dumps writes it; an empty object is none."""
    if text is None:
        return None
    value = json.loads(text)
    return json.dumps(value) if value else None


def _activities_frame(rows: Sequence[Any]) -> pd.DataFrame:
    values: dict[str, list[Any]] = {
        "lead_id": [row.lead_id for row in rows],
        "occurred_at": [row.occurred_at for row in rows],
        "activity_type": [row.activity_type for row in rows],
        "properties": [_properties(row.properties) for row in rows],
    }
    return pd.DataFrame({spec.name: _column(values[spec.name], spec) for spec in ACTIVITIES.columns})
