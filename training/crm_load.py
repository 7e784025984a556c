"""Reading a flat CRM export and checking it against its mapping: typed columns, a 0/1 outcome, an order in time."""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer
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

# The separators a CRM writes: comma, semicolon (where the comma is the decimal mark), tab (Excel's "Unicode text"),
# pipe. Sniffing chooses among these only, so a letter or a space that repeats on every line is never taken for one.
SEPARATORS = ",;\t|"
_SEPARATOR_NAMES = {",": "',' (comma)", ";": "';' (semicolon)", "\t": "tab", "|": "'|' (pipe)"}
# How each separator is written in the YAML mapping: a tab needs double quotes for the escape to be read.
_SEPARATOR_YAML = {",": "','", ";": "';'", "\t": '"\\t"', "|": "'|'"}
# The separator is sniffed on the file's first characters: a few hundred lines of a typical export, and more than
# the header of a wide one.
SNIFF_CHARS = 64 * 1024
# Among the encodings that read a file equally cleanly, the most familiar wins: cp1252 is what Excel and most CRMs
# write in Western Europe, yet detection ranks ties by language coherence, which a table of names, cities and codes
# (not prose) barely shows: it reads a short Latin-1 export as cp1250 ("Núñez" becomes "Núńez").
_FAMILIAR_ENCODINGS = ("utf_8", "cp1252", "latin_1", "iso8859_15")
# Chaos scores (percent of the text that looks garbled) closer than this count as equally clean.
_TIED_CHAOS_PERCENT = 0.5
# Detection reads at most this many bytes of a large file (it takes about a second per megabyte): the file's start,
# and lines holding non-ASCII bytes picked evenly through the file, where encodings differ. The whole file is then
# decoded with the guess, and detection reads all of it only if that fails.
DETECT_BYTES = 512 * 1024
_DETECT_LINES = 256
_LONGEST_LINE = 4096
# Leading bytes of files that are not text: an Excel workbook (zip or the older OLE format) saved under a .csv name.
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")

# A cell that is a plain number: pandas reads 2019 as a year and 20190312 as yyyymmdd without a word, and cannot
# read 43526 (an Excel day number) at all, so such a date column needs a declared date_format.
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
# A whole number, as an order column holds it; Excel may append ".0". Eighteen digits fit in an int64.
_WHOLE_NUMBER = re.compile(r"([+-]?\d{1,18})(?:\.0*)?")


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
    # The order column's whole numbers (int64, named after the column), when the mapping has one instead of dates.
    order: pd.Series | None = None


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


def _separator_hint(header: str, used: str | None) -> str:
    """Which mapping key to set when the header holds another separator than the one the file was read with."""
    for candidate in SEPARATORS:
        if candidate != used and candidate in header:
            return (
                f"; the header holds {_SEPARATOR_NAMES[candidate]}, so the file looks separated by it: set "
                f"separator: {_SEPARATOR_YAML[candidate]} in the mapping"
            )
    return ""


def _check_separated(raw: pd.DataFrame, source: str, separator: str | None = None) -> None:
    """A header read as one column that holds another separator: the file was read with the wrong one."""
    if len(raw.columns) != 1:
        return
    header = str(raw.columns[0])
    hint = _separator_hint(header, separator)
    if hint:
        read_with = f" read with {_SEPARATOR_NAMES.get(separator, repr(separator))}" if separator else ""
        raise ExportError(f"{source}: the header{read_with} is a single column, {header[:80]!r}{hint}")


def _check_columns_present(raw: pd.DataFrame, mapping: CrmMapping, source: str) -> None:
    absent = [name for name in mapping.declared_columns() if name not in raw.columns]
    if not absent:
        return
    _check_separated(raw, source)
    lines = []
    for name in absent:
        close = difflib.get_close_matches(name, [str(c) for c in raw.columns], n=1, cutoff=0.8)
        lines.append(f"{name!r} is declared in the mapping but not in the export" + (
            f" (did you mean {close[0]!r}?)" if close else ""))  # fmt: skip
    header = f"{source}: {len(absent)} declared column(s) missing; the export has {len(raw.columns)} columns"
    raise ExportError(header + ":\n  " + "\n  ".join(lines))


def _numeric_date_advice(numbers: pd.Series) -> str:
    """What plain numbers in a date column probably are, and how to read them."""
    digits = numbers.str.lstrip("+-").str.split(".").str[0].str.len()
    if (digits == 8).all():
        return "they have 8 digits, like yyyymmdd: date_format: '%Y%m%d' reads them"
    if (digits == 4).all():
        return "they have 4 digits: date_format: '%Y' reads them as years (each lead on 1 January)"
    if digits.between(9, 13).all():
        return (
            "they look like Unix time (seconds or milliseconds), which no date_format reads: export the column as "
            "dates, e.g. 2019-03-12"
        )
    return (
        "if they are Excel day numbers (43526 is 2019-03-01), no date_format reads them: format the column as dates "
        "(yyyy-mm-dd) in the spreadsheet before saving it"
    )


def _dates(text: pd.Series, mapping: CrmMapping) -> tuple[pd.Series, str]:
    """The date column as UTC timestamps, and a problem description ("" when there is none)."""
    name = mapping.date_column
    if mapping.date_format is None:
        numbers = text[text.str.fullmatch(_PLAIN_NUMBER, na=False)]
        if len(numbers):
            problem = (
                f"date column {name!r}: {len(numbers):,} value(s) are plain numbers, e.g. {examples(numbers)}; a "
                "number is not read as a date by guessing (2019 could be a year, 20190312 a date written yyyymmdd, "
                f"43526 an Excel day number), so set date_format in the mapping; {_numeric_date_advice(numbers)}"
            )
            return pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]"), problem
    dates = pd.to_datetime(text, format=mapping.date_format, errors="coerce", utc=True)
    bad = dates.isna()
    if bad.any():
        wanted = f"dates in format {mapping.date_format!r}" if mapping.date_format else "ISO dates like 2024-03-31"
        return dates, (
            f"date column {name!r}: {int(bad.sum()):,} row(s) have no readable date, e.g. "
            f"{examples(text[bad].fillna(''))}; accepted: {wanted}; an out-of-time split needs a date on every row"
        )
    return dates, ""


def _order(text: pd.Series, name: str) -> tuple[pd.Series, str]:
    """The order column as int64, and a problem description ("" when there is none)."""
    whole = text.str.extract(_WHOLE_NUMBER.pattern, expand=False).where(text.str.fullmatch(_WHOLE_NUMBER, na=False))
    absent = text.isna()
    bad = ~absent & whole.isna()
    problems = []
    if bad.any():
        problems.append(
            f"{int(bad.sum()):,} value(s) are not whole numbers, e.g. {examples(text[bad])}; accepted: whole numbers "
            "like 600123 that grow with time, such as a lead number handed out in sequence"
        )
    if absent.any():
        problems.append(f"{int(absent.sum()):,} row(s) have no value; an out-of-time split needs one on every row")
    if problems:
        return pd.Series(0, index=text.index, dtype=np.int64, name=name), (
            f"order column {name!r}: " + "; ".join(problems)
        )
    return whole.astype(np.int64).rename(name), ""


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
        dates, problem = _dates(apply_missing(as_text(rows[mapping.date_column]), tokens), mapping)
        problems += [problem] if problem else []
    order = None
    if mapping.order_column is not None:
        order, problem = _order(apply_missing(as_text(rows[mapping.order_column]), tokens), mapping.order_column)
        problems += [problem] if problem else []
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
        order=None if order is None else order.reset_index(drop=True),
    )


def _where(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    return f"byte {offset:,} (line {line:,}, bytes {data[offset : offset + 4]!r})"


def _spelling(encoding: str) -> str:
    """An encoding as a user writes it in the mapping (Python's codec names use "_", which reads oddly)."""
    return encoding.replace("_", "-")


def _detection_sample(data: bytes) -> bytes:
    """What detection reads of a large file: its start, and lines holding non-ASCII bytes from all through it."""
    if len(data) <= DETECT_BYTES:
        return data
    high = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) >= 0x80)
    if not len(high):
        return data[:DETECT_BYTES]
    lines = []
    for pos in np.unique(high[np.linspace(0, len(high) - 1, _DETECT_LINES).astype(np.intp)]).tolist():
        # The line around the byte, or as much of it as _LONGEST_LINE allows on either side.
        before = data.rfind(b"\n", max(0, pos - _LONGEST_LINE), pos)
        after = data.find(b"\n", pos, pos + _LONGEST_LINE)
        start = before + 1 if before >= 0 else max(0, pos - _LONGEST_LINE)
        lines.append(data[start : after + 1 if after >= 0 else pos + _LONGEST_LINE])
    return data[: DETECT_BYTES // 2] + b"".join(lines)[: DETECT_BYTES // 2]


def _guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's best guess, or a familiar encoding that reads the file as cleanly; None: not text."""
    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        return None
    best = matches[0]
    least_chaos = min(match.percent_chaos for match in matches)
    tied: set[str] = set()
    for match in matches:
        if math.isclose(match.percent_chaos, least_chaos, abs_tol=_TIED_CHAOS_PERCENT):
            tied.update(match.could_be_from_charset)
    familiar = [name for name in _FAMILIAR_ENCODINGS if name in tied]
    return familiar[0] if familiar else str(best.encoding)


def _decoded(data: bytes, encoding: str | None) -> str | None:
    """The text in `encoding`; None when there is no encoding or it cannot decode every byte."""
    if encoding is None:
        return None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _not_text(data: bytes, source: str) -> ExportError:
    workbook = data.startswith(_WORKBOOK_MAGIC)
    return ExportError(
        f"{source}: this is not a text file"
        + (" but an Excel workbook; save it as CSV" if workbook else "; a CRM export is a CSV file")
    )


def decode_export(data: bytes, encoding: str | None, *, source: str = "export") -> str:
    """The export's text in the declared `encoding`, or in the one detected; an ExportError says where it fails.

    Without a declaration the file is read as UTF-8 when it is valid UTF-8 (a byte order mark is dropped), else as
    charset-normalizer's best guess, and the log says which. A declared encoding is never second-guessed: a byte it
    cannot decode is an error naming the byte, its line, and the encoding the file looks written in.
    """
    if encoding is not None:
        # Python's "utf-8" keeps a byte order mark as a character, which would then prefix the first column's name.
        codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        try:
            text = data.decode(codec)
        except UnicodeDecodeError as err:
            guess = _guess_encoding(_detection_sample(data))
            fix = (
                f"set encoding: {_spelling(guess)} in the mapping, the encoding the file looks written in"
                if guess is not None
                else "the file may not be text at all; check it is the CSV export"
            )
            raise ExportError(
                f"{source}: cannot be read as {encoding}, the encoding the mapping declares: {err.reason} at "
                f"{_where(data, err.start)}; {fix}"
            ) from err
        log.info("%s: read as %s (declared)", source, encoding)
        return text.removeprefix("\ufeff")
    if data.startswith(codecs.BOM_UTF8):
        log.info("%s: read as utf-8 with a byte order mark (detected)", source)
        return data.decode("utf-8-sig", errors="strict")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        first_bad = err
    else:
        log.info("%s: read as utf-8 (detected)", source)
        return text
    if data.startswith(_WORKBOOK_MAGIC):
        raise _not_text(data, source)
    guess = _guess_encoding(_detection_sample(data))
    guessed = _decoded(data, guess)
    if guessed is None and len(data) > DETECT_BYTES:
        # The sample missed the bytes that decide; detection reads the whole file, and its guess decodes all of it.
        guess = _guess_encoding(data)
        guessed = _decoded(data, guess)
    if guess is None or guessed is None:
        raise _not_text(data, source) from first_bad
    log.warning(
        "%s: read as %s (detected); it is not UTF-8, so this is a guess: if accented values look wrong, set "
        "encoding: in the mapping",
        source, _spelling(guess),
    )  # fmt: skip
    return guessed.removeprefix("\ufeff")


def _widths(sample: str, separator: str, truncated: bool) -> list[int]:
    """Fields per record of the sample read with `separator` (quotes respected, blank lines skipped)."""
    records = [len(r) for r in csv.reader(io.StringIO(sample), delimiter=separator) if r]
    return records[:-1] if truncated and len(records) > 1 else records


def sniff_separator(text: str) -> str | None:
    """The separator among `SEPARATORS` that splits the header and every sampled record alike, or None.

    csv.Sniffer's choice wins when it is such a separator, else the one that gives the most columns. Asking the
    header to split like the records keeps a semicolon file with decimal commas ("Name;Score" over "Ann;1,5") from
    being read with commas, which split every record but not the header.
    """
    truncated = len(text) > SNIFF_CHARS
    sample = text[:SNIFF_CHARS]
    if truncated and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]
    try:
        sniffed: str | None = csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        sniffed = None
    consistent: dict[str, int] = {}
    for candidate in SEPARATORS:
        widths = _widths(sample, candidate, truncated)
        if widths and widths[0] > 1 and len(set(widths)) == 1:
            consistent[candidate] = widths[0]
    if sniffed in consistent:
        return sniffed
    if consistent:
        return max(consistent, key=lambda c: consistent[c])
    return sniffed


def read_export(path: Path, mapping: CrmMapping) -> pd.DataFrame:
    """The CSV export at `path` as the user gave it, every cell as text; an ExportError says what cannot be read.

    The encoding and the separator are the mapping's, or detected (see `decode_export`, `sniff_separator`).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no CRM export at {path}")
    source = str(path)
    data = path.read_bytes()
    text = decode_export(data, mapping.encoding, source=source)
    separator = mapping.separator
    how = "declared"
    if separator is None:
        separator, how = sniff_separator(text) or ",", "sniffed"
    log.info("%s: fields separated by %s (%s)", source, _SEPARATOR_NAMES.get(separator, repr(separator)), how)
    try:
        # Every cell is read as text and nothing is turned into NaN by pandas: which cells are missing is the
        # mapping's call ("NA" may be Namibia), and a number column is checked, not coerced.
        raw = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as err:
        raise ExportError(f"{source}: the file is empty; a CRM export has a header row and one row per lead") from err
    except pd.errors.ParserError as err:
        header = text.split("\n", 1)[0]
        hint = _separator_hint(header, separator) or (
            "; a value that holds the separator must be in double quotes, or set separator: in the mapping"
        )
        name = _SEPARATOR_NAMES.get(separator, repr(separator))
        raise ExportError(f"{source}: cannot be read as CSV separated by {name} ({how}): {err}{hint}") from err
    _check_separated(raw, source, separator)
    return raw


def load_export(path: Path, mapping: CrmMapping) -> CrmExport:
    """The CSV export at `path`, read by `read_export` and checked against `mapping` (see `prepare_export`)."""
    return prepare_export(read_export(path, mapping), mapping, source=str(path))
