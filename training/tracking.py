"""MLflow: where runs go, logging a trained scorer with its evidence and baselines, the registry and its aliases."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import joblib
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from sklearn.metrics import roc_auc_score

from features.builder import FeatureBuilder, open_at
from features.scoring import LeadScorer
from features.spec import DEFAULT_CONTRACT, LeadContract
from training import plots
from training.config import CHALLENGER, DEFAULT_EXPERIMENT, MODEL_NAME, TrainConfig
from training.dataset import TrainingSet
from training.evaluation import join_oracle
from training.metrics import to_mlflow_metrics
from training.model_card import write_model_card
from training.models import TimeSplit
from training.pipeline import BASELINES, SEGMENTS, TaskResult, TrainResult
from training.quality import METADATA_KEY, QUALITY_TAG, QualityWarning, quality_warnings

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
MODEL_CODE = Path(__file__).with_name("lead_scorer_model.py")
# Packages the logged model needs at load time (pinned to the versions it was trained with).
MODEL_REQUIREMENTS = ("mlflow", "lightgbm", "numba", "numpy", "pandas", "scikit-learn", "joblib", "pandera", "pydantic")
MODEL_RUN_NAME = "lead-scorer"
MODEL_RUN_TAGS: Mapping[str, str] = {"leadscore.kind": "model", "leadscore.model": MODEL_NAME}
# A logged dataset's schema is read from its first rows: MLflow's PandasDataset infers it from every row, which takes
# minutes at 2.5 M snapshots (about 0.1 s per column per 250,000 rows).
DATASET_SCHEMA_ROWS = 1000
# Hex digits of a dataset digest: MLflow's own have 8; 16 keep two different training sets from ever sharing one.
DIGEST_CHARS = 16
SPLIT_CONTEXTS: tuple[str, ...] = ("training", "validation", "holdout")
BASELINE_TITLES: Mapping[str, str] = {
    "model": "leadscore LightGBM (calibrated)",
    "odoo_naive_bayes": "Odoo naive Bayes",
    "point_rules": "point rules",
    "logistic_regression": "logistic regression",
}


def configure_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow at `tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite store in the working directory.

    The registry follows: an explicit `tracking_uri` holds the registry too; otherwise $MLFLOW_REGISTRY_URI may
    name a separate one. (MLflow's setters also write these variables, so trusting them after an explicit URI
    would let a previous store's registry leak in.)
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"
    mlflow.set_tracking_uri(uri)
    registry = uri if tracking_uri else os.environ.get("MLFLOW_REGISTRY_URI") or uri
    mlflow.set_registry_uri(registry)
    return uri


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created on first use (a SQLite store keeps artifacts in mlartifacts/ beside it).

    Under `mlflow run` the run already exists ($MLFLOW_RUN_ID): its experiment is used, whatever `name` says.
    """
    active = os.environ.get("MLFLOW_RUN_ID")
    if active:
        return str(MlflowClient().get_run(active).info.experiment_id)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        # Artifacts live beside the database file, so one folder holds the whole local store.
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / DEFAULT_ARTIFACTS).as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


@contextmanager
def training_run(experiment: str = DEFAULT_EXPERIMENT) -> Iterator[str]:
    """The model run of a whole training job, opened before its data are loaded and closed after logging.

    Open it at the start of the job and call `log_training` inside it: the run's start and duration in MLflow are
    then the job's (loading, snapshots, training, evaluation, logging), not the few seconds of logging. The run ends
    FINISHED, or FAILED when the job raises. Under `mlflow run` the project's run is used.
    """
    with mlflow.start_run(
        experiment_id=ensure_experiment(experiment), run_name=MODEL_RUN_NAME, tags=dict(MODEL_RUN_TAGS)
    ) as run:
        yield str(run.info.run_id)


def frame_digest(frame: pd.DataFrame) -> str:
    """A digest of every cell and column name of `frame`, in order (MLflow's own reads only the first 10,000 rows)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update("\x1f".join(str(c) for c in frame.columns).encode())
    return digest.hexdigest()[:DIGEST_CHARS]


def dataset_input(
    frame: pd.DataFrame,
    *,
    name: str,
    context: str,
    source: str | None,
    targets: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> DatasetInput:
    """`frame` as an MLflow run input: name, digest of every row, schema, row count, source, context and `tags`.

    `source` is where the rows came from (a folder or a file); None records the code that built them. Shaped as
    `mlflow.data.from_pandas` shapes a dataset, with the schema read from the first DATASET_SCHEMA_ROWS rows.
    """
    with warnings.catch_warnings():
        # Both warnings are about MLflow, not the data: its local-file source is registered twice, so any path "can be
        # interpreted in multiple ways" (both are the same class), and its hint about integer columns is meant for
        # model signatures, where a missing value can arrive at inference time; a logged dataset has no such time.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
        head, digest = frame.head(DATASET_SCHEMA_ROWS), frame_digest(frame)
        if source is None:  # from_pandas then records the code that runs (script, git commit) as the source
            sample = from_pandas(head, targets=targets, name=name, digest=digest)
        else:
            sample = from_pandas(head, source=source, targets=targets, name=name, digest=digest)
        described = sample.to_dict()
    described["profile"] = json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)})
    input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, v) for k, v in (tags or {}).items())]
    return DatasetInput(Dataset(**described), tags=input_tags)


def split_inputs(frame: pd.DataFrame, split: TimeSplit, *, task: str, source: str | None) -> list[DatasetInput]:
    """The training, validation and holdout rows of one model's training set, each a named dataset in its context."""
    masks = (split.train, split.valid, split.holdout)
    return [
        dataset_input(frame.loc[mask], name=f"{task}-{context}", context=context, source=source, targets="label")
        for context, mask in zip(SPLIT_CONTEXTS, masks, strict=True)
    ]


def model_signature(contract: LeadContract = DEFAULT_CONTRACT) -> ModelSignature:
    """Pyfunc signature: one row per lead, its contract columns plus as_of and JSON activities/colleagues."""
    inputs: list[ColSpec | TensorSpec] = []
    for col in contract.leads_table.columns:
        kind = "double" if col.dtype in ("int", "float") else "string"
        inputs.append(ColSpec(kind, col.name, required=col.name == "lead_id"))
    inputs += [ColSpec("string", name, required=False) for name in ("as_of", "activities", "colleagues")]
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", "lead_id")]
    outputs += [ColSpec("double", n) for n in ("fit_probability", "fit_score")]
    outputs += [ColSpec("string", "fit_grade")]
    outputs += [ColSpec("double", n) for n in ("readiness_probability", "readiness_score")]
    outputs += [ColSpec("string", n, required=False) for n in ("readiness_stage",)]
    outputs += [ColSpec("string", n) for n in ("lifecycle_stage", "reasons")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(
    leads: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp, contract: LeadContract = DEFAULT_CONTRACT
) -> pd.DataFrame:
    """Two real open leads as the pyfunc takes them: the most active before as_of, and one with no touches.

    Open: at stage lead, MQL, SAL or recycled at as_of, the leads readiness speaks of (not one already won).
    """
    known = leads[open_at(leads, as_of)]
    before = activities[(activities["occurred_at"] < as_of) & activities["lead_id"].isin(known["lead_id"])]
    counts = before["lead_id"].value_counts()
    quiet = known.loc[~known["lead_id"].isin(counts.index), "lead_id"]
    chosen = [str(counts.index[0])] if len(counts) else []
    chosen += [str(quiet.iloc[0])] if len(quiet) else []
    rows = []
    for lead_id in chosen:
        lead = leads.loc[leads["lead_id"] == lead_id].iloc[0]
        row: dict[str, Any] = {}
        for col in contract.leads_table.columns:
            value = lead[col.name]
            if pd.isna(value):
                row[col.name] = None
            elif col.dtype == "datetime":
                row[col.name] = value.isoformat() if value < as_of else None  # the future is not known yet
            elif col.dtype in ("int", "float"):
                row[col.name] = float(value)
            else:
                row[col.name] = str(value)
        touches = before[before["lead_id"] == lead_id].tail(20)
        row["as_of"] = as_of.isoformat()
        row["activities"] = json.dumps(
            [{"occurred_at": t.isoformat(), "activity_type": str(k)} for t, k in
             zip(touches["occurred_at"], touches["activity_type"], strict=True)]
        )  # fmt: skip
        row["colleagues"] = "[]"
        rows.append(row)
    return pd.DataFrame(rows)


def _task_metrics(task: TaskResult, scorer_name: str) -> dict[str, float]:
    return to_mlflow_metrics(
        task.metrics[scorer_name], task.segments[scorer_name], prefix=f"{task.task}_", split="holdout"
    )


def _write_plots(result: TrainResult, out: Path, feature_names: list[str], fit_features: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for task in (result.readiness, result.fit):
        curves = {
            BASELINE_TITLES[s]: (task.holdout["label"].to_numpy(), task.holdout[s].to_numpy())
            for s in ("model", *BASELINES)
        }
        what = "readiness (SQL within the horizon)" if task.task == "readiness" else "ICP fit (won)"
        plots.plot_roc(curves, out / f"{task.task}_roc.png", title=f"ROC, {what}, out-of-time holdout")
        plots.plot_precision_recall(curves, out / f"{task.task}_pr.png", title=f"Precision-recall, {what}")
        plots.plot_calibration(curves, out / f"{task.task}_calibration.png", title=f"Calibration, {what}")
        plots.plot_calibration(
            curves, out / f"{task.task}_calibration_log.png", title=f"Calibration, {what}, log scale", scale="log"
        )
        plots.plot_cumulative_gains(curves, out / f"{task.task}_gains.png", title=f"Cumulative gains, {what}")
    plots.plot_shap_summary(
        result.shap_values, result.shap_features, feature_names, out / "readiness_shap_summary.png",
        title="What drives readiness (TreeSHAP, holdout sample)",
    )  # fmt: skip
    plots.plot_shap_summary(
        result.fit_shap_values[:, : len(fit_features)], result.fit_shap_features, fit_features,
        out / "fit_shap_summary.png", title="What drives ICP fit (TreeSHAP, holdout sample)",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoggedModel:
    """Where a training run went."""

    run_id: str
    version: str
    model_uri: str
    experiment_id: str
    quality_warnings: tuple[QualityWarning, ...] = ()


def log_training(
    result: TrainResult,
    training_set: TrainingSet,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    config: TrainConfig,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    data_dir: Path | None = None,
    oracle: pd.DataFrame | None = None,
    n_activities: int | None = None,
) -> LoggedModel:
    """Log the model run and register the model as @challenger; baselines (and the oracle) get runs beside it.

    The model run holds params, metrics, the training, validation and holdout rows of both models as datasets,
    plots, holdout scores, the model card and the pyfunc model. It is the active run when there is one (the job's
    `training_run`, whose experiment then wins over `experiment`), else a run opened here, which then only lasts as
    long as the logging.

    The quality warnings (training.quality) go into the scorer's metadata, which the service reports, and into a tag
    of the run and of the model version, which `leadscore promote` reads.
    """
    client = MlflowClient()
    builder = training_set.builder
    warned = quality_warnings(result)
    warnings_json = json.dumps([w.as_dict() for w in warned])
    result.scorer.metadata[METADATA_KEY] = [w.as_dict() for w in warned]
    active = mlflow.active_run()
    with (
        nullcontext(str(active.info.run_id)) if active else training_run(experiment) as run_id,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp)
        experiment_id = str(client.get_run(run_id).info.experiment_id)
        mlflow.set_tags({**MODEL_RUN_TAGS, QUALITY_TAG: warnings_json})
        params: dict[str, object] = {
            **config.as_params(),
            **{f"snapshots.{k}": v for k, v in asdict(training_set.snapshot_config).items()},
            **{f"features.{k}": v for k, v in asdict(builder.config_).items()},
            "data_dir": str(data_dir.resolve()) if data_dir else "",
            "data_end": str(training_set.data_end),
            "readiness_holdout_start": str(result.readiness.split.holdout_start),
            "fit_holdout_start": str(result.fit.split.holdout_start),
            "n_leads": len(leads),
            # A training set built on a cluster hands over a sample of touches (for the input example) and their count.
            "n_activities": len(activities) if n_activities is None else n_activities,
            "n_features": len(builder.feature_names_),
        }
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        source = str(data_dir.resolve()) if data_dir else None
        inputs = split_inputs(training_set.readiness, result.readiness.split, task="readiness", source=source)
        inputs += split_inputs(training_set.fit, result.fit.split, task="fit", source=source)
        client.log_inputs(run_id, datasets=inputs)
        metrics = {**_task_metrics(result.readiness, "model"), **_task_metrics(result.fit, "model")}
        metrics["readiness_best_iteration"] = result.readiness.best_iteration
        metrics["fit_best_iteration"] = result.fit.best_iteration
        for task in (result.readiness, result.fit):
            for kind, loss in task.calibration_losses.items():
                metrics[f"{task.task}_calibration_{kind}_log_loss_valid"] = loss
        if result.readiness.unconstrained_roc_auc is not None:
            metrics["readiness_roc_auc_holdout_unconstrained"] = result.readiness.unconstrained_roc_auc
        oracle_metrics = oracle_comparison(result.readiness, oracle) if oracle is not None else {}
        metrics.update(oracle_metrics)
        mlflow.log_metrics(metrics)

        _write_plots(result, out / "plots", builder.feature_names_, builder.fit_feature_names_)
        holdout_dir = out / "holdout"
        holdout_dir.mkdir()
        result.readiness.holdout.to_parquet(holdout_dir / "readiness_scores.parquet", index=False)
        result.fit.holdout.to_parquet(holdout_dir / "fit_scores.parquet", index=False)
        for task in (result.readiness, result.fit):
            frames = [seg.assign(scorer=name) for name, seg in task.segments.items()]
            pd.concat(frames).to_csv(out / f"{task.task}_segment_metrics.csv", index=False)
        write_model_card(
            result, training_set, out / "model_card.md", oracle_metrics=oracle_metrics, quality_warnings=warned
        )
        (out / "feature_spec.json").write_text(json.dumps(feature_spec(result.scorer), indent=2))
        mlflow.log_artifacts(str(out))

        scorer_path = out / "scorer.joblib"
        joblib.dump(result.scorer, scorer_path)
        example_at = pd.Timestamp(result.readiness.holdout["as_of"].max())
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(MODEL_CODE),
            artifacts={"scorer": str(scorer_path)},
            signature=model_signature(builder.contract),
            input_example=input_example(leads, activities, example_at, builder.contract),
            registered_model_name=MODEL_NAME,
            pip_requirements=model_requirements(),
            metadata={"leadscore": {"data_end": str(training_set.data_end)}},
        )
        version = str(info.registered_model_version)
        client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
        client.set_model_version_tag(MODEL_NAME, version, "leadscore.run_id", run_id)
        client.set_model_version_tag(MODEL_NAME, version, QUALITY_TAG, warnings_json)

        for name in BASELINES:
            _log_side_run(client, experiment_id, f"baseline: {BASELINE_TITLES[name]}", "baseline", run_id,
                          {**_task_metrics(result.readiness, name), **_task_metrics(result.fit, name)})  # fmt: skip
        if oracle_metrics:
            oracle_run = {"readiness_roc_auc_holdout": oracle_metrics["readiness_oracle_roc_auc_holdout"]}
            _log_side_run(client, experiment_id, "oracle: simulator truth", "oracle", run_id, oracle_run)
    log.info("logged run %s, registered %s version %s as @%s", run_id, MODEL_NAME, version, CHALLENGER)
    return LoggedModel(run_id=run_id, version=version, model_uri=f"models:/{MODEL_NAME}/{version}",
                       experiment_id=experiment_id, quality_warnings=tuple(warned))  # fmt: skip


def _log_side_run(
    client: MlflowClient, experiment_id: str, name: str, kind: str, model_run: str, metrics: Mapping[str, float]
) -> None:
    """A baseline or oracle run beside the model run (client API: never disturbs an active run of `mlflow run`)."""
    tags = {"leadscore.kind": kind, "leadscore.model_run": model_run}
    side = client.create_run(experiment_id, run_name=name, tags=tags)
    for key, value in metrics.items():
        client.log_metric(side.info.run_id, key, float(value))
    client.set_terminated(side.info.run_id)


def model_requirements() -> list[str]:
    """Pip requirements of a logged model, pinned to the versions it was trained with."""
    pins = []
    for package in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def oracle_comparison(readiness: TaskResult, oracle: pd.DataFrame) -> dict[str, float]:
    """Model vs the simulator's true probabilities on the holdout snapshots the oracle covers."""
    joined = join_oracle(readiness.holdout, oracle)
    if joined["label"].nunique() < 2:
        return {}
    oracle_auc = float(roc_auc_score(joined["label"], joined["p_ready"]))
    model_auc = float(roc_auc_score(joined["label"], joined["model"]))
    return {
        "readiness_oracle_roc_auc_holdout": oracle_auc,
        "readiness_roc_auc_holdout_oracle_rows": model_auc,
        "readiness_auc_share_of_oracle_holdout": model_auc / oracle_auc,
        "readiness_oracle_rows_holdout": float(len(joined)),
    }


def feature_spec(scorer: LeadScorer) -> dict[str, Any]:
    """What the model reads, for humans and for the service's model info."""
    builder = scorer.builder
    if not isinstance(builder, FeatureBuilder):
        raise TypeError("feature_spec describes lead contract models; an export model's columns are its mapping's")
    return {
        "fit_features": builder.fit_feature_names_,
        "engagement_features": builder.engagement_feature_names_,
        "categorical_features": builder.categorical_features_,
        "vocabularies": builder.fit_encoder_.vocabularies_,
        "feature_config": {k: v if not isinstance(v, Mapping) else dict(v) for k, v in asdict(builder.config_).items()},
        "segments": list(SEGMENTS),
    }


# ---- registry -------------------------------------------------------------------------------------------------


def version_by_alias(client: MlflowClient, alias: str, name: str = MODEL_NAME) -> ModelVersion | None:
    """The model version an alias points at, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def load_scorer(model_uri: str) -> LeadScorer:
    """The LeadScorer inside a logged lead-scorer model."""
    model = mlflow.pyfunc.load_model(model_uri)
    scorer: LeadScorer = model.unwrap_python_model().scorer
    return scorer
