"""Bring-your-own CRM export on a synthetic export with planted leaks: mapping, strict loading, audit, training, CLI."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from training import crm_cli
from training.config import BoosterConfig
from training.crm import (
    CrmExport,
    CrmMapping,
    ExportEncoder,
    ExportError,
    MappingError,
    audit_leakage,
    load_export,
    load_mapping,
    log_export_run,
    parse_mapping,
    prepare_export,
    split_export,
    train_export,
)
from training.crm_cli import TOP_IMPORTANCE, crm_app
from training.exits import EXIT_BAD_DATA, EXIT_MISSING_INPUT

# One thread and a quick learning rate: the suite shares two cores with other work.
FAST = BoosterConfig(num_threads=1, learning_rate=0.1, max_rounds=200)
N_LEADS = 1500
LEAKS = {"Tags", "Deal Size", "Rep Score"}
HONEST = {"Lead Source", "Email", "Do Not Email", "Total Time"}


def synthetic_export(n: int = N_LEADS, seed: int = 0) -> pd.DataFrame:
    """A flat export as a CRM writes it (all text), with honest signals and three planted leaks.

    Leaks: Tags holds "Closed by rep" for half of the positives and never for a negative (a stage), Deal Size is
    filled for 75 % of positives and 2 % of negatives (entered by sales), Rep Score is the outcome plus noise.
    """
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=n) < 0.35
    u = rng.uniform(size=(3, n))
    time_on_site = np.round(rng.gamma(2.0, 150.0, n) * np.where(y, 1.8, 1.0))
    source = np.where(u[0] < np.where(y, 0.35, 0.2), "Referral", rng.choice(["Google", "Direct Traffic"], n))
    tags = np.where(y & (u[1] < 0.5), "Closed by rep", rng.choice(["Ringing", "Will revert", "Select"], n))
    filled = np.where(y, u[2] < 0.75, u[2] < 0.02)
    deal_size = np.where(filled, rng.integers(1_000, 50_000, n).astype(str), rng.choice(["", "NA"], n))
    rep_score = np.round(2.0 * y + rng.normal(0.0, 0.6, n), 2)
    return pd.DataFrame(
        {
            "Prospect ID": [f"p-{i:05d}" for i in range(n)],
            "Lead Number": [str(600_000 + i) for i in range(n)],
            "Lead Source": source,
            "Email": [f"lead{i}@example.com" for i in range(n)],
            "Do Not Email": rng.choice(["Yes", "No"], n, p=[0.1, 0.9]),
            "Total Time": time_on_site.astype(int).astype(str),
            "Tags": tags,
            "Deal Size": deal_size,
            "Rep Score": rep_score.astype(str),
            "Notes": rng.choice(["called twice", "", "left voicemail"], n),
            "Converted": np.where(y, "1", "0"),
        }
    )


def mapping_dict() -> dict[str, Any]:
    return {
        "outcome": {"column": "Converted", "positive": ["1"]},
        "missing_values": ["Select", "NA"],
        "id_column": "Prospect ID",
        "columns": {
            "Lead Number": {"role": "ignore"},
            "Lead Source": {"role": "fit", "type": "category"},
            "Email": {"role": "fit", "type": "category", "description": "one value per lead: must not look leaky"},
            "Do Not Email": {"role": "fit", "type": "boolean"},
            "Total Time": {"role": "engagement", "type": "number"},
            "Tags": {"role": "engagement", "type": "category"},
            "Deal Size": {"role": "fit", "type": "number"},
            "Rep Score": {"role": "fit", "type": "number"},
        },
    }


@pytest.fixture(scope="module")
def mapping() -> CrmMapping:
    return parse_mapping(mapping_dict())


@pytest.fixture(scope="module")
def export(mapping: CrmMapping) -> CrmExport:
    return prepare_export(synthetic_export(), mapping)


@pytest.fixture(scope="module")
def audit(export: CrmExport, mapping: CrmMapping) -> pd.DataFrame:
    return audit_leakage(export.frame, export.y, mapping)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    csv = tmp_path / "export.csv"
    synthetic_export().to_csv(csv, index=False)
    yml = tmp_path / "mapping.yaml"
    yml.write_text(yaml.safe_dump(mapping_dict(), sort_keys=False))
    return csv, yml


# ---- mapping ---------------------------------------------------------------------------------------------------


def _set(path: tuple[str, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda document: document.pop(key) and None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(("columns", "Tags", "role"), "leak"), "columns.Tags.role: Input should be 'fit', 'engagement' or"),
        (_drop("outcome"), "outcome: Field required"),
        (_set(("keep",), ["Tagz"]), "keep: 'Tagz' is not declared under columns (did you mean 'Tags'?)"),
        (_set(("keep",), ["Lead Number"]), "keep: 'Lead Number' has role ignore"),
        (_set(("columns", "Total Time"), {"role": "fit"}), "columns.Total Time: type is required for a fit column"),
        (_set(("columns", "Tags", "type"), "text"), "columns.Tags.type: Input should be 'category', 'number' or"),
        (_set(("colums",), {}), "colums: Extra inputs are not permitted; accepted keys: outcome, missing_values"),
        (_set(("outcome", "positive"), []), "outcome.positive: List should have at least 1 item"),
        (_set(("date_format",), "%Y-%m-%d"), "date_format: given without a date_column"),
        (_set(("columns", "Converted"), {"role": "fit", "type": "boolean"}), "columns.Converted: is already"),
    ],
)
def test_a_bad_mapping_names_the_key_and_what_is_accepted(
    change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    document = copy.deepcopy(mapping_dict())
    change(document)
    with pytest.raises(MappingError) as err:
        parse_mapping(document)
    assert expected in str(err.value)


def test_yaml_yes_and_no_stay_text_and_numbers_become_text(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "outcome: {column: Won, positive: [Yes], negative: [No, 0]}\n"
        "missing_values: [Select, '']\n"
        "columns: {Source: {role: fit, type: category}}\n"
    )
    loaded = load_mapping(path)
    assert loaded.outcome.positive == ["Yes"] and loaded.outcome.negative == ["No", "0"]


def test_invalid_yaml_is_a_mapping_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("outcome: {column: Won\n")
    with pytest.raises(MappingError, match=r"broken\.yaml: not valid YAML"):
        load_mapping(path)


# ---- loading ---------------------------------------------------------------------------------------------------


def test_a_declared_column_missing_from_the_export_is_named(mapping: CrmMapping) -> None:
    raw = synthetic_export(n=200).drop(columns=["Deal Size"]).rename(columns={"Total Time": "Total time"})
    with pytest.raises(ExportError) as err:
        prepare_export(raw, mapping)
    message = str(err.value)
    assert "2 declared column(s) missing" in message
    assert "'Deal Size' is declared in the mapping but not in the export" in message
    assert "'Total Time' is declared in the mapping but not in the export (did you mean 'Total time'?)" in message


def test_text_in_a_number_column_is_an_error_with_count_and_examples(mapping: CrmMapping) -> None:
    raw = synthetic_export(n=200)
    raw.loc[[3, 7, 9], "Total Time"] = ["12 min", "1,200", "12 min"]
    raw.loc[5, "Do Not Email"] = "maybe"
    with pytest.raises(ExportError) as err:
        prepare_export(raw, mapping)
    message = str(err.value)
    assert "'Total Time' (number): 3 value(s) are not numbers, e.g. '12 min', '1,200'" in message
    assert "'Do Not Email' (boolean): 1 value(s) are not yes/no, e.g. 'maybe'" in message


def test_an_outcome_value_outside_positive_and_negative_is_an_error(mapping: CrmMapping) -> None:
    raw = synthetic_export(n=200)
    raw.loc[[0, 1], "Converted"] = "pending"
    strict = parse_mapping({**mapping_dict(), "outcome": {"column": "Converted", "positive": [1], "negative": [0]}})
    with pytest.raises(ExportError, match=r"outcome column 'Converted': 2 row\(s\) are neither positive"):
        prepare_export(raw, strict)
    # Without a negative list, every other present value is negative.
    assert prepare_export(raw, mapping).y[:2].tolist() == [0, 0]


def test_missing_tokens_become_nan_and_rows_without_outcome_are_dropped(
    mapping: CrmMapping, caplog: pytest.LogCaptureFixture
) -> None:
    raw = synthetic_export(n=200)
    raw.loc[0, "Lead Source"] = "  select "
    raw.loc[1, "Total Time"] = "na"
    raw.loc[2, "Do Not Email"] = ""
    raw.loc[3, "Lead Source"] = "google "
    raw.loc[[4, 5], "Converted"] = ["", "NA"]
    with caplog.at_level(logging.WARNING, logger="training.crm"):
        loaded = prepare_export(raw, mapping)
    assert loaded.dropped_outcome_rows == 2 and len(loaded.frame) == 198
    assert "dropped 2 row(s) with no value in outcome column 'Converted'" in caplog.text
    assert "not in the mapping and are ignored: Notes" in caplog.text and loaded.undeclared == ("Notes",)
    frame = loaded.frame
    assert frame["Lead Source"].isna().iloc[0] and frame["Total Time"].isna().iloc[1]
    assert frame["Do Not Email"].isna().iloc[2]
    assert frame.loc[3, "Lead Source"] == "Google"  # case and spaces merged into the common spelling
    assert frame["Deal Size"].isna().mean() > 0.5 and frame["Deal Size"].dtype == np.float64
    assert set(frame["Do Not Email"].dropna()) == {0.0, 1.0}


def test_load_export_reads_every_cell_as_text_and_a_missing_file_is_not_found(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    csv, yml = files
    loaded = load_export(csv, load_mapping(yml))
    assert len(loaded.y) == N_LEADS and loaded.ids is not None and loaded.ids.iloc[0] == "p-00000"
    with pytest.raises(FileNotFoundError, match="no CRM export"):
        load_export(tmp_path / "nowhere.csv", load_mapping(yml))


# ---- audit -----------------------------------------------------------------------------------------------------


def _row(audit: pd.DataFrame, column: str) -> pd.Series:
    return audit.loc[audit["column"] == column].iloc[0]


def test_the_audit_flags_each_planted_leak_for_its_own_reason(audit: pd.DataFrame) -> None:
    assert set(audit.loc[audit["flagged"], "column"]) == LEAKS
    assert list(audit["column"][: len(LEAKS)].sort_values()) == sorted(LEAKS)  # most suspicious first
    tags = _row(audit, "Tags")
    assert "stage-like value 'Closed by rep'" in tags["reason"]
    assert tags["purest_value"] == "Closed by rep" and tags["purest_value_positive_rate"] == 1.0
    assert tags["purest_value_class"] == "positive" and tags["purest_value_class_share"] > 0.4
    deal = _row(audit, "Deal Size")
    assert "present almost only for one class" in deal["reason"]
    assert deal["missing_rate_positive"] < 0.35 and deal["missing_rate_negative"] > 0.95
    assert "separates the classes almost perfectly" in _row(audit, "Rep Score")["reason"]


def test_the_audit_leaves_honest_signals_alone(audit: pd.DataFrame) -> None:
    honest = audit.set_index("column").loc[sorted(HONEST)]
    assert not honest["flagged"].any() and (honest["reason"] == "").all()
    assert _row(audit, "Total Time")["auc"] > 0.6  # a real signal, just not a suspicious one
    # One value per lead: out-of-fold encoding gives it nothing to learn, so it cannot fake separation.
    assert _row(audit, "Email")["auc"] < 0.6


# ---- training --------------------------------------------------------------------------------------------------


def test_train_export_leaves_flagged_columns_out_and_shows_what_they_were_worth(
    export: CrmExport, mapping: CrmMapping
) -> None:
    result = train_export(export, mapping, config=FAST)
    assert set(result.excluded) == LEAKS and set(result.features) == HONEST
    assert set(result.importance["column"]) == HONEST
    assert result.split.kind == "random" and "optimistic" in result.split.note
    audited, everything = result.metrics_audited["roc_auc"], result.metrics_everything["roc_auc"]
    assert 0.6 < audited < everything - 0.15 and everything > 0.95
    assert result.metrics_audited["n"] == len(result.split.holdout) == 300


def test_a_flagged_column_listed_under_keep_is_trained_on_with_a_warning(
    export: CrmExport, caplog: pytest.LogCaptureFixture
) -> None:
    keeping = parse_mapping({**mapping_dict(), "keep": ["Deal Size"]})
    with caplog.at_level(logging.WARNING, logger="training.crm"):
        result = train_export(export, keeping, config=FAST)
    assert "Deal Size" in result.features and set(result.excluded) == {"Tags", "Rep Score"}
    assert bool(_row(result.audit, "Deal Size")["kept"])
    assert "column 'Deal Size' is kept as the mapping asks" in caplog.text


def test_with_a_date_column_the_latest_leads_are_the_holdout(mapping: CrmMapping) -> None:
    raw = synthetic_export(n=400)
    raw["Created"] = pd.date_range("2024-01-01", periods=400, freq="D").strftime("%d/%m/%Y")[::-1]
    dated = parse_mapping({**mapping_dict(), "date_column": "Created", "date_format": "%d/%m/%Y"})
    loaded = prepare_export(raw, dated)
    split = split_export(loaded)
    assert split.kind == "time" and "out-of-time" in split.note
    assert loaded.dates is not None
    assert loaded.dates.iloc[split.holdout].min() > loaded.dates.iloc[split.valid].max()
    assert loaded.dates.iloc[split.valid].min() > loaded.dates.iloc[split.train].max()
    assert sorted(split.holdout.tolist()) == list(range(80))  # the file runs newest first


def test_encoder_pools_rare_and_unseen_values_into_other_and_keeps_missing_nan(mapping: CrmMapping) -> None:
    train = pd.DataFrame({"Lead Source": ["Google"] * 12 + ["Referral"] * 10 + ["Fax"] * 3 + [np.nan]})
    encoder = ExportEncoder(columns={"Lead Source": mapping.columns["Lead Source"]}).fit(train)
    assert encoder.vocabularies_ == {"Lead Source": ("Google", "Referral")}
    assert encoder.categorical_features_ == encoder.feature_names_ == ["Lead_Source"]
    codes = encoder.transform(pd.DataFrame({"Lead Source": ["Referral", "Fax", "Telex", np.nan, "Google"]}))
    assert codes[:, 0].tolist()[:3] == [1.0, 2.0, 2.0] and np.isnan(codes[3, 0]) and codes[4, 0] == 0.0


# ---- command line ----------------------------------------------------------------------------------------------

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_crm_audit_prints_the_flagged_columns(files: tuple[Path, Path]) -> None:
    csv, yml = files
    result = runner.invoke(crm_app, ["audit", "--export", str(csv), "--mapping", str(yml)])
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "Tags (left out of training): stage-like value 'Closed by rep'" in output
    assert "Deal Size (left out of training): present almost only for one class" in output
    # The only honest signal carries most of the model's gain: kept, and listed for review with what it is worth.
    assert "Total Time (left out" not in output
    assert re.search(r"Total Time \(kept, to review\): carries \d+% of the gain .* dropping it costs 0\.\d{3}", output)
    assert "not in the mapping, ignored: Notes" in output


def test_crm_train_prints_both_aucs_and_writes_the_audit(files: tuple[Path, Path], tmp_path: Path) -> None:
    csv, yml = files
    out = tmp_path / "out"
    args = ["train", "--export", str(csv), "--mapping", str(yml), "--no-track", "--out", str(out), "--threads", "1"]
    result = runner.invoke(crm_app, args)
    assert result.exit_code == 0, result.output
    assert "audited (4 columns)" in result.output and "everything (7 columns)" in result.output
    assert "random stratified split" in result.output
    written = pd.read_csv(out / "leakage_audit.csv")
    assert set(written.loc[written["flagged"], "column"]) == LEAKS


def test_crm_exits_2_on_a_bad_mapping_naming_the_key(files: tuple[Path, Path]) -> None:
    csv, yml = files
    document = mapping_dict()
    document["columns"]["Tags"]["role"] = "leak"
    yml.write_text(yaml.safe_dump(document))
    result = runner.invoke(crm_app, ["audit", "--export", str(csv), "--mapping", str(yml)])
    assert result.exit_code == EXIT_BAD_DATA
    assert "columns.Tags.role" in _flat(result.output)


def test_crm_exits_2_on_bad_data_naming_the_column(files: tuple[Path, Path]) -> None:
    csv, yml = files
    raw = synthetic_export()
    raw.loc[0, "Rep Score"] = "high"
    raw.to_csv(csv, index=False)
    result = runner.invoke(crm_app, ["audit", "--export", str(csv), "--mapping", str(yml)])
    assert result.exit_code == EXIT_BAD_DATA
    assert "'Rep Score' (number): 1 value(s) are not numbers" in _flat(result.output)


@pytest.mark.parametrize("missing", ["export", "mapping"])
def test_crm_exits_3_on_a_missing_file(files: tuple[Path, Path], tmp_path: Path, missing: str) -> None:
    csv, yml = files
    paths = {"export": str(csv), "mapping": str(yml), missing: str(tmp_path / "nowhere")}
    result = runner.invoke(crm_app, ["train", "--export", paths["export"], "--mapping", paths["mapping"]])
    assert result.exit_code == EXIT_MISSING_INPUT
    assert "missing input" in result.output and "nowhere" in _flat(result.output)


# ---- tables in an 80-column terminal ----------------------------------------------------------------------------

WIDTH = 80


def _assert_fits(text: str) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= WIDTH, text


def _line(text: str, label: str) -> str:
    """The rendered line of the table row whose first cell starts with `label`."""
    return next(line for line in text.splitlines() if line.startswith(f"│ {label} "))


# Column names and values as long as real exports hold ("How did you hear about X Education"), and one name without
# a space to break at: they squeeze the tables, whose figures must stay whole while the text folds.
LONG_NAMES = {
    "Lead Source": "How did you hear about us (first touch, as typed by the lead)",
    "Total Time": "Total_Time_Spent_On_Website_In_Seconds_Summed_Over_All_Sessions_Since_The_First_Visit",
    "Tags": "Tags set by the sales representative after the first call",
}


@pytest.fixture
def wide_export(tmp_path: Path) -> tuple[Path, Path]:
    raw = synthetic_export().rename(columns=LONG_NAMES)
    raw[LONG_NAMES["Tags"]] = raw[LONG_NAMES["Tags"]].replace("Closed by rep", "Closed by the account executive")
    csv = tmp_path / "export.csv"
    raw.to_csv(csv, index=False)
    mapping = mapping_dict()
    mapping["columns"] = {LONG_NAMES.get(name, name): col for name, col in mapping["columns"].items()}
    yml = tmp_path / "mapping.yaml"
    yml.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return csv, yml


def _run_crm(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    monkeypatch.setattr(crm_cli, "console", console)
    result = runner.invoke(crm_app, list(args))
    assert result.exit_code == 0, result.output
    return console.export_text()


def _tables(text: str) -> str:
    """Only the tables and their titles: the flagged columns' reasons below the audit are soft-wrapped on purpose."""
    return "\n".join(line for line in text.splitlines() if line[:1] in "┏┃┡│└┌ ")


def test_crm_train_tables_show_every_figure_whole(
    wide_export: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = wide_export
    out = tmp_path / "out"
    text = _run_crm(
        monkeypatch, "train", "--export", str(csv), "--mapping", str(yml), "--no-track", "--threads", "1",
        "--out", str(out),
    )  # fmt: skip
    _assert_fits(_tables(text))
    audit = pd.read_csv(out / "leakage_audit.csv")
    for row in audit.itertuples(index=False):
        assert f"{row.auc:.2f}" in text
        assert f"{row.missing_rate_positive:.0%} / {row.missing_rate_negative:.0%}" in text
    for metric in ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10"):
        assert re.fullmatch(rf"│ {metric} +│ +\d+\.\d{{3}} │ +\d+\.\d{{3}} │", _line(text, metric)), text
    importance = pd.read_csv(out / "feature_importance.csv")
    for share in importance["gain_share"].head(TOP_IMPORTANCE):
        assert f"{share:.0%} │" in text
    assert "1,500" in _line(text, "leads")


def test_crm_audit_table_shows_every_figure_whole(
    wide_export: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = wide_export
    text = _run_crm(monkeypatch, "audit", "--export", str(csv), "--mapping", str(yml))
    _assert_fits(_tables(text))
    assert re.search(r"│ +\d\.\d\d │ +\d+% / \d+% │", text), text
    assert "(100%" in text and "positive," in text  # the purest value's figures, each on one line


# ---- MLflow --------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_export_run_logs_the_export_as_its_training_dataset(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = files
    crm_mapping = load_mapping(yml)
    result = train_export(load_export(csv, crm_mapping), crm_mapping, config=FAST)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test, as MLflow's setters write it
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        run_id = log_export_run(result, mapping_path=yml, export_path=csv, tracking_uri=uri, model_name=None).run_id
    finally:
        mlflow.set_tracking_uri(None)
    (logged,) = MlflowClient(tracking_uri=uri).get_run(run_id).inputs.dataset_inputs
    tags = {tag.key: tag.value for tag in logged.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["leadscore.split"] == "random split: 960 training, 240 validation, 300 holdout leads"
    dataset = logged.dataset
    assert dataset.name == "export.csv" and json.loads(dataset.source) == {"uri": str(csv.resolve())}
    assert json.loads(dataset.profile)["num_rows"] == N_LEADS and len(dataset.digest) == 16
    assert {spec["name"] for spec in json.loads(dataset.schema)["mlflow_colspec"]} == set(synthetic_export())
