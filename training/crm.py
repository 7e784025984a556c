"""Bring your own CRM export: strict loading, an out-of-time split, a model on the columns the audit keeps."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.export import (
    ColumnMapping,
    CrmError,
    CrmMapping,
    ExportEncoder,
    ExportError,
    MappingError,
    parse_mapping,
)
from training.config import CRM_EXPERIMENT as EXPERIMENT
from training.config import CRM_HOLDOUT_FRACTION as HOLDOUT_FRACTION
from training.config import BoosterConfig
from training.crm_audit import audit_leakage
from training.crm_load import CrmExport, load_export, load_mapping, prepare_export
from training.crm_split import ExportSplit, split_export
from training.metrics import binary_metrics, metric_name, to_mlflow_metrics
from training.models import fit_calibrator, train_booster

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

__all__ = [
    "ColumnMapping",
    "CrmError",
    "CrmExport",
    "CrmMapping",
    "CrmTrainResult",
    "ExportEncoder",
    "ExportError",
    "MappingError",
    "audit_leakage",
    "load_export",
    "load_mapping",
    "log_export_run",
    "parse_mapping",
    "prepare_export",
    "split_export",
    "train_export",
]

log = logging.getLogger(__name__)


# ---- training ------------------------------------------------------------------------------------------------
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
