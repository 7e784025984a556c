"""The audit both `crm` commands run: declared moments, hard leaks, a review tier with drop-one figures, same rows."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from training import crm_cli
from training.config import BoosterConfig
from training.crm import CrmExport, CrmMapping, parse_mapping, prepare_export, split_export, train_export
from training.crm_audit import (
    AUDIT_COLUMNS,
    EXPORT_AUDIT_COLUMNS,
    LEAK_AUC,
    REVIEW_AUC,
    ExportAudit,
    audit_export,
    audit_leakage,
)
from training.crm_cli import crm_app

# One thread and a quick learning rate: the suite shares two cores with other work.
FAST = BoosterConfig(num_threads=1, learning_rate=0.1, max_rounds=200)
N_LEADS = 1500
HONEST = {"Lead Source", "Employees", "Total Time"}


def sales_export(n: int = N_LEADS, seed: int = 0) -> pd.DataFrame:
    """A flat export (all text) with honest columns and three a sales team records once in touch.

    Rep Rating is declared as such in the mapping. Call Minutes (minutes on the phone with a rep) is not: mapped as
    engagement, it ranks leads at a single-column AUC near 0.80, under the hard limit, as a call's duration does in a
    telemarketing export. Tags holds "Closed by rep" for half of the positives and no negative: a stage, a hard leak.
    """
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=n) < 0.35
    u = rng.uniform(size=(2, n))
    source = np.where(u[0] < np.where(y, 0.4, 0.2), "Referral", rng.choice(["Google", "Direct Traffic"], n))
    total_time = np.round(rng.gamma(2.0, 150.0, n) * np.where(y, 1.6, 1.0))
    # Two standard deviations of noise around a shift of 2.6: an AUC of about Phi(2.6 / (2 * sqrt 2)) = 0.82.
    call_minutes = np.round(np.clip(rng.normal(6.0 + 2.6 * y, 2.0, n), 0.0, None), 1)
    rating = np.where(y, rng.choice(["A", "B"], n, p=[0.7, 0.3]), rng.choice(["A", "B", "C"], n, p=[0.15, 0.35, 0.5]))
    tags = np.where(y & (u[1] < 0.5), "Closed by rep", rng.choice(["Ringing", "Will revert"], n))
    return pd.DataFrame(
        {
            "Lead Source": source,
            "Employees": rng.integers(1, 500, n).astype(str),
            "Total Time": total_time.astype(int).astype(str),
            "Call Minutes": call_minutes.astype(str),
            "Rep Rating": rating,
            "Tags": tags,
            "Converted": np.where(y, "1", "0"),
        }
    )


def mapping_dict() -> dict[str, Any]:
    return {
        "outcome": {"column": "Converted", "positive": ["1"]},
        "columns": {
            "Lead Source": {"role": "fit", "type": "category"},
            "Employees": {"role": "fit", "type": "number"},
            "Total Time": {"role": "engagement", "type": "number"},
            "Call Minutes": {"role": "engagement", "type": "number", "description": "minutes on the phone with a rep"},
            "Rep Rating": {"role": "fit", "type": "category", "known": "sales_contact"},
            "Tags": {"role": "engagement", "type": "category"},
        },
    }


@pytest.fixture(scope="module")
def mapping() -> CrmMapping:
    return parse_mapping(mapping_dict())


@pytest.fixture(scope="module")
def export(mapping: CrmMapping) -> CrmExport:
    return prepare_export(sales_export(), mapping)


@pytest.fixture(scope="module")
def audited(export: CrmExport, mapping: CrmMapping) -> ExportAudit:
    return audit_export(export.frame, export.y, mapping, split_export(export), config=FAST)


def _row(audit: ExportAudit, column: str) -> pd.Series:
    return audit.table.loc[audit.table["column"] == column].iloc[0]


def test_the_table_holds_every_fit_and_engagement_column_with_its_tier(audited: ExportAudit) -> None:
    table = audited.table
    assert list(table.columns) == list(EXPORT_AUDIT_COLUMNS)
    assert set(table["column"]) == HONEST | {"Call Minutes", "Rep Rating", "Tags"}
    tiers = dict(zip(table["column"], table["tier"], strict=True))
    assert {c: tiers[c] for c in ("Tags", "Rep Rating", "Call Minutes")} == {
        "Tags": "leak", "Rep Rating": "declared", "Call Minutes": "review"}  # fmt: skip
    assert list(table["tier"][:3]) == ["leak", "declared", "review"]  # left out first, then what to review
    assert audited.rows == 1200  # training and validation leads: the 300 holdout leads are not audited
    assert 0.7 < audited.valid_auc < 1.0


def test_a_declared_late_column_is_left_out_with_the_declaration_as_reason(audited: ExportAudit) -> None:
    rating = _row(audited, "Rep Rating")
    assert rating["tier"] == "declared" and rating["known"] == "sales_contact"
    assert str(rating["reason"]).startswith(
        "declared known at sales_contact, after known_by (engagement): left out by declaration"
    )
    assert "Rep Rating" in audited.excluded and "Rep Rating" not in audited.features
    # Its evidence is shown all the same; no model trains on it, so it has no gain and no drop-one figure.
    assert rating["auc"] > 0.7 and math.isnan(rating["gain_share"]) and math.isnan(rating["drop_one_auc_change"])


def test_a_sales_column_under_the_hard_limits_is_kept_for_review_with_its_evidence_and_cost(
    audited: ExportAudit,
) -> None:
    minutes = _row(audited, "Call Minutes")
    assert minutes["tier"] == "review" and not minutes["flagged"]
    assert REVIEW_AUC <= minutes["auc"] < LEAK_AUC and abs(minutes["auc"] - 0.80) < 0.05
    assert audited.review == ("Call Minutes",)
    assert "Call Minutes" in audited.features and "Call Minutes" not in audited.excluded
    reason = str(minutes["reason"])
    assert f"ranks the classes well on its own (single-column AUC {minutes['auc']:.2f}; review from 0.75" in reason
    # Dropping it costs the model: the drop-one figure is in the table and in the reason.
    change = float(minutes["drop_one_auc_change"])
    assert change < -0.01
    assert f"dropping it costs {-change:.3f} validation AUC ({audited.valid_auc:.3f} -> " in reason
    assert 0.0 < minutes["gain_share"] <= 1.0


def test_a_dominant_column_that_costs_nothing_to_drop_says_another_column_holds_the_same(
    mapping: CrmMapping,
) -> None:
    """The same call in seconds: dropping either copy leaves the other, so the cost hides; the audit says so."""
    raw = sales_export(n=5000)
    raw["Call Seconds"] = (raw["Call Minutes"].astype(float) * 60).round().astype(int).astype(str)
    document = mapping_dict()
    document["columns"]["Call Seconds"] = {"role": "engagement", "type": "number"}
    twins = parse_mapping(document)
    loaded = prepare_export(raw, twins)
    audit = audit_export(loaded.frame, loaded.y, twins, split_export(loaded), config=FAST)
    assert set(audit.review) == {"Call Minutes", "Call Seconds"}
    dominant = audit.table.sort_values("gain_share", ascending=False).iloc[0]
    assert dominant["column"] in audit.review and dominant["gain_share"] > 0.3
    assert abs(dominant["drop_one_auc_change"]) < 0.005
    assert "yet dropping it costs nothing (validation AUC " in dominant["reason"]
    assert str(dominant["reason"]).endswith("other columns hold what it knows")


def test_a_hard_leak_is_left_out_and_honest_columns_stay_clean(audited: ExportAudit) -> None:
    tags = _row(audited, "Tags")
    assert tags["tier"] == "leak" and tags["flagged"] and not tags["kept"]
    assert "stage-like value 'Closed by rep'" in str(tags["reason"])
    assert set(audited.excluded) == {"Rep Rating", "Tags"}
    assert set(audited.features) == HONEST | {"Call Minutes"}
    honest = audited.table.set_index("column").loc[sorted(HONEST)]
    assert (honest["tier"].isin(["clean", "review"])).all() and not honest["flagged"].any()
    assert (honest["known"] == pd.Series({"Employees": "creation", "Lead Source": "creation",
                                          "Total Time": "engagement"})).all()  # fmt: skip


def test_a_leak_listed_under_keep_is_trained_on_and_tested_like_any_other(
    export: CrmExport, mapping: CrmMapping
) -> None:
    keeping = parse_mapping({**mapping_dict(), "keep": ["Tags"]})
    audit = audit_export(export.frame, export.y, keeping, split_export(export), config=FAST)
    tags = _row(audit, "Tags")
    assert tags["tier"] == "leak" and tags["kept"] and "Tags" in audit.features and audit.excluded == ("Rep Rating",)
    # A stage holding half of the positives is the strongest column there is: it is among those dropped in turn.
    assert tags["gain_share"] > 0.3 and tags["drop_one_auc_change"] < 0


def test_the_audit_never_looks_at_the_holdout(export: CrmExport, mapping: CrmMapping, audited: ExportAudit) -> None:
    split = split_export(export)
    frame, y = export.frame.copy(), export.y.copy()
    rng = np.random.default_rng(1)
    frame.iloc[split.holdout] = frame.iloc[rng.permutation(split.holdout)].to_numpy()
    y[split.holdout] = 1 - y[split.holdout]
    again = audit_export(frame, y, mapping, split, config=FAST)
    pd.testing.assert_frame_equal(again.table, audited.table)


def test_the_same_split_gives_the_same_evidence_as_audit_leakage_on_those_rows(
    export: CrmExport, mapping: CrmMapping, audited: ExportAudit
) -> None:
    """`crm train` (until it is rewired to audit_export) audits its training and validation rows with audit_leakage."""
    result = train_export(export, mapping, config=FAST)
    seen = np.sort(np.concatenate([result.split.train, result.split.valid]))
    assert len(seen) == audited.rows
    evidence = [c for c in AUDIT_COLUMNS if c not in {"reason", "kept"}]
    ours = audited.table[evidence].sort_values("column", ignore_index=True)
    trains = result.audit[evidence].sort_values("column", ignore_index=True)
    pd.testing.assert_frame_equal(ours, trains)


# ---- command line ----------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    csv = tmp_path / "export.csv"
    sales_export().to_csv(csv, index=False)
    yml = tmp_path / "mapping.yaml"
    yml.write_text(yaml.safe_dump(mapping_dict(), sort_keys=False))
    return csv, yml


def _run(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    monkeypatch.setattr(crm_cli, "console", console)
    result = runner.invoke(crm_app, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(console.export_text().split())


def test_crm_audit_audits_the_rows_train_trains_on(
    files: tuple[Path, Path], export: CrmExport, mapping: CrmMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = files
    shown: list[pd.DataFrame] = []
    monkeypatch.setattr(crm_cli, "_print_audit", lambda table, **_: shown.append(table))
    args = ["audit", "--export", str(csv), "--mapping", str(yml), "--threads", "1", "--seed", "3"]
    result = runner.invoke(crm_app, [*args, "--holdout-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    split = split_export(export, holdout_fraction=0.25, seed=3)  # what `crm train` with the same options uses
    expected = audit_export(export.frame, export.y, mapping, split, config=BoosterConfig(num_threads=1, seed=3), seed=3)
    (table,) = shown
    pd.testing.assert_frame_equal(table, expected.table)
    assert f"audited the {expected.rows:,} training and validation leads" in " ".join(result.output.split())


def test_crm_audit_prints_tiers_moments_and_what_dropping_review_columns_costs(
    files: tuple[Path, Path], audited: ExportAudit, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = files
    text = _run(monkeypatch, "audit", "--export", str(csv), "--mapping", str(yml), "--threads", "1")
    assert "no column looks recorded after the outcome" not in text
    assert "left out by declaration, known only at sales contact: Rep Rating" in text
    assert "Tags (left out of training): stage-like value 'Closed by rep'" in text
    assert "1 column(s) to review, kept in training" in text
    assert re.search(r"Call Minutes \(kept, to review\): ranks the classes well on its own \(single-column AUC "
                     r"0\.\d\d;.* dropping it costs 0\.\d{3} validation AUC", text), text  # fmt: skip
    assert "│ Call Minutes │ engagement │" in text and "used, review" in text and "left out (declared)" in text
    assert "each column dropped in turn" in text


def _table(tiers: dict[str, str]) -> pd.DataFrame:
    rows = [{"column": name, "role": "fit", "type": "number", "suspicion": 0.1, "flagged": tier == "leak",
             "kept": False, "reason": f"why {name}" if tier != "clean" else "", "auc": 0.6,
             "missing_rate_positive": 0.0, "missing_rate_negative": 0.0, "purest_value": None,
             "purest_value_row_share": math.nan, "purest_value_positive_rate": math.nan, "purest_value_class": None,
             "purest_value_class_share": math.nan, "known": "creation", "tier": tier, "gain_share": math.nan,
             "drop_one_auc_change": math.nan}
            for name, tier in tiers.items()]  # fmt: skip
    return pd.DataFrame(rows, columns=list(EXPORT_AUDIT_COLUMNS))


def _printed(monkeypatch: pytest.MonkeyPatch, table: pd.DataFrame) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    monkeypatch.setattr(crm_cli, "console", console)
    crm_cli._print_audit(table)
    return " ".join(console.export_text().split())


def test_all_clear_is_said_only_when_nothing_is_out_or_to_review(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no column looks recorded after the outcome" in _printed(monkeypatch, _table({"A": "clean"}))
    text = _printed(monkeypatch, _table({"A": "clean", "B": "review"}))
    assert "looks recorded after the outcome" not in text and "B (kept, to review): why B" in text
    declared = _printed(monkeypatch, _table({"A": "clean", "B": "declared"}))
    assert "besides the columns declared late, no column looks recorded after the outcome" in declared


def test_the_printer_still_reads_an_audit_leakage_table(
    export: CrmExport, mapping: CrmMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crm train` prints its audit_leakage table until it is rewired: flagged columns read as left out."""
    text = _printed(monkeypatch, audit_leakage(export.frame, export.y, mapping))
    assert "Tags (left out of training)" in text and "│ Total Time │ engagement number │" in text
