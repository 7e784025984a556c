"""Validate raw leads and activities against the contract and return them in canonical form."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from features.spec import (
    DEFAULT_CONTRACT,
    LIFECYCLE_CHAIN,
    LIFECYCLE_PREREQUISITES,
    ColumnSpec,
    LeadContract,
    TableSpec,
)

log = logging.getLogger(__name__)

# How many offending row ids an error quotes: enough to find the rows, short enough to read.
MAX_EXAMPLES = 5
TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"
_SPACES = re.compile(r"[\s_\-]+")


@dataclass(frozen=True, slots=True)
class Problem:
    """One kind of violation in one column: what is wrong, how often, and where."""

    table: str
    column: str
    problem: str
    count: int
    examples: tuple[str, ...]

    def __str__(self) -> str:
        where = ", ".join(self.examples)
        more = "" if self.count <= len(self.examples) else ", ..."
        return f"{self.table}.{self.column}: {self.problem} ({self.count} rows, e.g. {where}{more})"


class ContractError(ValueError):
    """Raised when a table breaks the lead data contract; lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} contract violation(s):\n  {lines}")

    def __reduce__(self) -> tuple[type[ContractError], tuple[list[Problem]]]:
        """Pickled with its problems (a Dask worker's error reaches the client whole)."""
        return (type(self), (self.problems,))


def normalize_activity_type(value: str) -> str:
    """Map 'Page View', 'page-view' or ' PAGE_VIEW' to the canonical 'page_view'."""
    return _SPACES.sub("_", value.strip().casefold())


def normalize_category(value: str) -> str:
    """Case- and whitespace-insensitive form of a category value ('  Financial  Services' -> 'financial services')."""
    return " ".join(value.split()).casefold()


def _row_labels(df: pd.DataFrame, table: TableSpec, mask: np.ndarray | pd.Series) -> tuple[int, tuple[str, ...]]:
    """Count the rows flagged by `mask` and name the first few by id (leads) or position and lead (activities)."""
    positions = np.flatnonzero(np.asarray(mask, dtype=bool))
    examples: list[str] = []
    for pos in positions[:MAX_EXAMPLES]:
        row = df.iloc[int(pos)]
        if table.key is not None and table.key in df.columns:
            examples.append(f"{table.key}={row[table.key]!r}")
        elif "lead_id" in df.columns:
            examples.append(f"row {int(pos)} (lead_id={row['lead_id']!r})")
        else:
            examples.append(f"row {int(pos)}")
    return len(positions), tuple(examples)


def _problem(df: pd.DataFrame, table: TableSpec, column: str, text: str, mask: np.ndarray | pd.Series) -> Problem:
    count, examples = _row_labels(df, table, mask)
    return Problem(table.name, column, text, count, examples)


def _is_text(series: pd.Series) -> bool:
    if pd.api.types.is_string_dtype(series.dtype) or isinstance(series.dtype, pd.CategoricalDtype):
        return True
    if series.dtype == object:
        kinds = {type(v) for v in pd.unique(series.dropna())}
        return kinds <= {str}
    return False


def _canonical_column(df: pd.DataFrame, table: TableSpec, col: ColumnSpec, problems: list[Problem]) -> pd.Series | None:
    """Return the column in its canonical dtype, or record why it cannot be and return None."""
    s = df[col.name]
    if col.dtype == "datetime":
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            # Naive timestamps are taken as UTC: CRMs export UTC unless they say otherwise.
            out = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
            return pd.Series(out).astype(TIMESTAMP_DTYPE)
        if _is_text(s):
            parsed = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
            bad = (parsed.isna() & s.notna()).to_numpy()
            if bad.any():
                problems.append(_problem(df, table, col.name, "values are not ISO 8601 timestamps", bad))
                return None
            return pd.Series(parsed).astype(TIMESTAMP_DTYPE)
        problems.append(_problem(df, table, col.name, f"wrong type {s.dtype}, expected timestamps", s.notna()))
        return None
    if col.dtype in ("string", "category"):
        if _is_text(s):
            return s.astype("str")
        if pd.api.types.is_integer_dtype(s.dtype) and col.role == "id":
            # Numeric CRM ids are common and converting them to text loses nothing.
            return s.astype("Int64").astype("str")
        problems.append(_problem(df, table, col.name, f"wrong type {s.dtype}, expected text", s.notna()))
        return None
    if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        problems.append(_problem(df, table, col.name, f"wrong type {s.dtype}, expected a number", s.notna()))
        return None
    values = s.astype("float64")
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        problems.append(_problem(df, table, col.name, "values are infinite", infinite))
        return None
    if col.dtype == "int":
        fractional = (values.notna() & (values != np.floor(values))).to_numpy()
        if fractional.any():
            problems.append(_problem(df, table, col.name, "values are not whole numbers", fractional))
            return None
        return values.astype("Int64")
    return values


def _value_schema(table: TableSpec) -> pa.DataFrameSchema:
    """The pandera schema for the value rules declared in the spec (types are checked before it runs)."""
    columns: dict[str, pa.Column] = {}
    for col in table.columns:
        checks: list[pa.Check] = []
        if col.min_value is not None:
            checks.append(pa.Check.ge(col.min_value))
        if col.allowed is not None and not col.open_vocabulary:
            checks.append(pa.Check.isin(list(col.allowed)))
        columns[col.name] = pa.Column(nullable=col.nullable, unique=col.unique, checks=checks, required=True)
    return pa.DataFrameSchema(columns, name=table.name)


def _describe_check(check: str, col: ColumnSpec) -> str:
    if check == "not_nullable":
        return "missing values in a required column"
    if check == "field_uniqueness":
        return "duplicated values (must be unique)"
    if check.startswith("greater_than_or_equal_to"):
        return f"values below the minimum {col.min_value:g}"
    if check.startswith("isin"):
        accepted = ", ".join(col.allowed or ())
        return f"unknown values (accepted: {accepted})"
    return f"failed check {check}"


def _check_values(df: pd.DataFrame, table: TableSpec, problems: list[Problem]) -> None:
    try:
        _value_schema(table).validate(df, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        for (column, check), group in cases.groupby(["column", "check"], sort=False):
            col = table.column(str(column))
            mask = np.zeros(len(df), dtype=bool)
            index = group["index"].dropna().astype("int64").to_numpy()
            mask[df.index.get_indexer(index)] = True
            problem = _problem(df, table, str(column), _describe_check(str(check), col), mask)
            if str(check).startswith("isin"):
                bad_values = sorted({str(v) for v in group["failure_case"]})[:MAX_EXAMPLES]
                problem = Problem(
                    problem.table,
                    problem.column,
                    f"{problem.problem}; got {', '.join(repr(v) for v in bad_values)}",
                    problem.count,
                    problem.examples,
                )
            problems.append(problem)


def _conform(df: pd.DataFrame, table: TableSpec, problems: list[Problem]) -> pd.DataFrame | None:
    """Check presence and types of the declared columns; return a canonical copy or None if types are wrong."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{table.name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c.name for c in table.columns if c.name not in df.columns and not c.nullable]
    for name in missing:
        problems.append(Problem(table.name, name, "missing column", len(df), ()))
    # Row positions, not the caller's index, identify rows in errors (an index may repeat after a concat).
    df = df.reset_index(drop=True)
    extra = [c for c in df.columns if c not in table.names]
    if extra:
        log.info("%s: ignoring undeclared columns %s (declare custom attributes to use them)", table.name, extra)
    out: dict[str, pd.Series] = {}
    for col in table.columns:
        if col.name not in df.columns:
            if col.nullable:
                out[col.name] = _empty_column(col, len(df), df.index)
            continue
        series = _canonical_column(df, table, col, problems)
        if series is not None:
            out[col.name] = series
    if problems:
        return None
    return pd.DataFrame(out, index=df.index)


def _empty_column(col: ColumnSpec, n: int, index: pd.Index) -> pd.Series:
    if col.dtype == "datetime":
        return pd.Series(pd.NaT, index=index, dtype=TIMESTAMP_DTYPE)
    if col.dtype == "int":
        return pd.Series(pd.NA, index=index, dtype="Int64")
    if col.dtype == "float":
        return pd.Series(np.nan, index=index, dtype="float64")
    return pd.Series([None] * n, index=index, dtype="str")


def _check_lifecycle(df: pd.DataFrame, table: TableSpec, problems: list[Problem]) -> None:
    """Every non-null lifecycle timestamp must not precede any earlier non-null one in the chain."""
    stamps = {name: df[name] for name in LIFECYCLE_CHAIN}
    for i, later in enumerate(LIFECYCLE_CHAIN[1:], start=1):
        latest_before = pd.concat([stamps[n] for n in LIFECYCLE_CHAIN[:i]], axis=1).max(axis=1)
        bad = (stamps[later] < latest_before).to_numpy(dtype=bool, na_value=False)
        if bad.any():
            earlier = ", ".join(LIFECYCLE_CHAIN[:i])
            problems.append(_problem(df, table, later, f"timestamps out of order: earlier than one of {earlier}", bad))
    for column, prerequisite in LIFECYCLE_PREREQUISITES:
        bad = (df[column].notna() & df[prerequisite].isna()).to_numpy()
        if bad.any():
            problems.append(_problem(df, table, column, f"set although {prerequisite} is empty", bad))


def validate_leads(leads: pd.DataFrame, contract: LeadContract = DEFAULT_CONTRACT) -> pd.DataFrame:
    """Return a canonical copy of `leads`, or raise ContractError naming every problem (no partial output)."""
    table = contract.leads_table
    problems: list[Problem] = []
    out = _conform(leads, table, problems)
    if out is not None:
        _check_values(out, table, problems)
        _check_lifecycle(out, table, problems)
    if problems or out is None:
        raise ContractError(problems)
    return out.reset_index(drop=True)


def validate_activities(
    activities: pd.DataFrame, leads: pd.DataFrame | None = None, contract: LeadContract = DEFAULT_CONTRACT
) -> pd.DataFrame:
    """Return canonical activities sorted by lead and time, or raise ContractError (no partial output).

    When the (validated) leads are given, every activity must belong to one of them.
    """
    table = contract.activities
    problems: list[Problem] = []
    out = _conform(activities, table, problems)
    if out is not None:
        # Normalised once per distinct value: exports repeat a dozen spellings millions of times.
        codes, uniques = pd.factorize(out["activity_type"], use_na_sentinel=True)
        normalized = np.array([normalize_activity_type(str(u)) for u in uniques] + [None], dtype=object)
        out["activity_type"] = pd.Series(normalized[codes], index=out.index, dtype="str")
        _check_values(out, table, problems)
        if leads is not None:
            unknown = (~out["lead_id"].isin(leads["lead_id"])).to_numpy()
            if unknown.any():
                problems.append(_problem(out, table, "lead_id", "activities of leads not in the leads table", unknown))
    if problems or out is None:
        raise ContractError(problems)
    allowed = table.column("activity_type").allowed or ()
    out["activity_type"] = pd.Categorical(out["activity_type"], categories=list(allowed))
    return out.sort_values(["lead_id", "occurred_at"], kind="stable").reset_index(drop=True)
