"""Reading real CRM exports: encodings, separators, an order column, numeric dates, and cuts at whole dates."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split
from typer.testing import CliRunner

from features.export import CrmMapping, ExportError, parse_mapping
from training import crm_load
from training.crm_cli import crm_app
from training.crm_load import CrmExport, load_export, load_mapping, prepare_export, read_export
from training.crm_split import VALID_FRACTION, split_export
from training.exits import EXIT_BAD_DATA

# Values a Western European CRM holds, with the accents that single-byte encodings write differently.
CITIES = ["Zürich", "Köln", "São Paulo", "Málaga", "Besançon", "Øresund", "Núñez y Señora", "Île-de-France"]
# Characters cp1252 has and latin-1 does not: curly quotes, an en dash, the euro sign.
CP1252_ONLY = ["Café \u201cLe Zinc\u201d \u2013 5 \u20ac"]
N = 60  # at least MIN_CLASS_ROWS of each class


def leads(n: int = N, cities: list[str] = CITIES) -> pd.DataFrame:
    """A small export as a CRM writes it: every cell text, a lead number, an accented city, a score, the outcome."""
    return pd.DataFrame(
        {
            "Lead No": [str(1000 + i) for i in range(n)],
            "City": [cities[i % len(cities)] for i in range(n)],
            "Score": [str(i % 13) for i in range(n)],
            "Won": [str(i % 2) for i in range(n)],
        }
    )


def mapping(**extra: Any) -> CrmMapping:
    return parse_mapping(
        {
            "outcome": {"column": "Won", "positive": ["1"]},
            "id_column": "Lead No",
            "columns": {"City": {"role": "fit", "type": "category"}, "Score": {"role": "fit", "type": "number"}},
            **extra,
        }
    )


def write(path: Path, frame: pd.DataFrame, *, sep: str = ",", encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(frame.to_csv(index=False, sep=sep, lineterminator=newline).encode(encoding))
    return path


def _export(n: int, *, dates: pd.Series | None = None, order: pd.Series | None = None) -> CrmExport:
    """A loaded export of `n` leads around given dates or order values, for the split alone."""
    return CrmExport(
        frame=pd.DataFrame({"x": np.zeros(n)}), y=np.arange(n, dtype=np.int64) % 2, ids=None, dates=dates,
        undeclared=(), dropped_outcome_rows=0, source="test", order=order,
    )  # fmt: skip


# ---- encodings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "cities"), [("latin-1", CITIES), ("cp1252", CITIES + CP1252_ONLY)])
def test_a_single_byte_file_is_detected_and_its_accents_read_correctly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, encoding: str, cities: list[str]
) -> None:
    # Windows line ends, as Excel writes them.
    csv = write(tmp_path / "export.csv", leads(cities=cities), encoding=encoding, newline="\r\n")
    with caplog.at_level(logging.INFO, logger="training.crm_load"):
        loaded = load_export(csv, mapping())
    assert set(loaded.frame["City"]) == set(cities) and loaded.frame["Score"].notna().all()
    # Latin-1 and cp1252 decode these bytes alike; the log names the more familiar one.
    assert "read as cp1252 (detected)" in caplog.text


def test_a_declared_encoding_is_used_as_declared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = write(tmp_path / "export.csv", leads(), encoding="latin-1")
    with caplog.at_level(logging.INFO, logger="training.crm_load"):
        loaded = load_export(csv, mapping(encoding="latin-1"))
    assert set(loaded.frame["City"]) == set(CITIES) and "read as latin-1 (declared)" in caplog.text


@pytest.mark.parametrize("declared", [None, "utf-8", "utf-8-sig"])
def test_utf8_with_a_byte_order_mark_leaves_the_first_column_name_clean(tmp_path: Path, declared: str | None) -> None:
    csv = write(tmp_path / "export.csv", leads(), encoding="utf-8-sig")
    assert csv.read_bytes().startswith(b"\xef\xbb\xbf")
    loaded = load_export(csv, mapping(encoding=declared) if declared else mapping())
    assert loaded.ids is not None and loaded.ids.iloc[0] == "1000" and set(loaded.frame["City"]) == set(CITIES)


def test_excel_unicode_text_utf16_with_tabs_is_read(tmp_path: Path) -> None:
    csv = write(tmp_path / "export.txt", leads(), sep="\t", encoding="utf-16")
    assert set(load_export(csv, mapping()).frame["City"]) == set(CITIES)


@pytest.fixture
def detection_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bytes each run of detection is given, with a large file made 4 KB small so the test stays fast."""
    reads: list[int] = []
    guess = crm_load._guess_encoding

    def spy(data: bytes) -> str | None:
        reads.append(len(data))
        return guess(data)

    monkeypatch.setattr(crm_load, "_guess_encoding", spy)
    monkeypatch.setattr(crm_load, "DETECT_BYTES", 4096)
    return reads


def test_detection_on_a_large_file_reads_a_sample_that_reaches_accents_late_in_the_file(
    tmp_path: Path, detection_reads: list[int]
) -> None:
    frame = leads(1000, cities=["Rome"])
    frame.loc[1000 - len(CITIES) :, "City"] = CITIES
    csv = write(tmp_path / "export.csv", frame, encoding="cp1252")
    assert csv.stat().st_size > 3 * 4096
    assert set(load_export(csv, mapping()).frame["City"]) == {"Rome", *CITIES}
    assert len(detection_reads) == 1 and detection_reads[0] <= 4096


def test_when_the_sampled_guess_cannot_decode_the_file_detection_reads_all_of_it(
    monkeypatch: pytest.MonkeyPatch, detection_reads: list[int]
) -> None:
    monkeypatch.setattr(crm_load, "_DETECT_LINES", 1)  # the sample sees the first accented line only
    lines = ["Lead No,City,Score,Won", *(f"{1000 + i},Rome,{i},{i % 2}" for i in range(300))]
    lines[150] = "1149,Zürich,1,0"
    lines[250] = "1249,Fab\x81rik,1,0"  # a byte cp1252, the sample's guess, leaves undefined
    data = ("\n".join(lines) + "\n").encode("latin-1")
    text = crm_load.decode_export(data, None)
    assert len(detection_reads) == 2 and detection_reads[0] <= 4096 and detection_reads[1] == len(data)
    assert text.count("\n") == len(lines) and text.splitlines()[1] == "1000,Rome,0,0"


def test_a_file_the_declared_encoding_cannot_decode_names_the_file_the_byte_and_the_fix(tmp_path: Path) -> None:
    csv = write(tmp_path / "export.csv", leads(), encoding="latin-1")
    with pytest.raises(ExportError) as err:
        load_export(csv, mapping(encoding="utf-8"))
    message = str(err.value)
    assert str(csv) in message and "cannot be read as utf-8, the encoding the mapping declares" in message
    # The first accented value, Zürich, sits on line 2 just after its lead number.
    assert "at byte 29 (line 2, bytes b'\\xfcric')" in message
    assert "set encoding: cp1252 in the mapping" in message


def test_a_workbook_saved_under_a_csv_name_is_named_as_such(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe" + bytes(range(256)))
    with pytest.raises(
        ExportError, match=r"export\.csv: this is not a text file but an Excel workbook; save it as CSV"
    ):
        load_export(csv, mapping())


# ---- separators --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_the_separator_is_sniffed(tmp_path: Path, sep: str) -> None:
    csv = write(tmp_path / "export.csv", leads(), sep=sep)
    loaded = load_export(csv, mapping())
    assert len(loaded.y) == N and set(loaded.frame["City"]) == set(CITIES)


def test_semicolons_with_decimal_commas_are_sniffed_as_semicolons(tmp_path: Path) -> None:
    frame = leads().assign(Score=lambda f: f["Score"] + ",5")
    csv = write(tmp_path / "export.csv", frame, sep=";")
    raw = read_export(csv, mapping())
    assert list(raw.columns) == ["Lead No", "City", "Score", "Won"] and raw["Score"].iloc[1] == "1,5"


def test_a_separator_declared_in_yaml_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = write(tmp_path / "export.tsv", leads(), sep="\t")
    yml = tmp_path / "mapping.yaml"
    yml.write_text(
        "outcome: {column: Won, positive: ['1']}\n"
        'separator: "\\t"\n'
        "columns: {City: {role: fit, type: category}, Score: {role: fit, type: number}}\n"
    )
    with caplog.at_level(logging.INFO, logger="training.crm_load"):
        loaded = load_export(csv, load_mapping(yml))
    assert set(loaded.frame["City"]) == set(CITIES) and "separated by tab (declared)" in caplog.text


@pytest.mark.parametrize("sep", [",", ";"])
def test_quoted_fields_keep_their_separators_and_newlines(tmp_path: Path, sep: str) -> None:
    cities = ["Paris; 11e", "Rome, Lazio", "Line one\nline two", 'He said "hi"; then left']
    csv = write(tmp_path / "export.csv", leads(cities=cities), sep=sep)
    raw = read_export(csv, mapping())
    assert list(raw.columns) == ["Lead No", "City", "Score", "Won"] and len(raw) == N
    assert set(raw["City"]) == set(cities)


def test_an_unquoted_separator_in_a_value_is_an_error_naming_the_separator_and_quoting(tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    lines = ["Lead No,City,Score,Won", *(f"{1000 + i},Rome,{i},{i % 2}" for i in range(N))]
    lines[7] = "1006,Rome, Lazio,6,0"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ExportError) as err:
        load_export(csv, mapping())
    message = str(err.value)
    assert f"{csv}: cannot be read as CSV separated by ',' (comma) (sniffed)" in message and "line 8" in message
    assert "a value that holds the separator must be in double quotes, or set separator: in the mapping" in message


@pytest.mark.parametrize(
    ("sep", "declared", "expected"),
    [
        (";", ",", "set separator: ';' in the mapping"),
        ("\t", ",", 'set separator: "\\t" in the mapping'),
        ("|", ";", "set separator: '|' in the mapping"),
    ],
)
def test_a_header_read_as_one_column_names_the_likely_separator_and_the_key(
    tmp_path: Path, sep: str, declared: str, expected: str
) -> None:
    csv = write(tmp_path / "export.csv", leads(), sep=sep)
    with pytest.raises(ExportError) as err:
        load_export(csv, mapping(separator=declared))
    message = str(err.value)
    assert str(csv) in message and "is a single column" in message and expected in message


def test_a_frame_with_one_column_gets_the_same_hint(tmp_path: Path) -> None:
    raw = pd.read_csv(write(tmp_path / "export.csv", leads(), sep=";"), dtype=str)
    with pytest.raises(
        ExportError, match=r"the header is a single column, 'Lead No;City;Score;Won'; .* separator: ';'"
    ):
        prepare_export(raw, mapping())


def test_decimal_commas_read_with_a_declared_comma_still_name_the_separator(tmp_path: Path) -> None:
    frame = leads().assign(Score=lambda f: f["Score"] + ",5")
    csv = write(tmp_path / "export.csv", frame, sep=";")
    with pytest.raises(ExportError, match=r"header read with ',' \(comma\) is a single column.* separator: ';'"):
        load_export(csv, mapping(separator=","))


def test_the_command_line_exits_2_with_the_separator_hint(tmp_path: Path) -> None:
    csv = write(tmp_path / "export.csv", leads(), sep=";", encoding="latin-1")
    yml = tmp_path / "mapping.yaml"
    yml.write_text(
        "outcome: {column: Won, positive: ['1']}\nseparator: ','\n"
        "columns: {City: {role: fit, type: category}, Score: {role: fit, type: number}}\n"
    )
    result = CliRunner().invoke(crm_app, ["audit", "--export", str(csv), "--mapping", str(yml)])
    assert result.exit_code == EXIT_BAD_DATA
    assert "set separator: ';' in the mapping" in " ".join(result.output.split())


# ---- order column ------------------------------------------------------------------------------------------------


def test_an_order_column_drives_an_out_of_time_split_without_straddling_a_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = leads(n).assign(**{"Lead No": [f"p{i}" for i in range(n)]})
    # Several leads per order value (a batch number), in shuffled file order; Excel's ".0" is a whole number too.
    batch = rng.integers(0, 40, n) + 600_000
    frame["Batch"] = [f"{b}.0" if i % 7 == 0 else str(b) for i, b in enumerate(batch)]
    csv = write(tmp_path / "export.csv", frame)
    loaded = load_export(csv, mapping(order_column="Batch"))
    assert loaded.order is not None and loaded.order.dtype == np.int64 and loaded.order.tolist() == batch.tolist()
    split = split_export(loaded)
    order = loaded.order.to_numpy()
    assert split.kind == "time" and split.holdout_start is None and split.order_column == "Batch"
    assert order[split.train].max() < order[split.valid].min() <= order[split.valid].max() < order[split.holdout].min()
    assert split.holdout_start_order == order[split.holdout].min()
    assert split.note == (
        f"out-of-time split by order column 'Batch': the holdout is the latest {len(split.holdout)} leads by that "
        f"column, from value {split.holdout_start_order}"
    )
    assert abs(len(split.holdout) - 0.2 * n) <= np.bincount(order - order.min()).max()
    # The calibrator's time follows the order column.
    assert (np.diff(order[np.argsort(split.times)]) >= 0).all()


def test_an_order_column_refuses_what_is_not_a_whole_number(tmp_path: Path) -> None:
    frame = leads().assign(Seq=[str(i) for i in range(N)])
    frame.loc[[3, 8, 9], "Seq"] = ["12.5", "n/a", "12.5"]
    frame.loc[[4, 5], "Seq"] = ["", "NULL"]
    with pytest.raises(ExportError) as err:
        prepare_export(frame, mapping(order_column="Seq", missing_values=["NULL"]))
    message = str(err.value)
    assert (
        "order column 'Seq': 3 value(s) are not whole numbers, e.g. '12.5', 'n/a'; accepted: whole numbers" in message
    )
    assert "2 row(s) have no value" in message


# ---- numeric dates -----------------------------------------------------------------------------------------------


def test_pandas_guesses_at_plain_numbers_without_a_format() -> None:
    """Why the loader refuses them: pandas reads a year and a yyyymmdd date silently, and an Excel day not at all."""
    guessed = pd.to_datetime(pd.Series(["2019", "1000", "9999"]), errors="coerce", utc=True)
    assert guessed.dt.year.tolist() == [2019, 1000, 9999] and (guessed.dt.month == 1).all()
    assert pd.to_datetime(pd.Series(["20190312"]), errors="coerce").iloc[0] == pd.Timestamp("2019-03-12")
    assert pd.to_datetime(pd.Series(["43526"]), errors="coerce").isna().all()


@pytest.mark.parametrize(
    ("values", "advice"),
    [
        (["2019", "2020", "1000"], "date_format: '%Y' reads them as years"),
        (["20190312", "20190313", "20190314"], "date_format: '%Y%m%d' reads them"),
        (["43526", "43527.5", "43528"], "Excel day numbers (43526 is 2019-03-01), no date_format reads them"),
        (["1552348800", "1552435200", "1552521600"], "Unix time"),
    ],
)
def test_a_date_column_of_plain_numbers_is_refused_without_a_date_format(values: list[str], advice: str) -> None:
    frame = leads().assign(Created=[values[i % 3] for i in range(N)])
    with pytest.raises(ExportError) as err:
        prepare_export(frame, mapping(date_column="Created"))
    message = str(err.value)
    assert f"date column 'Created': {N} value(s) are plain numbers, e.g. '{values[0]}'" in message
    assert "set date_format in the mapping" in message and advice in message


def test_plain_numbers_among_iso_dates_are_refused_too() -> None:
    frame = leads().assign(Created=[f"2024-03-{1 + i % 28:02d}" for i in range(N)])
    frame.loc[7, "Created"] = "20240312"
    with pytest.raises(ExportError, match=r"'Created': 1 value\(s\) are plain numbers, e\.g\. '20240312'"):
        prepare_export(frame, mapping(date_column="Created"))


def test_plain_number_dates_are_read_with_a_date_format() -> None:
    days = pd.date_range("2019-03-01", periods=N, freq="D")
    frame = leads().assign(Created=days.strftime("%Y%m%d"))
    loaded = prepare_export(frame, mapping(date_column="Created", date_format="%Y%m%d"))
    assert loaded.dates is not None and loaded.dates.iloc[11] == pd.Timestamp("2019-03-12", tz="UTC")


# ---- cuts at whole dates -----------------------------------------------------------------------------------------


def test_one_busy_day_at_the_cut_lands_in_one_part() -> None:
    """The issue's case: 93 leads of one day used to be cut 38 into validation and 55 into the holdout."""
    per_day = {"2024-01-01": 120, "2024-01-02": 120, "2024-01-03": 100, "2024-01-04": 93, "2024-01-05": 30}
    days = [day for day, count in per_day.items() for _ in range(count)]
    dates = pd.Series(pd.to_datetime(days, utc=True), name="Created")
    split = split_export(_export(len(dates), dates=dates))
    holdout_days = set(dates.iloc[split.holdout].dt.date.astype(str))
    assert holdout_days == {"2024-01-04", "2024-01-05"} and len(split.holdout) == 123  # asked 0.2 * 463 = 92.6
    assert split.holdout_start == pd.Timestamp("2024-01-04", tz="UTC")
    assert split.note == "out-of-time split at whole days: the holdout is the latest 123 leads, from 2024-01-04 (UTC)"
    assert set(dates.iloc[split.valid].dt.date.astype(str)) == {"2024-01-03"}


def test_times_within_a_day_keep_their_order_for_calibration() -> None:
    stamps = pd.Series(pd.date_range("2024-01-01", periods=96, freq="3h", tz="UTC")[::-1], name="Created")
    split = split_export(_export(96, dates=stamps))
    assert (split.times == np.arange(96)[::-1]).all()


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (["2024-05-02"] * 50, "every lead has the same day: 2024-05-02 (50 leads)"),
        (["2024-05-02"] * 30 + ["2024-05-03"] * 20, "the leads have only 2 days: 2024-05-02 (30 leads), 2024-05-03"),
    ],
)
def test_an_export_on_too_few_days_is_refused_naming_the_column_and_the_key(days: list[str], expected: str) -> None:
    dates = pd.Series(pd.to_datetime(days, utc=True), name="Created")
    with pytest.raises(ExportError) as err:
        split_export(_export(len(dates), dates=dates))
    message = str(err.value)
    assert message.startswith(f"date column 'Created': {expected}")
    assert "at least 3 different days" in message and "remove date_column from the mapping" in message


def test_an_order_column_with_one_value_is_refused() -> None:
    with pytest.raises(ExportError, match=r"order column 'Seq': every lead has the same value: 7 \(40 leads\).*"
                                          r"remove order_column"):  # fmt: skip
        split_export(_export(40, order=pd.Series(np.full(40, 7, dtype=np.int64), name="Seq")))


def _holdout_sizes(counts: list[int]) -> list[int]:
    """Every holdout size a cut at whole values allows, leaving training and validation a value each."""
    return [sum(counts[i:]) for i in range(2, len(counts))]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=3, max_size=30),
    seed=st.integers(0, 2**16),
    holdout_fraction=st.sampled_from([0.1, 0.2, 0.3]),
)
def test_no_date_lands_in_two_parts_and_the_holdout_is_as_close_as_whole_days_allow(
    counts: list[int], seed: int, holdout_fraction: float
) -> None:
    days = np.repeat(np.arange(len(counts)), counts)
    # Times of day at random and rows in random file order: only the day decides where a lead goes.
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp("2023-06-01", tz="UTC") + pd.to_timedelta(days, unit="D")
    stamps = stamps + pd.to_timedelta(rng.integers(0, 86_400, len(days)), unit="s")
    dates = pd.Series(stamps[rng.permutation(len(days))], name="Created")
    split = split_export(_export(len(dates), dates=dates), holdout_fraction=holdout_fraction)

    day = dates.dt.floor("D")
    parts = [set(day.iloc[p]) for p in (split.train, split.valid, split.holdout)]
    assert all(parts) and not (parts[0] & parts[1] or parts[1] & parts[2] or parts[0] & parts[2])
    assert max(parts[0]) < min(parts[1]) and max(parts[1]) < min(parts[2])
    assert sorted(np.concatenate([split.train, split.valid, split.holdout]).tolist()) == list(range(len(dates)))
    target = holdout_fraction * len(dates)
    assert abs(len(split.holdout) - target) == min(abs(size - target) for size in _holdout_sizes(counts))
    # Validation: the latest of the remaining days, as close to its share of them as whole days allow.
    rest = counts[: len(counts) - len(parts[2])]
    target = VALID_FRACTION * sum(rest)
    assert abs(len(split.valid) - target) == min(abs(sum(rest[j:]) - target) for j in range(1, len(rest)))


def test_without_a_date_or_order_column_the_split_is_the_seeded_stratified_one() -> None:
    export = _export(100)
    split = split_export(export, seed=3)
    _, holdout = train_test_split(np.arange(100), test_size=0.2, stratify=export.y, random_state=3)
    assert split.kind == "random" and split.holdout.tolist() == sorted(holdout.tolist())
    assert "Add a date_column (or an order_column)" in split.note
