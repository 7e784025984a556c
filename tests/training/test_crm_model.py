"""An export's servable model: the same answers from raw request values as from training's typed rows, reasons in the
export's own words, and a registered pyfunc model that answers like the scorer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from features.builder import RequestLead
from features.export import CrmMapping, ExportBuilder, ExportError
from tests.training.test_crm import FAST, mapping_dict, synthetic_export
from training.crm import CrmExport, CrmTrainResult, log_export_run, parse_mapping, prepare_export, train_export

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def trained(export: CrmExport, mapping: CrmMapping) -> CrmTrainResult:
    return train_export(export, mapping, config=FAST)


@pytest.fixture(scope="module")
def export(mapping: CrmMapping) -> CrmExport:
    return prepare_export(synthetic_export(), mapping)


@pytest.fixture(scope="module")
def mapping() -> CrmMapping:
    return parse_mapping(mapping_dict())


def _request(record: dict[str, object]) -> RequestLead:
    return RequestLead(lead=record, colleagues=[], touch_lead_ids=[], touch_times=[], touch_types=[], as_of=NOW)


def _raw_holdout(trained: CrmTrainResult) -> list[dict[str, object]]:
    """The holdout leads as the CSV holds them: every cell text, as a CRM would send them."""
    raw = synthetic_export().iloc[trained.split.holdout]
    return [{"lead_id": r["Prospect ID"], **{c: r[c] for c in trained.features}} for r in raw.to_dict("records")]


def test_a_lead_sent_as_raw_values_scores_exactly_as_in_training(trained: CrmTrainResult) -> None:
    # One typing and encoding path: the request's text cells give the very probabilities the holdout was measured on.
    scores = trained.scorer.score_requests([_request(r) for r in _raw_holdout(trained)])
    served = np.array([s.readiness_probability for s in scores])
    np.testing.assert_allclose(served, trained.holdout["readiness_probability"].to_numpy(), rtol=0, atol=1e-12)
    fit = np.array([s.fit_probability for s in scores])
    np.testing.assert_allclose(fit, trained.holdout["fit_probability"].to_numpy(), rtol=0, atol=1e-12)


def test_json_values_mean_what_the_exports_text_means(trained: CrmTrainResult) -> None:
    record = _raw_holdout(trained)[0]
    as_json: dict[str, object] = dict(record)
    as_json["Total Time"] = float(str(record["Total Time"]))
    as_json["Do Not Email"] = str(record["Do Not Email"]).lower() == "yes"
    as_json["Lead Source"] = f"  {str(record['Lead Source']).upper()} "
    a, b = trained.scorer.score_requests([_request(record), _request(as_json)])
    assert a.readiness_probability == b.readiness_probability and a.fit_probability == b.fit_probability


def test_reasons_are_phrased_from_the_exports_columns(trained: CrmTrainResult) -> None:
    record = {"lead_id": "x", "Lead Source": "Referral", "Do Not Email": "No", "Total Time": "1200"}
    (score,) = trained.scorer.score_requests([_request(record)])
    labels = [r.label for r in (*score.fit_reasons, *score.behaviour_reasons)]
    assert "Total Time: 1,200" in labels, labels
    assert any(label.startswith("Lead Source: ") for label in labels), labels
    assert all(r.group in trained.features for r in (*score.fit_reasons, *score.behaviour_reasons))
    assert score.lifecycle_stage == "lead"


def test_a_value_that_does_not_fit_its_column_is_refused_by_name(trained: CrmTrainResult) -> None:
    builder = trained.scorer.builder
    assert isinstance(builder, ExportBuilder)
    with pytest.raises(ExportError, match=r"'Total Time' \(number\).*'lots'"):
        builder.records_frame([{"lead_id": "x", "Total Time": "lots"}])
    with pytest.raises(ExportError, match=r"'Do Not Email' \(boolean\).*'maybe'"):
        builder.records_frame([{"lead_id": "x", "Do Not Email": "maybe"}])


def test_leaky_and_late_columns_never_reach_the_served_model(trained: CrmTrainResult) -> None:
    assert {"Tags", "Deal Size", "Rep Score"} <= set(trained.excluded)
    assert not {"Tags", "Deal Size", "Rep Score"} & set(trained.features)


@pytest.mark.integration
def test_the_registered_model_answers_like_the_scorer(
    trained: CrmTrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, yml = tmp_path / "export.csv", tmp_path / "mapping.yaml"
    synthetic_export().to_csv(csv, index=False)
    yml.write_text(json.dumps(mapping_dict()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        logged = log_export_run(trained, mapping_path=yml, export_path=csv, tracking_uri=uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = client.get_model_version_by_alias("crm-lead-scorer", "challenger")
        assert str(version.version) == logged.version and version.run_id == logged.run_id
        model = mlflow.pyfunc.load_model(f"models:/crm-lead-scorer/{logged.version}")
        rows = pd.DataFrame(_raw_holdout(trained)[:20])
        rows["Total Time"] = rows["Total Time"].astype(float)
        rows["Do Not Email"] = rows["Do Not Email"].str.lower().eq("yes")
        answer = model.predict(rows)
    finally:
        mlflow.set_tracking_uri(None)
    expected = trained.holdout["readiness_probability"].to_numpy()[:20]
    np.testing.assert_allclose(answer["readiness_probability"].to_numpy(), expected, rtol=0, atol=1e-12)
    reasons = json.loads(answer["reasons"].iloc[0])
    assert {r["group"] for r in reasons} <= set(trained.features)
