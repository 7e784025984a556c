"""Bring your own CRM export: strict loading, an out-of-time split, a model on the columns the audit keeps."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.export import (
    ColumnMapping,
    CrmError,
    CrmMapping,
    ExportBuilder,
    ExportEncoder,
    ExportError,
    ExportReasonLabeler,
    MappingError,
    parse_mapping,
)
from features.scoring import CutOffs, LeadScorer, ScoreScale
from training.config import CRM_EXPERIMENT as EXPERIMENT
from training.config import CRM_HOLDOUT_FRACTION as HOLDOUT_FRACTION
from training.config import CRM_MODEL_NAME, BoosterConfig
from training.crm_audit import audit_export, audit_leakage
from training.crm_checks import column_drift, export_warnings, split_summary
from training.crm_load import CrmExport, load_export, load_mapping, prepare_export, read_export
from training.crm_models import (
    BOOSTER,
    FittedBooster,
    ModelComparison,
    baseline_probabilities,
    compare_models,
    fit_export_booster,
)
from training.crm_split import ExportSplit, split_export
from training.metrics import binary_metrics, metric_name, to_mlflow_metrics
from training.quality import METADATA_KEY as QUALITY_METADATA_KEY
from training.quality import QUALITY_TAG

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput
    from mlflow.models import ModelSignature

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

# Bounds of the share of leads the default cut-offs make MQL (see _cutoffs), and the share of those made SQL.
MIN_MQL_SHARE = 0.05
MAX_MQL_SHARE = 0.5
SQL_SHARE_OF_MQL = 0.5


# ---- training ------------------------------------------------------------------------------------------------
def _importance(booster: lgb.Booster, builder: ExportBuilder) -> pd.DataFrame:
    gain = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    mappings = builder.column_mappings
    importance = pd.DataFrame(
        {
            "column": builder.columns_,
            "role": [mappings[c].role for c in builder.columns_],
            "type": [mappings[c].type for c in builder.columns_],
            "gain": gain,
            "gain_share": gain / gain.sum() if gain.sum() > 0 else np.zeros_like(gain),
        }
    )
    return importance.sort_values(["gain", "column"], ascending=[False, True], kind="stable", ignore_index=True)


def _outcome_model(
    export: CrmExport, mapping: CrmMapping, columns: list[str], split: ExportSplit, config: BoosterConfig
) -> tuple[ExportBuilder, FittedBooster]:
    """The outcome ("readiness") booster on `columns`, refit on training + validation rows (see fit_export_booster).

    The builder's category vocabularies come from the same rows the booster is refit on: a value that first
    appears in the validation period is a value, not "other".
    """
    fit_rows = np.sort(np.concatenate([split.train, split.valid]))
    builder = ExportBuilder(mapping=mapping, columns=columns).fit(export.frame.iloc[fit_rows])
    x = builder.transform(export.frame)
    fitted = fit_export_booster(
        x, export.y, split, feature_names=builder.feature_names_,
        categorical=builder.encoder_.categorical_features_, config=config,
    )  # fmt: skip
    return builder, fitted


@dataclass(frozen=True, slots=True)
class CrmTrainResult:
    """The servable scorer, its holdout metrics (with and without the flagged columns), and the audit behind it."""

    metrics_audited: dict[str, float]
    metrics_everything: dict[str, float]
    metrics_fit: dict[str, float]
    audit: pd.DataFrame  # training.crm_audit.ExportAudit.table
    excluded: tuple[str, ...]
    features: tuple[str, ...]
    importance: pd.DataFrame
    split: ExportSplit
    scorer: LeadScorer
    holdout: pd.DataFrame  # the holdout leads as routing reads them (threshold tuning replays them)
    example_rows: pd.DataFrame  # the typed holdout rows (the logged model's input example is drawn from them)
    quality_warnings: list[dict[str, str]]
    comparison: ModelComparison  # the model against its baselines, and whether it may be registered
    split_summary: pd.DataFrame
    drift: pd.DataFrame


def _holdout_frame(
    export: CrmExport, split: ExportSplit, scorer: LeadScorer, fit_p: NDArray[np.float64], ready_p: NDArray[np.float64]
) -> pd.DataFrame:
    """The holdout leads as routing reads them, from the probabilities training scored them with."""
    rows = split.holdout
    ids = export.ids.iloc[rows].fillna("").astype(str).to_numpy() if export.ids is not None else rows.astype(str)
    if export.dates is not None:
        as_of = pd.to_datetime(export.dates.iloc[rows].to_numpy(), utc=True)
    else:
        # No dates: the holdout is one moment; tuning reads its volumes as one week of leads.
        as_of = pd.DatetimeIndex([pd.Timestamp.now(tz="UTC").normalize()] * len(rows))
    return pd.DataFrame(
        {
            "lead_id": ids,
            "as_of": as_of,
            "label": export.y[rows].astype(np.float64),
            "fit_probability": fit_p,
            "fit_score": scorer.fit_scale.score(fit_p),
            "readiness_probability": ready_p,
            "readiness_score": scorer.readiness_scale.score(ready_p),
            "region": None,
            "size_band": None,
            "source": None,
        }
    )


def _cutoffs(holdout_probability: NDArray[np.float64], positive_rate: float) -> CutOffs:
    """Default stages: MQL for the share of leads that convert, SQL for the likeliest half of them.

    An export's outcome is the final conversion, at whatever rate the business converts (a third of leads for a
    course seller, a few percent for B2B software): a fixed share of leads would send most converters to nurture in
    the one and flood sales in the other. Sales ops tune them from there (leadscore thresholds).
    """
    mql_share = min(max(positive_rate, MIN_MQL_SHARE), MAX_MQL_SHARE)
    return CutOffs(
        readiness_mql=float(np.quantile(holdout_probability, 1.0 - mql_share)),
        readiness_sql=float(np.quantile(holdout_probability, 1.0 - mql_share * SQL_SHARE_OF_MQL)),
    )


def train_export(
    export: CrmExport,
    mapping: CrmMapping,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
    config: BoosterConfig | None = None,
) -> CrmTrainResult:
    """Audit the export, train a servable scorer on the columns that pass, and a model on every column, for contrast.

    The audit sees the training and validation leads only, so the choice of columns never peeks at the holdout.
    Columns known only after `known_by` and flagged columns are left out (flagged ones unless listed under `keep`).
    The scorer has the lead contract model's shape: a fit booster on the fit columns (who the lead is), an outcome
    ("readiness") booster on every kept column, both calibrated, with percentile scores and reasons per column.
    """
    config = config or BoosterConfig(seed=seed)
    split = split_export(export, holdout_fraction=holdout_fraction, seed=seed)
    # The audit reads the training and validation leads of this very split: `crm audit` shows the same evidence.
    audited = audit_export(export.frame, export.y, mapping, split, config=config, seed=seed)
    audit, excluded = audited.table, audited.excluded
    flagged = audit.loc[audit["flagged"].astype(bool)]
    for name, reason in flagged.loc[flagged["kept"].astype(bool), ["column", "reason"]].itertuples(index=False):
        log.warning("column %r is kept as the mapping asks, although the audit flags it: %s", name, reason)
    for name in audited.review:
        log.warning("column %r is used, but its evidence is worth a review (see the audit)", name)
    features = list(audited.features)
    seen = np.concatenate([split.train, split.valid])
    if not features:
        raise CrmError(
            f"the audit flags every fit and engagement column ({', '.join(excluded)}); list the ones recorded before "
            "the outcome under keep, or declare more columns"
        )
    fit_columns = [c for c in features if mapping.columns[c].role == "fit"]
    if not fit_columns:
        raise CrmError(
            "no fit column is left to grade leads by (who the lead is: source, country, occupation, ...); declare at "
            "least one column with role fit that is known at creation"
        )
    log.info("training on %d column(s); left out: %s", len(features), ", ".join(excluded) or "none")
    builder, ready = _outcome_model(export, mapping, features, split, config)
    x = builder.transform(export.frame)
    n_fit = len(builder.fit_feature_names_)
    fit_categorical = [c for c in builder.encoder_.categorical_features_ if c in builder.fit_feature_names_]
    fit = fit_export_booster(
        x[:, :n_fit], export.y, split, feature_names=builder.fit_feature_names_, categorical=fit_categorical,
        config=config,
    )  # fmt: skip
    _, everything = _outcome_model(export, mapping, list(mapping.features), split, config)
    y_holdout = export.y[split.holdout]
    columns = builder.column_mappings
    comparison = compare_models(
        y_holdout, ready.holdout_probability, baseline_probabilities(export.frame, export.y, split, columns)
    )
    summary = split_summary(export.y, split, export.dates if export.dates is not None else export.order)
    drift = column_drift(export.frame, split, columns)
    metrics = binary_metrics(y_holdout, ready.holdout_probability)
    warned = [w.as_dict() for w in export_warnings(summary, drift, metrics["ece"], comparison)]
    for warning in warned:
        log.warning("quality warning: %s", warning["message"])
    scorer = LeadScorer(
        builder=builder,
        fit_booster=fit.booster,
        readiness_booster=ready.booster,
        fit_calibrator=fit.calibrator,
        readiness_calibrator=ready.calibrator,
        fit_scale=ScoreScale.from_reference(fit.holdout_probability),
        readiness_scale=ScoreScale.from_reference(ready.holdout_probability),
        labeler=ExportReasonLabeler(builder),
        cutoffs=_cutoffs(ready.holdout_probability, float(export.y[seen].mean())),
        metadata={
            "model_kind": "crm-export",
            "outcome": mapping.outcome.column,
            "split": split.kind,
            "holdout_start": str(split.holdout_start or ""),
            "metrics": {"readiness": metrics, "fit": binary_metrics(y_holdout, fit.holdout_probability)},
            "rounds": {"readiness": ready.rounds, "fit": fit.rounds},
            QUALITY_METADATA_KEY: warned,
        },
    )
    return CrmTrainResult(
        metrics_audited=metrics,
        metrics_everything=binary_metrics(y_holdout, everything.holdout_probability),
        metrics_fit=binary_metrics(y_holdout, fit.holdout_probability),
        audit=audit,
        excluded=excluded,
        features=tuple(builder.columns_),
        importance=_importance(ready.booster, builder),
        split=split,
        scorer=scorer,
        holdout=_holdout_frame(export, split, scorer, fit.holdout_probability, ready.holdout_probability),
        example_rows=export.frame.iloc[split.holdout].reset_index(drop=True),
        quality_warnings=warned,
        comparison=comparison,
        split_summary=summary,
        drift=drift,
    )


def evaluate_on_export(
    export: CrmExport, mapping: CrmMapping, split: ExportSplit
) -> Callable[[LeadScorer, LeadScorer], tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]]:
    """The promotion gate's evaluation of two export models on the same holdout leads of `export`."""

    def metrics(scorer: LeadScorer) -> dict[str, dict[str, float]]:
        builder = scorer.builder
        if not isinstance(builder, ExportBuilder):
            raise CrmError("the champion is a lead contract model: an export model cannot be compared with it")
        frame = export.frame.iloc[split.holdout]
        for name, col in builder.column_mappings.items():
            if name not in frame.columns:
                raise CrmError(f"the model reads column {name!r}, which this export's mapping does not declare")
            declared = mapping.columns[name].type
            if declared != col.type:
                raise CrmError(f"the model reads column {name!r} as {col.type}; this mapping declares {declared}")
        fit_p, ready_p = scorer.probabilities(builder.transform(frame))
        y = export.y[split.holdout]
        return {"readiness": binary_metrics(y, ready_p), "fit": binary_metrics(y, fit_p)}

    return lambda new, old: (metrics(new), metrics(old))


# ---- MLflow --------------------------------------------------------------------------------------------------


def log_export_run(
    result: CrmTrainResult,
    *,
    mapping_path: Path,
    export_path: Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
    model_name: str | None = CRM_MODEL_NAME,
) -> LoggedExport:
    """Log one MLflow run (params, holdout metrics, the export as a dataset, audit and mapping as artifacts).

    Runs go where `training.tracking.configure_tracking` points: `tracking_uri`, $MLFLOW_TRACKING_URI, or the local
    SQLite store. The scorer is logged as a pyfunc model and registered under `model_name` as @challenger (None: not
    registered), for `leadscore crm promote` to pass through the gate.
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
        "order_column": result.split.order_column or "",
        "holdout_start_order": "" if result.split.holdout_start_order is None else result.split.holdout_start_order,
        "rounds_readiness": result.scorer.metadata["rounds"]["readiness"],
        "rounds_fit": result.scorer.metadata["rounds"]["fit"],
        "registration": result.comparison.reason,
    }
    metrics = to_mlflow_metrics(result.metrics_audited, None)
    for key in ("roc_auc", "pr_auc"):
        value = result.metrics_everything[key]
        if not math.isnan(value):
            metrics[f"{metric_name(key)}_everything"] = value
    for row in result.comparison.table.itertuples(index=False):
        if row.model == BOOSTER:
            continue
        for key in ("roc_auc", "pr_auc", "log_loss", "ece"):
            value = float(getattr(row, key))
            if math.isfinite(value):
                metrics[f"{metric_name(key)}_{row.model}"] = value
    for row in result.split_summary.itertuples(index=False):
        metrics[f"positive_rate_{row.split}"] = float(str(row.positive_rate))
    if len(result.drift):
        metrics["psi_max_holdout"] = float(result.drift["psi"].max())
    metrics["quality_warnings"] = float(len(result.quality_warnings))
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name="crm-export") as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.set_tags({"leadscore.kind": "crm-export", "leadscore.split": result.split.kind,
                         QUALITY_TAG: json.dumps(result.quality_warnings)})  # fmt: skip
        # MLflow caps a param value at 6000 characters; a long column list is cut rather than failing the run.
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        if export_path is not None:
            MlflowClient().log_inputs(run.info.run_id, datasets=[_export_input(result, export_path, mapping_path)])
        out = Path(tmp)
        result.audit.to_csv(out / "leakage_audit.csv", index=False)
        result.importance.to_csv(out / "feature_importance.csv", index=False)
        result.comparison.table.to_csv(out / "baselines.csv", index=False)
        result.split_summary.to_csv(out / "split_summary.csv", index=False)
        result.drift.to_csv(out / "column_drift.csv", index=False)
        (out / "model_card.md").write_text(export_model_card(result))
        shutil.copyfile(mapping_path, out / mapping_path.name)
        holdout_dir = out / "holdout"
        holdout_dir.mkdir()
        # What threshold tuning replays (the same artifact as the lead contract model's).
        result.holdout.to_parquet(holdout_dir / "readiness_scores.parquet", index=False)
        mlflow.log_artifacts(str(out))
        run_id = str(run.info.run_id)
        version = None
        # The registration rule (training.crm_models.compare_models): never knowingly register a model that a
        # baseline (Odoo's naive Bayes first) ranks the holdout better than, beyond noise.
        if model_name is not None and result.comparison.register:
            version = _log_model(result, out, model_name, run_id)
    log.info("logged run %s in experiment %r at %s", run_id, experiment, uri)
    return LoggedExport(run_id, version, model_name)


def _markdown(frame: pd.DataFrame) -> str:
    """A table as Markdown, figures to three decimals."""
    shown = frame.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)
    return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in shown.to_numpy().tolist())])


def export_model_card(result: CrmTrainResult) -> str:
    """The model card of an export model: its data, what it leaves out, how it compares, and what to watch."""
    builder = result.scorer.builder
    assert isinstance(builder, ExportBuilder)
    mapping = builder.mapping
    declared = ", ".join(mapping.declared_late) or "none"
    audited = ", ".join(c for c in result.excluded if c not in mapping.declared_late) or "none"
    warnings = "\n".join(f"- {w['message']}" for w in result.quality_warnings) or "none"
    lines = [
        f"# CRM export model: {mapping.outcome.column} in {mapping.outcome.positive}",
        "",
        f"{result.split.note}",
        "",
        "## Data by split",
        "",
        _markdown(result.split_summary),
        "",
        "## Columns",
        "",
        f"- used ({len(result.features)}): {', '.join(result.features)}",
        f"- left out by declaration (known after {mapping.known_by}): {declared}",
        f"- left out by the leakage audit: {audited}",
        "",
        "## Holdout: the model against its baselines",
        "",
        _markdown(result.comparison.table),
        "",
        f"Registration: {result.comparison.reason}",
        "",
        "## Quality warnings",
        "",
        warnings,
        "",
        "## Largest column drift (training vs holdout, population stability index)",
        "",
        _markdown(result.drift.head(10)),
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LoggedExport:
    """The MLflow run of an export's training, and the model version it registered (None: not registered)."""

    run_id: str
    version: str | None
    model_name: str | None


def export_signature(builder: ExportBuilder) -> ModelSignature:
    """Pyfunc signature of an export model: one row per lead, its id and the export's own columns."""
    from mlflow.models import ModelSignature  # noqa: PLC0415
    from mlflow.types import ColSpec, Schema  # noqa: PLC0415

    kinds = {"category": "string", "number": "double", "boolean": "boolean"}
    inputs = [ColSpec("string", "lead_id")]
    inputs += [ColSpec(kinds[str(c.type)], name, required=False) for name, c in builder.column_mappings.items()]
    inputs += [ColSpec("string", "as_of", required=False)]
    outputs = [ColSpec("string", "lead_id")]
    outputs += [ColSpec("double", n) for n in ("fit_probability", "fit_score")]
    outputs += [ColSpec("string", "fit_grade")]
    outputs += [ColSpec("double", n) for n in ("readiness_probability", "readiness_score")]
    outputs += [ColSpec("string", n, required=False) for n in ("readiness_stage",)]
    outputs += [ColSpec("string", n) for n in ("lifecycle_stage", "reasons")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))  # type: ignore[arg-type]


def export_example(result: CrmTrainResult) -> pd.DataFrame:
    """Two holdout leads as the pyfunc takes them: the likeliest and the least likely to convert."""
    builder = result.scorer.builder
    assert isinstance(builder, ExportBuilder)
    holdout = result.holdout.sort_values("readiness_probability", kind="stable")
    rows = [int(holdout.index[-1]), int(holdout.index[0])]
    frame = result.example_rows.iloc[rows]
    out = pd.DataFrame({"lead_id": holdout["lead_id"].iloc[[-1, 0]].to_numpy()})
    for name, col in builder.column_mappings.items():
        values = frame[name].to_numpy(dtype=object)
        if col.type == "boolean":
            out[name] = [None if pd.isna(v) else bool(v) for v in values]
        elif col.type == "number":
            out[name] = [None if pd.isna(v) else float(v) for v in values]
        else:
            out[name] = [None if pd.isna(v) else str(v) for v in values]
    return out


def _log_model(result: CrmTrainResult, out: Path, model_name: str, run_id: str) -> str:
    """Log the scorer as the same pyfunc as the lead contract model's, register it and point @challenger at it."""
    import joblib  # noqa: PLC0415
    import mlflow  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415

    from training.config import CHALLENGER  # noqa: PLC0415
    from training.tracking import MODEL_CODE, model_requirements  # noqa: PLC0415

    builder = result.scorer.builder
    assert isinstance(builder, ExportBuilder)
    scorer_path = out / "scorer.joblib"
    joblib.dump(result.scorer, scorer_path)
    info = mlflow.pyfunc.log_model(
        name="lead-scorer",
        python_model=str(MODEL_CODE),
        artifacts={"scorer": str(scorer_path)},
        signature=export_signature(builder),
        input_example=export_example(result),
        registered_model_name=model_name,
        pip_requirements=model_requirements(),
        metadata={"leadscore": {"kind": "crm-export", "outcome": builder.mapping.outcome.column}},
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    client.set_model_version_tag(model_name, version, "leadscore.run_id", run_id)
    client.set_model_version_tag(model_name, version, "leadscore.kind", "crm-export")
    client.set_model_version_tag(model_name, version, QUALITY_TAG, json.dumps(result.quality_warnings))
    log.info("registered %s version %s as @%s", model_name, version, CHALLENGER)
    return version


def _export_input(result: CrmTrainResult, export_path: Path, mapping_path: Path) -> DatasetInput:
    """The export as the user gave it (every cell as text, as `load_export` reads it), logged in the training context.

    Training, validation and holdout leads are all drawn from it; a tag on the input says how many of each.
    """
    from training.tracking import dataset_input  # noqa: PLC0415

    raw = read_export(export_path, load_mapping(mapping_path))
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
