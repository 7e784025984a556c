"""A flat CRM export described by a YAML mapping: its columns typed and encoded one way in training and serving."""

from __future__ import annotations

import codecs
import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.builder import RequestFeatures, RequestLead
from features.fit import DEFAULT_MIN_CATEGORY_COUNT
from features.reasons import Reason, Side, top_k
from features.yaml12 import load_yaml12

log = logging.getLogger(__name__)

Role = Literal["fit", "engagement", "ignore"]
ColumnType = Literal["category", "number", "boolean"]
# When a column's value becomes known in a lead's life, in order: filled in when the lead is created (a form's
# fields), as the lead engages (visits, downloads), once sales is in touch (a rep's rating, call notes), or with the
# outcome itself (a closing stage, a deal size).
Known = Literal["creation", "engagement", "sales_contact", "outcome"]
KNOWN_ORDER: tuple[Known, ...] = ("creation", "engagement", "sales_contact", "outcome")

# How many offending values an error or a log line quotes: enough to recognise the problem, short enough to read.
MAX_EXAMPLES = 5
# Cells that are always missing, whatever the mapping says: an empty or blank cell cannot be a value.
ALWAYS_MISSING = frozenset({""})
BOOLEAN_VALUES: Mapping[str, float] = {"yes": 1.0, "true": 1.0, "1": 1.0, "no": 0.0, "false": 0.0, "0": 0.0}


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


def outcome_token(value: str) -> str:
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
    # None: at creation for a fit column, during engagement for an engagement column.
    known: Known | None = None
    description: str = ""

    @model_validator(mode="after")
    def _typed_unless_ignored(self) -> Self:
        if self.type is None and self.role != "ignore":
            raise ValueError(f"type is required for a {self.role} column; accepted: category, number, boolean")
        return self

    @property
    def known_at(self) -> Known:
        """When the column's value becomes known (declared, or implied by its role)."""
        if self.known is not None:
            return self.known
        return "creation" if self.role == "fit" else "engagement"


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
        return frozenset(outcome_token(v) for v in self.positive)

    @property
    def negative_tokens(self) -> frozenset[str]:
        """Normalised negative values (empty when every non-positive value is negative)."""
        return frozenset(outcome_token(v) for v in self.negative or ())


class CrmMapping(BaseModel):
    """What a flat CRM export holds: its outcome, its id and date columns, the role and type of every other column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: OutcomeMapping
    missing_values: list[str] = Field(default_factory=list)
    id_column: str | None = None
    date_column: str | None = None
    date_format: str | None = None
    # A whole-number column that orders leads in time (a lead number handed out in sequence), when there is no date.
    order_column: str | None = None
    # How the file is written; None: detected (and said so in the log).
    encoding: str | None = None
    separator: str | None = None
    columns: dict[str, ColumnMapping] = Field(min_length=1)
    # The model uses the columns known by this moment: a routing model decides before sales contact, so by default
    # what a rep records once in touch (and what the outcome fills in) is left out.
    known_by: Known = "engagement"
    keep: list[str] = Field(default_factory=list)

    @field_validator("missing_values", mode="before")
    @classmethod
    def _tokens_as_text(cls, value: object) -> object:
        return _scalar_list(value, "missing_values")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.date_format is not None and self.date_column is None:
            raise ValueError("date_format: given without a date_column; add date_column or remove date_format")
        if self.date_column is not None and self.order_column is not None:
            raise ValueError("order_column: given with a date_column; the split follows one of them, keep one")
        if self.separator is not None and len(self.separator) != 1:
            raise ValueError(f"separator: must be one character, like ',' or ';' (got {self.separator!r})")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(
                    f"encoding: {self.encoding!r} is not an encoding Python knows; e.g. utf-8, latin-1, cp1252"
                ) from None
        special = {"outcome.column": self.outcome.column, "id_column": self.id_column, "date_column": self.date_column,
                   "order_column": self.order_column}  # fmt: skip
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
            if name in self.declared_late:
                raise ValueError(
                    f"keep: {name!r} is known at {declared.known_at}, after known_by ({self.known_by}); keep is for "
                    "columns the audit flags, not for columns declared late"
                )
        if not self.usable:
            raise ValueError(
                f"columns: no fit or engagement column is known by {self.known_by} (known_by); declare when the "
                "columns become known, or set a later known_by"
            )
        return self

    @property
    def usable(self) -> dict[str, ColumnMapping]:
        """The features known by `known_by`: the candidates for the model and the audit."""
        limit = KNOWN_ORDER.index(self.known_by)
        return {n: c for n, c in self.features.items() if KNOWN_ORDER.index(c.known_at) <= limit}

    @property
    def declared_late(self) -> dict[str, ColumnMapping]:
        """The features declared known only after `known_by`: left out of the model by declaration."""
        return {n: c for n, c in self.features.items() if n not in self.usable}

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
        special = [self.outcome.column, self.id_column, self.date_column, self.order_column]
        return [*(c for c in special if c is not None), *self.columns]


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


def mapping_from_yaml(text: str, *, source: str = "mapping") -> CrmMapping:
    """A validated mapping from YAML text (see `parse_mapping`); a MappingError when it is not valid YAML."""
    try:
        document = load_yaml12(text)
    except yaml.YAMLError as err:
        raise MappingError(f"{source}: not valid YAML: {err}") from err
    return parse_mapping(document, source=source)


def parse_mapping(document: object, *, source: str = "mapping") -> CrmMapping:
    """A validated mapping from parsed YAML; a MappingError names every bad key, what is wrong and what is accepted."""
    if not isinstance(document, dict):
        raise MappingError(f"{source}: expected a YAML mapping with outcome and columns, got {type(document).__name__}")
    try:
        return CrmMapping.model_validate(document)
    except ValidationError as err:
        problems = "\n  ".join(_describe(e) for e in err.errors())
        raise MappingError(f"{source}: {err.error_count()} problem(s) in the mapping:\n  {problems}") from err


def examples(values: pd.Series) -> str:
    uniques = pd.unique(values.astype(str))
    shown = ", ".join(repr(str(v)) for v in uniques[:MAX_EXAMPLES])
    return shown + (", ..." if len(uniques) > MAX_EXAMPLES else "")


def as_text(column: pd.Series) -> pd.Series:
    """Cells as stripped text ("" for an empty cell); a frame built in memory may hold numbers, None or NaN."""
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    return text


def apply_missing(text: pd.Series, tokens: frozenset[str]) -> pd.Series:
    # Normalised per distinct value, not per cell: an export of a million leads has a few hundred distinct values.
    uniques = pd.Series(pd.unique(text))
    missing_values = set(uniques[uniques.map(_token).isin(tokens)])
    return text.where(~text.isin(missing_values))


def _canonical_categories(text: pd.Series) -> pd.Series:
    """Category values with whitespace collapsed and spellings that differ in case merged into the most common one.

    CRMs collect 'Google' and 'google' from different forms; they are one value to the model and the audit.
    """
    if text.isna().all():
        return text.astype(object)  # nothing to spell (and no text for pandas' .str to work on)
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


def typed_column(name: str, text: pd.Series, kind: ColumnType, tokens: frozenset[str]) -> tuple[pd.Series, str]:
    """The column in its declared type, and a problem description ("" when there is none)."""
    accepted_missing = ", ".join(repr(t) for t in sorted(tokens))
    if kind == "number":
        numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
        bad = text.notna() & ~np.isfinite(numbers)
        if bad.any():
            problem = (
                f"{name!r} (number): {int(bad.sum()):,} value(s) are not numbers, e.g. {examples(text[bad])}; "
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
                f"{name!r} (boolean): {int(bad.sum()):,} value(s) are not yes/no, e.g. {examples(text[bad])}; "
                f"accepted: {', '.join(BOOLEAN_VALUES)} (any case), or a missing-value token ({accepted_missing})"
            )
            return flags, problem
        return flags, ""
    return _canonical_categories(text), ""


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
            # Looked up without case or extra spaces: a request's 'google ' is the export's 'Google'.
            codes = pd.Series(np.arange(len(vocabulary), dtype=np.float64), index=[_key(v) for v in vocabulary])
            keys = values.astype(object).map(lambda v: _key(v) if isinstance(v, str) else v)
            # Values outside the vocabulary (rare or unseen) get code K, "other"; missing values stay NaN.
            mapped = keys.map(codes).to_numpy(dtype=np.float64, na_value=np.nan)
            out[:, j] = np.where(np.isnan(mapped) & values.notna().to_numpy(), float(len(vocabulary)), mapped)
        return out


def _key(value: str) -> str:
    """A category value without case or extra spaces: how values are matched against a vocabulary."""
    return " ".join(value.split()).casefold()


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


# ---- scoring an export's leads -----------------------------------------------------------------------------------


def typed_frame(raw: pd.DataFrame, columns: Mapping[str, ColumnMapping], tokens: frozenset[str]) -> tuple[
    pd.DataFrame, list[str]
]:  # fmt: skip
    """The mapped columns of raw cells (text, or JSON scalars) in their declared types, and the problems found.

    Training (a CSV's text) and serving (a request's values) type their cells here, so a value means the same in
    both: 'yes', 'Yes', true and 1 are one boolean; '12' and 12 one number.
    """
    typed: dict[str, pd.Series] = {}
    problems: list[str] = []
    for name, col in columns.items():
        assert col.type is not None  # guaranteed by ColumnMapping for fit and engagement columns
        cells = raw[name] if name in raw.columns else pd.Series([None] * len(raw), index=raw.index, dtype=object)
        values, problem = typed_column(name, apply_missing(as_text(cells), tokens), col.type, tokens)
        typed[name] = values
        problems += [problem] if problem else []
    return pd.DataFrame(typed, index=raw.index), problems


class ExportBuilder:
    """Feature rows of an export's leads, for the same scorer the lead contract's model uses (features/scoring.py).

    Columns are the usable fit columns first (what the fit booster reads), then the engagement columns. A lead is
    a record of the export's own columns (absent ones missing); it has no touches and no colleagues.
    """

    def __init__(self, *, mapping: CrmMapping, columns: Sequence[str]) -> None:
        self.mapping = mapping
        self.columns = list(columns)

    def fit(self, frame: pd.DataFrame) -> Self:
        """Fix the category vocabularies from the training rows of a typed export frame."""
        usable = self.mapping.features
        unknown = [c for c in self.columns if c not in usable]
        if unknown:
            raise ValueError(f"not fit or engagement columns of the mapping: {', '.join(unknown)}")
        ordered = [c for c in self.columns if usable[c].role == "fit"] + [
            c for c in self.columns if usable[c].role == "engagement"
        ]
        self.columns_ = ordered
        self.encoder_ = ExportEncoder(columns={c: usable[c] for c in ordered}).fit(frame)
        self.feature_names_ = list(self.encoder_.feature_names_)
        n_fit = sum(usable[c].role == "fit" for c in ordered)
        self.fit_feature_names_ = self.feature_names_[:n_fit]
        return self

    @property
    def column_mappings(self) -> dict[str, ColumnMapping]:
        """The model's columns and their mapping, in feature order."""
        return {c: self.mapping.columns[c] for c in self.columns_}

    def transform(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """Feature rows of a typed export frame (training)."""
        return self.encoder_.transform(frame)

    def records_frame(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Typed columns of lead records (a request's values); ExportError when a value does not fit its column."""
        raw = pd.DataFrame.from_records([{c: r.get(c) for c in self.columns_} for r in records], columns=self.columns_)
        frame, problems = typed_frame(raw, self.column_mappings, self.mapping.missing_tokens)
        if problems:
            raise ExportError("; ".join(problems))
        return frame

    def record_features(
        self,
        lead: Mapping[str, object],
        activities: Sequence[Mapping[str, object]] = (),
        as_of: object = None,
        colleagues: Sequence[Mapping[str, object]] = (),
    ) -> RequestFeatures:
        """The feature row of one lead record (an export lead has no touches or colleagues to read)."""
        return self._features([lead])

    def request_features(self, requests: Sequence[RequestLead]) -> RequestFeatures:
        """Feature rows of request-time leads, in order."""
        return self._features([r.lead for r in requests])

    def _features(self, records: Sequence[Mapping[str, object]]) -> RequestFeatures:
        rows = self.transform(self.records_frame(records)) if records else np.empty((0, len(self.feature_names_)))
        return RequestFeatures(rows=rows, ignored_touches=np.zeros(len(records), dtype=np.int64))

    def lifecycle_stages(self, rows: np.ndarray) -> list[str]:
        """An export lead is open (stage "lead"): the export has no lifecycle stamps to read."""
        return ["lead"] * len(rows)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0")


class ExportReasonLabeler:
    """Reasons phrased from the export's own columns: one reason per column, its SHAP impact, its value.

    Fit columns explain the fit score, engagement columns readiness; the same interface as features.reasons.
    """

    def __init__(self, builder: ExportBuilder) -> None:
        self.columns = list(builder.columns_)
        self.mappings = builder.column_mappings
        self.vocabularies = {c: list(v) for c, v in builder.encoder_.vocabularies_.items()}
        n_fit = len(builder.fit_feature_names_)
        self.groups = list(self.columns)
        self.sides: list[Side] = ["fit" if j < n_fit else "behaviour" for j in range(len(self.columns))]

    def group_impacts(self, contributions: np.ndarray) -> np.ndarray:
        """Impact per column: one feature per column, so the contributions themselves."""
        return contributions

    def behaviour_impacts(self, contributions: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Impact per column of the outcome model."""
        return contributions

    def top_reasons_of_rows(
        self, impacts: np.ndarray, values: np.ndarray | Sequence[Sequence[float]], *, side: Side, k: int,
        min_impact: float = 0.0,
    ) -> list[list[Reason]]:  # fmt: skip
        """The k columns of one side with the largest |impact| per row, phrased from the row's values."""
        columns = [j for j, s in enumerate(self.sides) if s == side]
        rows = values.tolist() if isinstance(values, np.ndarray) else values
        if not columns:
            return [[] for _ in rows]
        reasons: list[list[Reason]] = []
        for ranked, ranked_impacts, row in zip(*top_k(impacts, columns, k), rows, strict=True):
            row_reasons = []
            for position, impact in zip(ranked, ranked_impacts, strict=True):
                if abs(impact) <= min_impact:
                    break
                j = columns[position]
                row_reasons.append(Reason(self.groups[j], side, round(impact, 4), self.describe(j, row[j])))
            reasons.append(row_reasons)
        return reasons

    def describe(self, j: int, value: float) -> str:
        """'<column>: <value>' in the export's own words ('not given' when missing)."""
        name = self.columns[j]
        if math.isnan(value):
            return f"{name}: not given"
        kind = self.mappings[name].type
        if kind == "boolean":
            return f"{name}: {'yes' if value >= 0.5 else 'no'}"
        if kind == "category":
            vocabulary = self.vocabularies.get(name, [])
            code = int(value)
            return f"{name}: {vocabulary[code] if code < len(vocabulary) else 'another value'}"
        return f"{name}: {_number(value)}"
