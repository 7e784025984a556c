"""Reading a flat CRM export and checking it against its mapping: typed columns, a 0/1 outcome, an order in time."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.export import (
    CrmMapping,
    ExportError,
    OutcomeMapping,
    apply_missing,
    as_text,
    examples,
    mapping_from_yaml,
    outcome_token,
    typed_column,
)

log = logging.getLogger(__name__)

# Below this many leads of either class, the holdout would hold a handful of them and its AUC would mean little.
MIN_CLASS_ROWS = 20


def load_mapping(path: Path) -> CrmMapping:
    """The mapping in a YAML file; FileNotFoundError when it does not exist, MappingError when it is not valid."""
    return mapping_from_yaml(path.read_text(encoding="utf-8"), source=str(path))


@dataclass(frozen=True, slots=True)
class CrmExport:
    """A loaded export: the typed fit and engagement columns, the 0/1 outcome, and what loading set aside.

    `frame` holds categories as text (NaN when missing), numbers as float and booleans as 0.0/1.0 (NaN when missing).
    """

    frame: pd.DataFrame
    y: NDArray[np.int64]
    ids: pd.Series | None
    dates: pd.Series | None
    undeclared: tuple[str, ...]
    dropped_outcome_rows: int
    source: str


def _outcome(text: pd.Series, outcome: OutcomeMapping) -> tuple[NDArray[np.int64], str]:
    tokens = text.map(outcome_token)
    positive = tokens.isin(outcome.positive_tokens)
    if outcome.negative is not None:
        bad = ~positive & ~tokens.isin(outcome.negative_tokens)
        if bad.any():
            problem = (
                f"outcome column {outcome.column!r}: {int(bad.sum()):,} row(s) are neither positive "
                f"{outcome.positive} nor negative {outcome.negative}, e.g. {examples(text[bad])}; add the values to "
                "outcome.positive or outcome.negative, or to missing_values to drop those rows"
            )
            return np.zeros(0, dtype=np.int64), problem
    y = np.asarray(positive, dtype=np.int64)
    if outcome.negative is None:
        log.info("outcome column %r: taken as negative: %s", outcome.column, examples(text[~positive]))
    for label, count in (("positive", int(y.sum())), ("negative", int(len(y) - y.sum()))):
        if count < MIN_CLASS_ROWS:
            problem = (
                f"outcome column {outcome.column!r}: {count} {label} row(s); need at least {MIN_CLASS_ROWS} of each "
                f"class (positive values: {outcome.positive}; values seen: {examples(text)})"
            )
            return y, problem
    return y, ""


def _check_columns_present(raw: pd.DataFrame, mapping: CrmMapping, source: str) -> None:
    absent = [name for name in mapping.declared_columns() if name not in raw.columns]
    if not absent:
        return
    lines = []
    for name in absent:
        close = difflib.get_close_matches(name, [str(c) for c in raw.columns], n=1, cutoff=0.8)
        lines.append(f"{name!r} is declared in the mapping but not in the export" + (
            f" (did you mean {close[0]!r}?)" if close else ""))  # fmt: skip
    header = f"{source}: {len(absent)} declared column(s) missing; the export has {len(raw.columns)} columns"
    raise ExportError(header + ":\n  " + "\n  ".join(lines))


def prepare_export(raw: pd.DataFrame, mapping: CrmMapping, *, source: str = "export") -> CrmExport:
    """Check a raw export against its mapping and type its columns; an ExportError lists every problem found.

    Missing-value tokens become NaN in every column; rows with a missing outcome are dropped (and counted). Values
    are never coerced silently: text in a number column, or an unknown outcome value, is an error naming the column,
    how many rows, and example values.
    """
    _check_columns_present(raw, mapping, source)
    tokens = mapping.missing_tokens
    declared = set(mapping.declared_columns())
    undeclared = tuple(str(c) for c in raw.columns if c not in declared)
    if undeclared:
        log.warning("%d column(s) are not in the mapping and are ignored: %s", len(undeclared), ", ".join(undeclared))

    outcome_text = apply_missing(as_text(raw[mapping.outcome.column]), tokens)
    keep_rows = outcome_text.notna()
    dropped = int((~keep_rows).sum())
    if dropped:
        log.warning("dropped %d row(s) with no value in outcome column %r", dropped, mapping.outcome.column)
    rows = raw.loc[keep_rows]
    problems: list[str] = []
    y, problem = _outcome(outcome_text[keep_rows], mapping.outcome)
    problems += [problem] if problem else []

    typed: dict[str, pd.Series] = {}
    for name, col in mapping.features.items():
        assert col.type is not None  # guaranteed by ColumnMapping for fit and engagement columns
        values, problem = typed_column(name, apply_missing(as_text(rows[name]), tokens), col.type, tokens)
        typed[name] = values
        problems += [problem] if problem else []

    ids = None
    if mapping.id_column is not None:
        ids = apply_missing(as_text(rows[mapping.id_column]), tokens)
        repeated = ids[ids.notna() & ids.duplicated(keep=False)]
        if len(repeated):
            problems.append(
                f"id column {mapping.id_column!r}: {len(repeated):,} row(s) share an id with another row, e.g. "
                f"{examples(repeated)}; a flat export has one row per lead"
            )
    dates = None
    if mapping.date_column is not None:
        text = apply_missing(as_text(rows[mapping.date_column]), tokens)
        dates = pd.to_datetime(text, format=mapping.date_format, errors="coerce", utc=True)
        bad = dates.isna()
        if bad.any():
            wanted = f"dates in format {mapping.date_format!r}" if mapping.date_format else "ISO dates like 2024-03-31"
            problems.append(
                f"date column {mapping.date_column!r}: {int(bad.sum()):,} row(s) have no readable date, e.g. "
                f"{examples(text[bad].fillna(''))}; accepted: {wanted}; an out-of-time split needs a date on every row"
            )
    if problems:
        raise ExportError(f"{source}: the export does not match the mapping:\n  " + "\n  ".join(problems))
    frame = pd.DataFrame(typed).reset_index(drop=True)
    log.info("loaded %d leads (%d positive) and %d mapped columns from %s", len(frame), int(y.sum()), len(typed),
             source)  # fmt: skip
    return CrmExport(
        frame=frame,
        y=y,
        ids=None if ids is None else ids.reset_index(drop=True),
        dates=None if dates is None else dates.reset_index(drop=True),
        undeclared=undeclared,
        dropped_outcome_rows=dropped,
        source=source,
    )


def load_export(path: Path, mapping: CrmMapping) -> CrmExport:
    """The CSV export at `path`, checked against `mapping` (see `prepare_export`)."""
    if not path.is_file():
        raise FileNotFoundError(f"no CRM export at {path}")
    # Every cell is read as text and nothing is turned into NaN by pandas: which cells are missing is the mapping's
    # call ("NA" may be Namibia), and a number column is checked, not coerced.
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    return prepare_export(raw, mapping, source=str(path))
