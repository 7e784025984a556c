"""Lead tables on a Dask cluster: sources checked before any work, read lazily, and split into whole accounts."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from features.spec import DEFAULT_CONTRACT, ColumnSpec, LeadContract, TableSpec
from features.validation import ContractError, Problem, validate_activities, validate_leads

if TYPE_CHECKING:
    import dask.dataframe as dd
    from dask.delayed import Delayed

Kind = Literal["parquet", "csv"]
TableName = Literal["leads", "activities"]
# Helper columns the partitioning adds to both tables; dropped before a partition is validated.
PART = "_leadscore_part"
LEAD_KEY = "_leadscore_lead"
# Accounts hash into this many buckets, which the shuffle spreads over the partitions: far more buckets than
# partitions, so that every partition gets its share (hashing n buckets into n partitions would leave a third empty).
BUCKETS = 1 << 20
# Input bytes per partition: about 2 M touches of compressed Parquet, which with their validated copies, features and
# scores stay around a gigabyte in a worker's memory (a worker of 4 GB holds one with room for Dask's own buffers).
BYTES_PER_PARTITION = 24 * 2**20
MAX_PARTITIONS = 100_000
# Lines read from a CSV file to learn its header.
_HEADER_ROWS = 5


class InputError(ValueError):
    """Input refused before any work is scheduled: the message names the table, the column or path, the problem."""


class MissingInputError(InputError):
    """An input that is not there: no such file, folder or table."""


@dataclass(frozen=True, slots=True)
class TableSource:
    """One input table: where it is (a path or fsspec URL: a file, a folder of parts, a glob) and its format."""

    table: TableName
    url: str
    kind: Kind

    def __str__(self) -> str:
        return f"{self.table} ({self.url})"


def _fs(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url)
    except (ValueError, ImportError) as err:
        raise InputError(f"{url}: not a path or URL this machine can read ({err})") from None
    return fs, path


def _files(source: TableSource) -> list[str]:
    """The files a source names, sorted; InputError when there are none."""
    fs, path = _fs(source.url)
    suffix = f".{source.kind}"
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if str(p).endswith(suffix))
        if not found:
            raise MissingInputError(f"{source.table}: {source.url} holds no {suffix} files")
        return [str(p) for p in found]
    if any(c in path for c in "*?["):
        found = sorted(fs.glob(path))
        if not found:
            raise MissingInputError(f"{source.table}: no file matches {source.url}")
        return [str(p) for p in found]
    if not fs.exists(path):
        raise MissingInputError(f"{source.table}: no such file or folder: {source.url}")
    return [path]


def source_of(url: str, table: TableName) -> TableSource:
    """The source of a table given by path or URL: CSV when it ends in .csv, else Parquet (a file, folder or glob)."""
    kind: Kind = "csv" if url.rstrip("/").lower().endswith(".csv") else "parquet"
    return TableSource(table, url, kind)


def locate(data: str, table: TableName) -> TableSource:
    """`table` in a data folder (path or URL): the folder `table/` of Parquet parts, `table.parquet` or `table.csv`."""
    fs, path = _fs(data)
    if not fs.isdir(path):
        raise MissingInputError(f"--data {data}: no such folder")
    base = data.rstrip("/")
    candidates: tuple[tuple[str, Kind], ...] = (
        (f"{base}/{table}", "parquet"), (f"{base}/{table}.parquet", "parquet"), (f"{base}/{table}.csv", "csv"),
    )  # fmt: skip
    for url, kind in candidates:
        if fs.exists(_fs(url)[1]):
            return TableSource(table, url, kind)
    raise MissingInputError(f"--data {data}: no {table} table (expected {table}/, {table}.parquet or {table}.csv)")


def _spec(table: TableName, contract: LeadContract) -> TableSpec:
    return contract.leads_table if table == "leads" else contract.activities


def _type_problem(column: ColumnSpec, arrow_type: Any) -> str | None:
    """Why a Parquet column's type cannot hold the declared column (None when it can), as `_conform` would say."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return None
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if column.dtype == "datetime":
        ok = pa.types.is_timestamp(t) or pa.types.is_date(t) or text
        return None if ok else f"wrong type {t}, expected timestamps"
    if column.dtype in ("string", "category"):
        ok = text or (column.role == "id" and pa.types.is_integer(t))
        return None if ok else f"wrong type {t}, expected text"
    ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    return None if ok else f"wrong type {t}, expected a number"


def columns_of(source: TableSource) -> dict[str, object]:
    """The source's column names with their Parquet types (None for CSV, whose values are read as text)."""
    files = _files(source)
    fs, _ = _fs(source.url)
    try:
        if source.kind == "csv":
            with fs.open(files[0], "rb") as fh:
                header = pd.read_csv(fh, nrows=_HEADER_ROWS, dtype=object)
            return dict.fromkeys(header.columns)
        import pyarrow.parquet as pq

        with fs.open(files[0], "rb") as fh:
            schema = pq.read_schema(fh)
    except (OSError, ValueError) as err:
        raise InputError(f"{source}: cannot be read as {source.kind.upper()}: {err}") from None
    return {name: schema.field(name).type for name in schema.names}


def check_source(source: TableSource, contract: LeadContract = DEFAULT_CONTRACT) -> None:
    """Refuse a table whose declared columns are missing or of the wrong type, naming each (reads headers only)."""
    spec = _spec(source.table, contract)
    found = columns_of(source)
    problems = [
        f"{source.table}.{c.name}: missing column" for c in spec.columns if c.name not in found and not c.nullable
    ]
    for column in spec.columns:
        arrow_type = found.get(column.name)
        if arrow_type is not None:
            problem = _type_problem(column, arrow_type)
            if problem is not None:
                problems.append(f"{source.table}.{column.name}: {problem}")
    if problems:
        raise InputError(f"{source.url}: " + "; ".join(problems))


def input_bytes(sources: Sequence[TableSource]) -> int:
    """Bytes of the sources' files (how many partitions a job wants)."""
    total = 0
    for source in sources:
        fs, _ = _fs(source.url)
        total += sum(int(fs.size(f) or 0) for f in _files(source))
    return total


def partitions_for(sources: Sequence[TableSource], threads: int) -> int:
    """Partitions for a job: two per thread at least (a straggler does not idle the rest), more for big inputs."""
    return min(MAX_PARTITIONS, max(2 * threads, math.ceil(input_bytes(sources) / BYTES_PER_PARTITION)))


# ---- reading ----------------------------------------------------------------------------------------------------
def _declared(source: TableSource, contract: LeadContract) -> list[str]:
    present = columns_of(source)
    return [c.name for c in _spec(source.table, contract).columns if c.name in present]


def read_pandas(source: TableSource, contract: LeadContract = DEFAULT_CONTRACT) -> pd.DataFrame:
    """The whole table in this process (its declared columns; CSV values as text, typed by `canonical_tables`)."""
    columns = _declared(source, contract)
    fs, _ = _fs(source.url)
    frames = []
    for path in _files(source):
        with fs.open(path, "rb") as fh:
            if source.kind == "csv":
                frames.append(pd.read_csv(fh, dtype=object, usecols=columns))
            else:
                frames.append(pd.read_parquet(fh, columns=columns))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_dask(source: TableSource, contract: LeadContract = DEFAULT_CONTRACT) -> dd.DataFrame:
    """The table as a lazy Dask frame of its declared columns (CSV values as text)."""
    import dask.dataframe as dd

    columns = _declared(source, contract)
    if source.kind == "csv":
        return dd.read_csv(source.url, dtype=object, usecols=columns, blocksize="64MB")
    return dd.read_parquet(source.url, columns=columns)


# ---- partitions of whole accounts --------------------------------------------------------------------------------
def account_bucket(accounts: pd.Series) -> np.ndarray:
    """A stable bucket (0 .. BUCKETS-1) per account id: the same in every process and on every machine."""
    text = accounts.astype(object).map(str).to_numpy(dtype=object)
    return (pd.util.hash_array(text) % BUCKETS).astype(np.int64)


def lead_keys(lead_ids: pd.Series) -> pd.Series:
    """Lead ids as text, the key activities are joined to their leads by (numeric CRM ids included)."""
    return lead_ids.astype(object).map(str).astype(object)


def _with_leads_keys(leads: pd.DataFrame) -> pd.DataFrame:
    out = leads.copy()
    out[PART] = account_bucket(leads["account_id"])
    out[LEAD_KEY] = lead_keys(leads["lead_id"])
    return out


def _with_activity_keys(activities: pd.DataFrame) -> pd.DataFrame:
    out = activities.copy()
    out[LEAD_KEY] = lead_keys(activities["lead_id"])
    return out


def _bucket_of_lead(activities: pd.DataFrame) -> pd.DataFrame:
    """Activities with their lead's bucket; an activity of no known lead goes to bucket 0, where validation names it."""
    out = activities.drop(columns=[LEAD_KEY])
    out[PART] = activities[PART].fillna(0).astype(np.int64).to_numpy()
    return out


def dask_partitions(leads: dd.DataFrame, activities: dd.DataFrame, partitions: int) -> list[tuple[Delayed, Delayed]]:
    """(leads, activities) of each partition: whole accounts, each account's leads and touches in the same one.

    Activities learn their lead's account bucket by a broadcast join against (lead, bucket) pairs, then both tables
    are shuffled on the bucket into the same number of partitions, which sends a bucket to the same partition
    in both (the shuffle hashes the same int64 values). Dask's shuffle spills to disk beyond a worker's memory.
    """
    import dask.dataframe as dd

    leads = leads.map_partitions(_with_leads_keys)
    pairs = leads[[LEAD_KEY, PART]]
    keyed = activities.map_partitions(_with_activity_keys)
    joined = dd.merge(keyed, pairs, on=LEAD_KEY, how="left", broadcast=True)
    placed = joined.map_partitions(_bucket_of_lead)
    leads_parts = leads.drop(columns=[LEAD_KEY]).shuffle(PART, npartitions=partitions).to_delayed()
    activity_parts = placed.shuffle(PART, npartitions=partitions).to_delayed()
    if len(leads_parts) != len(activity_parts):
        raise RuntimeError(f"{len(leads_parts)} lead partitions but {len(activity_parts)} activity partitions")
    return list(zip(leads_parts, activity_parts, strict=True))


def pandas_partitions(
    leads: pd.DataFrame, activities: pd.DataFrame, partitions: int
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Partitions of whole accounts in this process (a bucket goes to partition bucket % partitions)."""
    keyed = _with_leads_keys(leads)
    part_of_lead = pd.Series(keyed[PART].to_numpy(), index=keyed[LEAD_KEY].to_numpy())
    part_of_lead = part_of_lead[~part_of_lead.index.duplicated()]
    activity_part = part_of_lead.reindex(lead_keys(activities["lead_id"]).to_numpy()).fillna(0).to_numpy(np.int64)
    lead_slot = keyed[PART].to_numpy() % partitions
    activity_slot = activity_part % partitions
    lead_order, activity_order = np.argsort(lead_slot, kind="stable"), np.argsort(activity_slot, kind="stable")
    lead_bounds = np.searchsorted(lead_slot[lead_order], np.arange(partitions + 1))
    activity_bounds = np.searchsorted(activity_slot[activity_order], np.arange(partitions + 1))
    plain = keyed.drop(columns=[LEAD_KEY])
    for i in range(partitions):
        yield (
            plain.iloc[lead_order[lead_bounds[i] : lead_bounds[i + 1]]],
            activities.iloc[activity_order[activity_bounds[i] : activity_bounds[i + 1]]],
        )


# ---- a partition, validated ------------------------------------------------------------------------------------
def _typed_text(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Numbers read from CSV text as numbers; text that is not a number is refused, naming the column and rows."""
    out = frame.copy()
    problems: list[Problem] = []
    for column in spec.columns:
        if column.dtype not in ("int", "float") or column.name not in frame.columns:
            continue
        text = frame[column.name]
        if pd.api.types.is_numeric_dtype(text.dtype):
            continue
        stripped = text.astype(object).where(text.isna(), text.astype(str).str.strip())
        values = pd.to_numeric(stripped.replace("", np.nan), errors="coerce")
        bad = (values.isna() & stripped.notna() & (stripped != "")).to_numpy()
        if bad.any():
            ids = frame["lead_id"].astype(str).to_numpy()[bad][:5] if "lead_id" in frame else ()
            problems.append(Problem(spec.name, column.name, "values are not numbers", int(bad.sum()),
                                    tuple(f"lead_id={i}" for i in ids)))  # fmt: skip
        out[column.name] = values.astype("float64")
    if problems:
        raise ContractError(problems)
    return out


def canonical_tables(
    leads: pd.DataFrame, activities: pd.DataFrame, contract: LeadContract = DEFAULT_CONTRACT
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A partition's leads and activities, validated against the contract (ContractError names every problem)."""
    leads = _typed_text(leads.drop(columns=[PART, LEAD_KEY], errors="ignore"), contract.leads_table)
    canonical = validate_leads(leads, contract)
    plain = activities.drop(columns=[PART, LEAD_KEY], errors="ignore")
    return canonical, validate_activities(plain, canonical, contract)
