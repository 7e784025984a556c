"""Bring your own CRM export: a YAML column mapping, strict loading, a leakage audit, a model on what survives it."""

from __future__ import annotations

import difflib
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import pandas as pd
import yaml
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from features.fit import DEFAULT_MIN_CATEGORY_COUNT
from training.config import CRM_EXPERIMENT as EXPERIMENT
from training.config import CRM_HOLDOUT_FRACTION as HOLDOUT_FRACTION
from training.config import BoosterConfig
from training.metrics import binary_metrics, metric_name, to_mlflow_metrics
from training.models import fit_calibrator, train_booster

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

log = logging.getLogger(__name__)

Role = Literal["fit", "engagement", "ignore"]
ColumnType = Literal["category", "number", "boolean"]
SplitKind = Literal["time", "random"]

VALID_FRACTION = 0.2
# Below this many leads of either class, the holdout would hold a handful of them and its AUC would mean little.
MIN_CLASS_ROWS = 20
# How many offending values an error or a log line quotes: enough to recognise the problem, short enough to read.
MAX_EXAMPLES = 5
# Cells that are always missing, whatever the mapping says: an empty or blank cell cannot be a value.
ALWAYS_MISSING = frozenset({""})
BOOLEAN_VALUES: Mapping[str, float] = {"yes": 1.0, "true": 1.0, "1": 1.0, "no": 0.0, "false": 0.0, "0": 0.0}

# ---- leakage audit thresholds --------------------------------------------------------------------------------
# A single honest column rarely ranks leads this well on its own: even strong fit or engagement signals sit around
# 0.65-0.80. At 0.90 a column almost sorts won from lost, which is what a field filled in after the outcome does.
LEAK_AUC = 0.90
# A field that is filled in for most of one class and rarely for the other is typically entered by sales during or
# after qualification ("lead quality", "deal size"). Both a ratio and a difference are required: 2 % vs 0.4 % is a
# large ratio of two rates that are both rare, 90 % vs 40 % a large difference of two rates that are both common.
PRESENT_RATIO = 4.0
PRESENT_DIFFERENCE = 0.5
# A value (or missing-ness) is "pure" when at least this share of its rows is of one class ...
PURE_RATE = 0.97
# ... and it covers at least this share of all rows: a smaller value is too rare to say much either way.
PURE_MIN_ROW_SHARE = 0.05
# ... and the other class is at most this fraction as common in it as overall. With 38 % positives this is looser
# than PURE_RATE and changes nothing; with 2 % positives (typical of B2B) it stops every value with < 3 % positives
# from counting as "pure": there, 1 - PURE_RATE alone would be barely below the base rate.
PURE_MAX_RATE_RATIO = 0.1
# A pure value holding this share of one class looks like a pipeline stage ("Closed won", "Lost to competitor")
# rather than a property of the lead.
STAGE_MIN_CLASS_SHARE = 0.20
# Out-of-fold target encoding: a category's rate on the other folds scores it, so a column with a value per lead
# (an id, an email) learns nothing and cannot fake separation. Rates are shrunk toward the fold's base rate with the
# weight of this many rows, so a value seen twice does not get a rate of 0 or 1.
TARGET_ENCODING_FOLDS = 5
TARGET_ENCODING_PRIOR_ROWS = 20.0
MISSING_LEVEL = "(missing)"
PRESENT_LEVEL = "(present)"
AUDIT_COLUMNS: tuple[str, ...] = (
    "column",
    "role",
    "type",
    "suspicion",
    "flagged",
    "kept",
    "reason",
    "auc",
    "missing_rate_positive",
    "missing_rate_negative",
    "purest_value",
    "purest_value_row_share",
    "purest_value_positive_rate",
    "purest_value_class",
    "purest_value_class_share",
)


class CrmError(ValueError):
    """A CRM export or its mapping cannot be used; the message says where, what is wrong and what is accepted."""


class MappingError(CrmError):
    """The mapping file is not valid."""


class ExportError(CrmError):
    """The export does not match its mapping."""


# ---- the mapping ---------------------------------------------------------------------------------------------


def _token(value: str) -> str:
    """Case- and whitespace-insensitive form of a cell, for missing-value tokens and boolean spellings."""
    return " ".join(value.split()).casefold()


def _outcome_token(value: str) -> str:
    """Like `_token`, and a number in any spelling ("1", "1.0", "1e0") reads as the same value."""
    text = _token(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return text if not math.isfinite(number) else repr(number).removesuffix(".0")


def _scalar_list(value: object, field: str) -> object:
    """YAML scalars in a list of values as the strings a CSV cell would hold (1 -> "1", true -> "true")."""
    if not isinstance(value, list):
        return value
    out: list[object] = []
    for item in value:
        if item is None:
            raise ValueError(f"{field} holds an empty (null) entry; write the text in quotes, e.g. 'NULL' or ''")
        text = str(item).lower() if isinstance(item, bool) else str(item) if isinstance(item, int | float) else item
        out.append(text)
    return out


class ColumnMapping(BaseModel):
    """How one export column is used: its role and type, and what it means (for the reader of the audit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    type: ColumnType | None = None
    description: str = ""

    @model_validator(mode="after")
    def _typed_unless_ignored(self) -> Self:
        if self.type is None and self.role != "ignore":
            raise ValueError(f"type is required for a {self.role} column; accepted: category, number, boolean")
        return self


class OutcomeMapping(BaseModel):
    """The outcome column and which of its values count as positive (and, optionally, as negative)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(min_length=1)
    positive: list[str] = Field(min_length=1)
    # None: every present value that is not positive is negative.
    negative: list[str] | None = None

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _values_as_text(cls, value: object) -> object:
        return _scalar_list(value, "outcome values")

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        both = self.positive_tokens & self.negative_tokens
        if both:
            raise ValueError(f"values {sorted(both)} are listed as both positive and negative")
        return self

    @property
    def positive_tokens(self) -> frozenset[str]:
        """Normalised positive values."""
        return frozenset(_outcome_token(v) for v in self.positive)

    @property
    def negative_tokens(self) -> frozenset[str]:
        """Normalised negative values (empty when every non-positive value is negative)."""
        return frozenset(_outcome_token(v) for v in self.negative or ())


class CrmMapping(BaseModel):
    """What a flat CRM export holds: its outcome, its id and date columns, the role and type of every other column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: OutcomeMapping
    missing_values: list[str] = Field(default_factory=list)
    id_column: str | None = None
    date_column: str | None = None
    date_format: str | None = None
    columns: dict[str, ColumnMapping] = Field(min_length=1)
    keep: list[str] = Field(default_factory=list)

    @field_validator("missing_values", mode="before")
    @classmethod
    def _tokens_as_text(cls, value: object) -> object:
        return _scalar_list(value, "missing_values")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.date_format is not None and self.date_column is None:
            raise ValueError("date_format: given without a date_column; add date_column or remove date_format")
        special = {"outcome.column": self.outcome.column, "id_column": self.id_column, "date_column": self.date_column}
        seen: dict[str, str] = {}
        for key, name in special.items():
            if name is None:
                continue
            if name in self.columns:
                raise ValueError(f"columns.{name}: is already the {key}; remove it from columns")
            if name in seen:
                raise ValueError(f"{key}: {name!r} is already the {seen[name]}; each needs its own column")
            seen[name] = key
        if not self.features:
            raise ValueError("columns: every column has role ignore; declare at least one fit or engagement column")
        for name in self.keep:
            declared = self.columns.get(name)
            if declared is None:
                close = difflib.get_close_matches(name, list(self.columns), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"keep: {name!r} is not declared under columns{hint}; keep names declared columns")
            if declared.role == "ignore":
                raise ValueError(f"keep: {name!r} has role ignore; give it role fit or engagement to keep it")
        return self

    @property
    def features(self) -> dict[str, ColumnMapping]:
        """The fit and engagement columns, in mapping order: the candidates for the model and the audit."""
        return {name: col for name, col in self.columns.items() if col.role != "ignore"}

    @property
    def missing_tokens(self) -> frozenset[str]:
        """Normalised missing-value tokens, blank cells included."""
        return ALWAYS_MISSING | {_token(v) for v in self.missing_values}

    def declared_columns(self) -> list[str]:
        """Every export column the mapping names: outcome, id, date and the declared columns."""
        special = [self.outcome.column, self.id_column, self.date_column]
        return [*(c for c in special if c is not None), *self.columns]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads only true/false as booleans (YAML 1.2): `positive: [Yes]` must stay the text 'Yes'."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

# Keys of each mapping section, quoted when a user misspells one.
_SECTIONS: Mapping[str, type[BaseModel]] = {"outcome": OutcomeMapping, "columns": ColumnMapping}


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(str(p) for p in error["loc"])
    where = ".".join(loc) or "mapping"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model = _SECTIONS.get(loc[0], CrmMapping) if len(loc) > 1 else CrmMapping
        message += f"; accepted keys: {', '.join(model.model_fields)}"
    elif error["type"] != "missing" and isinstance(error.get("input"), str | int | float | bool):
        message += f" (got {error['input']!r})"
    # Checks across keys name their key at the start of the message; report it there instead of "mapping".
    if where == "mapping" and ": " in message:
        where, message = message.split(": ", 1)
    return f"{where}: {message}"


def parse_mapping(document: object, *, source: str = "mapping") -> CrmMapping:
    """A validated mapping from parsed YAML; a MappingError names every bad key, what is wrong and what is accepted."""
    if not isinstance(document, dict):
        raise MappingError(f"{source}: expected a YAML mapping with outcome and columns, got {type(document).__name__}")
    try:
        return CrmMapping.model_validate(document)
    except ValidationError as err:
        problems = "\n  ".join(_describe(e) for e in err.errors())
        raise MappingError(f"{source}: {err.error_count()} problem(s) in the mapping:\n  {problems}") from err


def load_mapping(path: Path) -> CrmMapping:
    """The mapping in a YAML file; FileNotFoundError when it does not exist, MappingError when it is not valid."""
    text = path.read_text(encoding="utf-8")
    try:
        document = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: builds no Python objects
    except yaml.YAMLError as err:
        raise MappingError(f"{path}: not valid YAML: {err}") from err
    return parse_mapping(document, source=str(path))


# ---- loading an export ---------------------------------------------------------------------------------------


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


def _examples(values: pd.Series) -> str:
    uniques = pd.unique(values.astype(str))
    shown = ", ".join(repr(str(v)) for v in uniques[:MAX_EXAMPLES])
    return shown + (", ..." if len(uniques) > MAX_EXAMPLES else "")


def _as_text(column: pd.Series) -> pd.Series:
    """Cells as stripped text ("" for an empty cell); a frame built in memory may hold numbers, None or NaN."""
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    return text


def _apply_missing(text: pd.Series, tokens: frozenset[str]) -> pd.Series:
    # Normalised per distinct value, not per cell: an export of a million leads has a few hundred distinct values.
    uniques = pd.Series(pd.unique(text))
    missing_values = set(uniques[uniques.map(_token).isin(tokens)])
    return text.where(~text.isin(missing_values))


def _canonical_categories(text: pd.Series) -> pd.Series:
    """Category values with whitespace collapsed and spellings that differ in case merged into the most common one.

    CRMs collect 'Google' and 'google' from different forms; they are one value to the model and the audit.
    """
    collapsed = text.str.split().str.join(" ")
    counts = collapsed.value_counts().rename_axis("value").reset_index(name="n")
    counts = counts.sort_values(["n", "value"], ascending=[False, True], kind="stable")
    spelling: dict[str, str] = {}
    for value in counts["value"]:
        spelling.setdefault(str(value).casefold(), str(value))
    merged = len(counts) - len(spelling)
    if merged:
        log.debug("%s: merged %d spelling(s) that differ only in case", text.name, merged)
    return collapsed.str.casefold().map(spelling).astype(object)


def _typed_column(name: str, text: pd.Series, kind: ColumnType, tokens: frozenset[str]) -> tuple[pd.Series, str]:
    """The column in its declared type, and a problem description ("" when there is none)."""
    accepted_missing = ", ".join(repr(t) for t in sorted(tokens))
    if kind == "number":
        numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
        bad = text.notna() & ~np.isfinite(numbers)
        if bad.any():
            problem = (
                f"{name!r} (number): {int(bad.sum()):,} value(s) are not numbers, e.g. {_examples(text[bad])}; "
                f"accepted: numbers like 12 or 3.5, or a missing-value token ({accepted_missing})"
            )
            return numbers, problem
        return numbers, ""
    if kind == "boolean":
        normalised = text.map(lambda v: _token(v) if isinstance(v, str) else v)
        flags = normalised.map(BOOLEAN_VALUES).astype(np.float64)
        bad = text.notna() & flags.isna()
        if bad.any():
            problem = (
                f"{name!r} (boolean): {int(bad.sum()):,} value(s) are not yes/no, e.g. {_examples(text[bad])}; "
                f"accepted: {', '.join(BOOLEAN_VALUES)} (any case), or a missing-value token ({accepted_missing})"
            )
            return flags, problem
        return flags, ""
    return _canonical_categories(text), ""


def _outcome(text: pd.Series, outcome: OutcomeMapping) -> tuple[NDArray[np.int64], str]:
    tokens = text.map(_outcome_token)
    positive = tokens.isin(outcome.positive_tokens)
    if outcome.negative is not None:
        bad = ~positive & ~tokens.isin(outcome.negative_tokens)
        if bad.any():
            problem = (
                f"outcome column {outcome.column!r}: {int(bad.sum()):,} row(s) are neither positive "
                f"{outcome.positive} nor negative {outcome.negative}, e.g. {_examples(text[bad])}; add the values to "
                "outcome.positive or outcome.negative, or to missing_values to drop those rows"
            )
            return np.zeros(0, dtype=np.int64), problem
    y = np.asarray(positive, dtype=np.int64)
    if outcome.negative is None:
        log.info("outcome column %r: taken as negative: %s", outcome.column, _examples(text[~positive]))
    for label, count in (("positive", int(y.sum())), ("negative", int(len(y) - y.sum()))):
        if count < MIN_CLASS_ROWS:
            problem = (
                f"outcome column {outcome.column!r}: {count} {label} row(s); need at least {MIN_CLASS_ROWS} of each "
                f"class (positive values: {outcome.positive}; values seen: {_examples(text)})"
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

    outcome_text = _apply_missing(_as_text(raw[mapping.outcome.column]), tokens)
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
        values, problem = _typed_column(name, _apply_missing(_as_text(rows[name]), tokens), col.type, tokens)
        typed[name] = values
        problems += [problem] if problem else []

    ids = None
    if mapping.id_column is not None:
        ids = _apply_missing(_as_text(rows[mapping.id_column]), tokens)
        repeated = ids[ids.notna() & ids.duplicated(keep=False)]
        if len(repeated):
            problems.append(
                f"id column {mapping.id_column!r}: {len(repeated):,} row(s) share an id with another row, e.g. "
                f"{_examples(repeated)}; a flat export has one row per lead"
            )
    dates = None
    if mapping.date_column is not None:
        text = _apply_missing(_as_text(rows[mapping.date_column]), tokens)
        dates = pd.to_datetime(text, format=mapping.date_format, errors="coerce", utc=True)
        bad = dates.isna()
        if bad.any():
            wanted = f"dates in format {mapping.date_format!r}" if mapping.date_format else "ISO dates like 2024-03-31"
            problems.append(
                f"date column {mapping.date_column!r}: {int(bad.sum()):,} row(s) have no readable date, e.g. "
                f"{_examples(text[bad].fillna(''))}; accepted: {wanted}; an out-of-time split needs a date on every row"
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


# ---- leakage audit -------------------------------------------------------------------------------------------


def _oriented(auc: float) -> float:
    """AUC folded onto [0.5, 1]: a column that ranks the classes backwards separates them just as well."""
    return max(auc, 1.0 - auc)


def _number_auc(values: pd.Series, y: NDArray[np.int64]) -> float:
    """Single-column AUC of a number, with missing as its own level ranked below and then above every value."""
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(x)
    if missing.all():
        return 0.5
    low, high = float(np.nanmin(x)) - 1.0, float(np.nanmax(x)) + 1.0
    return max(_oriented(float(roc_auc_score(y, np.where(missing, level, x)))) for level in (low, high))


def _category_auc(labels: NDArray[np.object_], y: NDArray[np.int64], seed: int) -> float:
    """Single-column AUC of a category scored by its out-of-fold positive rate (see TARGET_ENCODING_FOLDS)."""
    folds = min(TARGET_ENCODING_FOLDS, int(y.sum()), int(len(y) - y.sum()))
    if folds < 2:
        return math.nan
    encoded = np.empty(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, y):
        prior = float(y[train].mean())
        stats = pd.DataFrame({"value": labels[train], "y": y[train]}).groupby("value")["y"].agg(["sum", "count"])
        rate = (stats["sum"] + TARGET_ENCODING_PRIOR_ROWS * prior) / (stats["count"] + TARGET_ENCODING_PRIOR_ROWS)
        encoded[test] = pd.Series(labels[test]).map(rate).fillna(prior).to_numpy(dtype=np.float64)
    return _oriented(float(roc_auc_score(y, encoded)))


def _level_labels(values: pd.Series, kind: ColumnType) -> NDArray[np.object_]:
    """The levels a column's purest value is sought among: its values, or for a number only whether it is present."""
    if kind == "number":
        return np.where(values.notna().to_numpy(), PRESENT_LEVEL, MISSING_LEVEL).astype(object)
    text = values.map({1.0: "yes", 0.0: "no"}) if kind == "boolean" else values.astype(object)
    return text.where(values.notna(), MISSING_LEVEL).to_numpy(dtype=object)


@dataclass(frozen=True, slots=True)
class _PureValue:
    value: str
    row_share: float
    positive_rate: float
    label: Literal["positive", "negative"]
    class_share: float


def _purest_value(labels: NDArray[np.object_], present: NDArray[np.bool_], y: NDArray[np.int64]) -> _PureValue | None:
    """The level (value, missing or present) holding most of one class at PURE_RATE purity, among large enough ones."""
    n, positives = len(y), int(y.sum())
    negatives = n - positives
    base_rate = positives / n
    levels = pd.DataFrame({"value": labels, "y": y}).groupby("value")["y"].agg(["sum", "count"])
    if PRESENT_LEVEL not in levels.index and present.any():
        # Present at all is a level too: a field filled in only once a deal is won may hold a different value each time.
        levels.loc[PRESENT_LEVEL] = [int(y[present].sum()), int(present.sum())]
    # Caps on the other class's rate inside a pure value: see PURE_RATE and PURE_MAX_RATE_RATIO.
    max_positive_rate = min(1.0 - PURE_RATE, PURE_MAX_RATE_RATIO * base_rate)
    max_negative_rate = min(1.0 - PURE_RATE, PURE_MAX_RATE_RATIO * (1.0 - base_rate))
    best: _PureValue | None = None
    for value, row in levels.iterrows():
        count, hits = int(row["count"]), int(row["sum"])
        if count < PURE_MIN_ROW_SHARE * n:
            continue
        rate = hits / count
        if 1.0 - rate <= max_negative_rate:
            candidate = _PureValue(str(value), count / n, rate, "positive", hits / positives)
        elif rate <= max_positive_rate:
            candidate = _PureValue(str(value), count / n, rate, "negative", (count - hits) / negatives)
        else:
            continue
        if best is None or candidate.class_share > best.class_share:
            best = candidate
    return best


def audit_leakage(frame: pd.DataFrame, y: ArrayLike, mapping: CrmMapping, *, seed: int = 0) -> pd.DataFrame:
    """Evidence, one row per fit or engagement column (most suspicious first), that it was recorded after the outcome.

    Evidence per column: its single-column ROC AUC (numbers ranked with missing as a level of its own, categories
    scored by out-of-fold target encoding), its missing rate among positives and negatives, and its purest value.
    A column is flagged when it separates the classes almost perfectly (LEAK_AUC), is present almost only for one
    class (PRESENT_RATIO and PRESENT_DIFFERENCE), or has a stage-like value (PURE_RATE, STAGE_MIN_CLASS_SHARE).
    `suspicion` is the strongest of the three pieces of evidence as a multiple of its threshold: flagged means >= 1.
    `kept` marks flagged columns listed under `keep`; the others are left out of training.
    """
    labels_y = np.asarray(y, dtype=np.int64)
    if labels_y.ndim != 1 or len(labels_y) != len(frame):
        raise ValueError(f"y must hold one 0/1 label per row of the frame; got {labels_y.shape} for {len(frame)} rows")
    positives = int(labels_y.sum())
    if positives == 0 or positives == len(labels_y):
        raise ValueError("y holds a single class: the audit compares positives with negatives and needs both")
    is_positive = labels_y == 1
    rows: list[dict[str, object]] = []
    for name, col in mapping.features.items():
        if name not in frame.columns:
            raise ValueError(f"column {name!r} is declared in the mapping but not in the frame")
        assert col.type is not None  # guaranteed by ColumnMapping for fit and engagement columns
        values = frame[name]
        present = values.notna().to_numpy()
        labels = _level_labels(values, col.type)
        auc = _number_auc(values, labels_y) if col.type != "category" else _category_auc(labels, labels_y, seed)
        present_pos, present_neg = float(present[is_positive].mean()), float(present[~is_positive].mean())
        high, low = max(present_pos, present_neg), min(present_pos, present_neg)
        ratio = 1.0 if high == 0 else high / low if low > 0 else math.inf
        pure = _purest_value(labels, present, labels_y)

        evidence: list[tuple[float, str]] = []
        if not math.isnan(auc):
            evidence.append(((auc - 0.5) / (LEAK_AUC - 0.5),
                             f"separates the classes almost perfectly (single-column AUC {auc:.2f})"))  # fmt: skip
        which = "positives" if present_pos >= present_neg else "negatives"
        evidence.append((
            min(ratio / PRESENT_RATIO, (high - low) / PRESENT_DIFFERENCE),
            f"present almost only for one class (filled for {high:.0%} of {which}, {low:.0%} of the others)",
        ))  # fmt: skip
        if pure is not None:
            evidence.append((
                pure.class_share / STAGE_MIN_CLASS_SHARE,
                f"stage-like value {pure.value!r} ({pure.class_share:.0%} of all {pure.label}s, "
                f"{pure.positive_rate:.0%} positive)",
            ))  # fmt: skip
        suspicion = max(score for score, _ in evidence)
        reasons = [text for score, text in evidence if score >= 1.0]
        flagged = bool(reasons)
        rows.append(
            {
                "column": name,
                "role": col.role,
                "type": col.type,
                "suspicion": suspicion,
                "flagged": flagged,
                "kept": flagged and name in mapping.keep,
                "reason": "; ".join(reasons),
                "auc": auc,
                "missing_rate_positive": 1.0 - present_pos,
                "missing_rate_negative": 1.0 - present_neg,
                "purest_value": pure.value if pure else None,
                "purest_value_row_share": pure.row_share if pure else math.nan,
                "purest_value_positive_rate": pure.positive_rate if pure else math.nan,
                "purest_value_class": pure.label if pure else None,
                "purest_value_class_share": pure.class_share if pure else math.nan,
            }
        )
    audit = pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))
    return audit.sort_values(["suspicion", "column"], ascending=[False, True], kind="stable", ignore_index=True)


# ---- training ------------------------------------------------------------------------------------------------


class ExportEncoder:
    """Mapped export columns as a float matrix for LightGBM; category codes are fixed at `fit`.

    Categories become integer codes 0..K-1 for values seen at least `min_category_count` times in the training rows,
    K ("other") for rarer and unseen values, NaN when missing; numbers stay as they are; booleans are 0/1.
    """

    def __init__(
        self, *, columns: Mapping[str, ColumnMapping], min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT
    ) -> None:
        self.columns = columns
        self.min_category_count = min_category_count

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn the category vocabularies from the training rows."""
        vocabularies: dict[str, tuple[str, ...]] = {}
        for name, col in self.columns.items():
            if col.type == "category":
                counts = frame[name].dropna().astype(str).value_counts()
                vocabularies[name] = tuple(sorted(str(v) for v in counts[counts >= self.min_category_count].index))
        self.columns_ = list(self.columns)
        self.vocabularies_ = vocabularies
        self.feature_names_ = _feature_names(self.columns_)
        self.categorical_features_ = [f for f, c in zip(self.feature_names_, self.columns_, strict=True)
                                      if c in vocabularies]  # fmt: skip
        return self

    def transform(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """One row per lead, one column per feature (in `feature_names_` order)."""
        out = np.empty((len(frame), len(self.columns_)), dtype=np.float64)
        for j, name in enumerate(self.columns_):
            values = frame[name]
            vocabulary = self.vocabularies_.get(name)
            if vocabulary is None:
                out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
                continue
            codes = pd.Series(np.arange(len(vocabulary), dtype=np.float64), index=list(vocabulary))
            # Values outside the vocabulary (rare or unseen) get code K, "other"; missing values stay NaN.
            mapped = values.astype(object).map(codes).to_numpy(dtype=np.float64, na_value=np.nan)
            out[:, j] = np.where(np.isnan(mapped) & values.notna().to_numpy(), float(len(vocabulary)), mapped)
        return out


def _feature_names(columns: Sequence[str]) -> list[str]:
    """LightGBM-safe, distinct feature names: it refuses JSON punctuation and rewrites spaces in names."""
    names: list[str] = []
    for column in columns:
        base = re.sub(r"[^0-9A-Za-z]+", "_", column).strip("_") or "column"
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        names.append(name)
    return names


@dataclass(frozen=True, slots=True)
class ExportSplit:
    """Row positions of training, validation and holdout leads, and each row's position in time (for calibration)."""

    kind: SplitKind
    train: NDArray[np.intp]
    valid: NDArray[np.intp]
    holdout: NDArray[np.intp]
    times: NDArray[np.int64]
    holdout_start: pd.Timestamp | None

    @property
    def note(self) -> str:
        """What the split means for the holdout figures."""
        if self.kind == "time":
            return (
                f"out-of-time split: the holdout is the latest {len(self.holdout):,} leads, from {self.holdout_start}"
            )
        return (
            f"random stratified split ({len(self.holdout):,} holdout leads): the export has no date column, so the "
            "holdout is drawn from the same period as training; for a business whose leads change over time this is "
            "optimistic. Add a date_column to the mapping for an out-of-time holdout."
        )


def split_export(
    export: CrmExport, *, holdout_fraction: float = HOLDOUT_FRACTION, valid_fraction: float = VALID_FRACTION,
    seed: int = 0,
) -> ExportSplit:  # fmt: skip
    """Latest leads as holdout when the export has dates, else a seeded stratified random split.

    Validation is the latest `valid_fraction` of the remaining leads in time, or a stratified share of them.
    """
    if not 0 < holdout_fraction < 1 or not 0 < valid_fraction < 1:
        raise ValueError(f"holdout_fraction and valid_fraction must lie in (0, 1); got {holdout_fraction}, "
                         f"{valid_fraction}")  # fmt: skip
    n = len(export.y)
    if export.dates is not None:
        order = np.argsort(export.dates.to_numpy(dtype="datetime64[ns]"), kind="stable")
        times = np.empty(n, dtype=np.int64)
        times[order] = np.arange(n)
        n_holdout = math.ceil(n * holdout_fraction)
        rest, holdout = order[: n - n_holdout], order[n - n_holdout :]
        n_valid = math.ceil(len(rest) * valid_fraction)
        train, valid = rest[: len(rest) - n_valid], rest[len(rest) - n_valid :]
        start = pd.Timestamp(export.dates.iloc[int(holdout[0])])
        return ExportSplit("time", np.sort(train), np.sort(valid), np.sort(holdout), times, start)
    positions = np.arange(n)
    rest, holdout = train_test_split(positions, test_size=holdout_fraction, stratify=export.y, random_state=seed)
    train, valid = train_test_split(rest, test_size=valid_fraction, stratify=export.y[rest], random_state=seed)
    # Row order stands in for time: with no dates, the calibrator's "earlier" and "later" halves are file order.
    return ExportSplit("random", np.sort(train), np.sort(valid), np.sort(holdout), positions.astype(np.int64), None)


@dataclass(frozen=True, slots=True)
class _Scored:
    metrics: dict[str, float]
    importance: pd.DataFrame


def _train_and_score(
    export: CrmExport, mapping: CrmMapping, columns: list[str], split: ExportSplit, config: BoosterConfig
) -> _Scored:
    encoder = ExportEncoder(columns={c: mapping.columns[c] for c in columns})
    encoder.fit(export.frame.iloc[split.train])
    x = encoder.transform(export.frame)
    y = export.y
    booster = train_booster(
        x[split.train], y[split.train], x[split.valid], y[split.valid],
        feature_names=encoder.feature_names_, categorical=encoder.categorical_features_, config=config,
    )  # fmt: skip
    raw_valid = np.asarray(booster.predict(x[split.valid], raw_score=True), dtype=np.float64)
    calibrator, _ = fit_calibrator(raw_valid, y[split.valid], split.times[split.valid])
    p = calibrator.apply(np.asarray(booster.predict(x[split.holdout], raw_score=True), dtype=np.float64))
    gain = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    importance = pd.DataFrame(
        {
            "column": columns,
            "role": [mapping.columns[c].role for c in columns],
            "type": [mapping.columns[c].type for c in columns],
            "gain": gain,
            "gain_share": gain / gain.sum() if gain.sum() > 0 else np.zeros_like(gain),
        }
    )
    importance = importance.sort_values(["gain", "column"], ascending=[False, True], kind="stable", ignore_index=True)
    return _Scored(binary_metrics(y[split.holdout], p), importance)


@dataclass(frozen=True, slots=True)
class CrmTrainResult:
    """Holdout metrics with and without the flagged columns, and the evidence behind leaving them out."""

    metrics_audited: dict[str, float]
    metrics_everything: dict[str, float]
    audit: pd.DataFrame
    excluded: tuple[str, ...]
    features: tuple[str, ...]
    importance: pd.DataFrame
    split: ExportSplit


def train_export(
    export: CrmExport,
    mapping: CrmMapping,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
    config: BoosterConfig | None = None,
) -> CrmTrainResult:
    """Audit the export, train a calibrated booster on the columns that pass, and one on every column, for contrast.

    The audit sees the training and validation leads only, so the choice of columns never peeks at the holdout.
    Flagged columns are left out unless listed under `keep`. The model is evaluated, not registered: the registered
    `lead-scorer` model reads the lead contract (leads and activities as of a date), not a flat export's columns.
    """
    config = config or BoosterConfig(seed=seed)
    split = split_export(export, holdout_fraction=holdout_fraction, seed=seed)
    seen = np.sort(np.concatenate([split.train, split.valid]))
    audit = audit_leakage(export.frame.iloc[seen], export.y[seen], mapping, seed=seed)
    flagged = audit.loc[audit["flagged"].astype(bool)]
    excluded = tuple(str(c) for c in flagged.loc[~flagged["kept"].astype(bool), "column"])
    for name, reason in flagged.loc[flagged["kept"].astype(bool), ["column", "reason"]].itertuples(index=False):
        log.warning("column %r is kept as the mapping asks, although the audit flags it: %s", name, reason)
    features = [c for c in mapping.features if c not in excluded]
    if not features:
        raise CrmError(
            f"the audit flags every fit and engagement column ({', '.join(excluded)}); list the ones recorded before "
            "the outcome under keep, or declare more columns"
        )
    log.info("training on %d column(s); left out as likely leaks: %s", len(features), ", ".join(excluded) or "none")
    audited = _train_and_score(export, mapping, features, split, config)
    everything = _train_and_score(export, mapping, list(mapping.features), split, config)
    return CrmTrainResult(
        metrics_audited=audited.metrics,
        metrics_everything=everything.metrics,
        audit=audit,
        excluded=excluded,
        features=tuple(features),
        importance=audited.importance,
        split=split,
    )


# ---- MLflow --------------------------------------------------------------------------------------------------


def log_export_run(
    result: CrmTrainResult,
    *,
    mapping_path: Path,
    export_path: Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
) -> str:
    """Log one MLflow run (params, holdout metrics, the export as a dataset, audit and mapping as artifacts).

    Runs go where `training.tracking.configure_tracking` points: `tracking_uri`, $MLFLOW_TRACKING_URI, or the local
    SQLite store. No model is logged or registered (see `train_export`). Returns the run's id.
    """
    # MLflow takes seconds to import; loading and auditing an export (and their tests) never need it.
    import mlflow  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415

    from training.tracking import configure_tracking, ensure_experiment  # noqa: PLC0415

    uri = configure_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment)
    params: dict[str, object] = {
        "mapping_path": str(mapping_path.resolve()),
        "export_path": str(export_path.resolve()) if export_path else "",
        "split": result.split.kind,
        "holdout_start": str(result.split.holdout_start or ""),
        "excluded_columns": ", ".join(result.excluded),
        "kept_flagged_columns": ", ".join(result.audit.loc[result.audit["kept"].astype(bool), "column"]),
        "features": ", ".join(result.features),
        "n_train": len(result.split.train),
        "n_valid": len(result.split.valid),
        "n_holdout": len(result.split.holdout),
    }
    metrics = to_mlflow_metrics(result.metrics_audited, None)
    for key in ("roc_auc", "pr_auc"):
        value = result.metrics_everything[key]
        if not math.isnan(value):
            metrics[f"{metric_name(key)}_everything"] = value
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name="crm-export") as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.set_tags({"leadscore.kind": "crm-export", "leadscore.split": result.split.kind})
        # MLflow caps a param value at 6000 characters; a long column list is cut rather than failing the run.
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        if export_path is not None:
            MlflowClient().log_inputs(run.info.run_id, datasets=[_export_input(result, export_path, mapping_path)])
        out = Path(tmp)
        result.audit.to_csv(out / "leakage_audit.csv", index=False)
        result.importance.to_csv(out / "feature_importance.csv", index=False)
        shutil.copyfile(mapping_path, out / mapping_path.name)
        mlflow.log_artifacts(str(out))
        run_id = str(run.info.run_id)
    log.info("logged run %s in experiment %r at %s", run_id, experiment, uri)
    return run_id


def _export_input(result: CrmTrainResult, export_path: Path, mapping_path: Path) -> DatasetInput:
    """The export as the user gave it (every cell as text, as `load_export` reads it), logged in the training context.

    Training, validation and holdout leads are all drawn from it; a tag on the input says how many of each.
    """
    from training.tracking import dataset_input  # noqa: PLC0415

    raw = pd.read_csv(export_path, dtype=str, keep_default_na=False, na_filter=False)
    split = result.split
    rows = f"{len(split.train):,} training, {len(split.valid):,} validation, {len(split.holdout):,} holdout leads"
    return dataset_input(
        raw,
        name=export_path.name,
        context="training",
        source=str(export_path.resolve()),
        targets=load_mapping(mapping_path).outcome.column,
        tags={"leadscore.split": f"{split.kind} split: {rows}"},
    )
