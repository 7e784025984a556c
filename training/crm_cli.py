"""The `leadscore crm` commands: audit a flat CRM export for leakage, and train and evaluate a scorer on it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from training.cli_shared import (
    AcceptWarningsOption,
    AucToleranceOption,
    EceToleranceOption,
    TrackingOption,
    report_decision,
)
from training.config import CRM_EXPERIMENT, CRM_HOLDOUT_FRACTION, CRM_MODEL_NAME, BoosterConfig
from training.exits import EXIT_BAD_DATA, EXIT_GATE_REFUSED, EXIT_MISSING_INPUT

if TYPE_CHECKING:
    import pandas as pd

    from training.crm import CrmExport, CrmMapping, CrmTrainResult

crm_app = typer.Typer(
    help="Bring your own CRM export (one row per lead): audit it for leakage, then train and evaluate a scorer on it.",
    no_args_is_help=True,
)
console = Console()

# Defaults shown in --help come from the booster config itself (one home for each value).
_BOOSTER = BoosterConfig()
# The importance table shows this many columns: the ones a reader acts on; the full table is in the MLflow run.
TOP_IMPORTANCE = 15
# The drift table shows the columns that moved most; the full table is in the MLflow run (column_drift.csv).
TOP_DRIFT = 5

ExportOption = Annotated[Path, typer.Option(help="The CRM export: a CSV file with one row per lead.")]
MappingOption = Annotated[Path, typer.Option(help="YAML mapping of the export's columns (see examples/).")]


@crm_app.callback()
def main() -> None:
    """Audit and train on a flat CRM export described by a YAML mapping."""
    # Mounted under `leadscore`, logging is already set up (with its --verbose); run on its own, it is not.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(message)s",
            handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        )


def _load(export: Path, mapping: Path) -> tuple[CrmExport, CrmMapping]:
    from training.crm import CrmError, load_export, load_mapping

    for path, what in ((mapping, "mapping"), (export, "CRM export")):
        if not path.is_file():
            console.print(f"[red]missing input:[/red] no {what} at {path}")
            raise typer.Exit(EXIT_MISSING_INPUT)
    try:
        crm_mapping = load_mapping(mapping)
        return load_export(export, crm_mapping), crm_mapping
    except CrmError as err:
        console.print(f"[red]cannot use this export:[/red]\n{err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from err


def _figure(value: object, spec: str = ".0%") -> str:
    """A number formatted by `spec` (a whole percentage by default); blank when there is none (None or NaN)."""
    if not isinstance(value, int | float) or math.isnan(value):
        return ""
    return format(value, spec)


def _text(value: object) -> str:
    """A value as text; blank when there is none (None, NaN or NaT)."""
    import pandas as pd

    missing = value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
    return "" if missing else str(value)


def _print_export(loaded: CrmExport, crm_mapping: CrmMapping) -> None:
    table = Table(title=f"CRM export {loaded.source}", show_header=False)
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("leads", f"{len(loaded.y):,}")
    table.add_row("positive rate", f"{loaded.y.mean():.1%}")
    table.add_row("rows dropped (no outcome)", f"{loaded.dropped_outcome_rows:,}")
    ignored = [name for name, col in crm_mapping.columns.items() if col.role == "ignore"]
    table.add_row("fit / engagement / ignored columns", " / ".join(str(n) for n in (
        sum(c.role == "fit" for c in crm_mapping.columns.values()),
        sum(c.role == "engagement" for c in crm_mapping.columns.values()),
        len(ignored),
    )))  # fmt: skip
    console.print(table)
    if loaded.undeclared:
        console.print(f"[yellow]not in the mapping, ignored:[/yellow] {', '.join(loaded.undeclared)}", highlight=False)


def _tiered(audit: pd.DataFrame) -> pd.DataFrame:
    """The audit with a tier per column, and the columns only `audit_export` fills in, blank.

    A table of `audit_leakage` (crm train's, until train audits as crm audit does) has no tiers: its flagged columns
    read as leaks, the others as clean.
    """
    table = audit.copy()
    if "tier" not in table.columns:
        table["tier"] = table["flagged"].map({True: "leak", False: "clean"})
    for column in ("known", "gain_share", "drop_one_auc_change"):
        if column not in table.columns:
            table[column] = None
    return table


def _verdict(tier: str, kept: bool) -> str:
    if tier == "declared":
        return "[red]left out (declared)[/red]"
    if tier == "leak":
        return "[yellow]kept (keep)[/yellow]" if kept else "[red]excluded[/red]"
    if tier == "review":
        return "[yellow]used, review[/yellow]"
    return "[green]used[/green]"


def _print_audit(audit: pd.DataFrame, *, valid_auc: float | None = None) -> None:
    """The audit table (evidence, verdict), what the model leans on (drop-one), then why columns are out or to review.

    `valid_auc`: the validation AUC of the model the drop-one figures compare with, for the second table's title.
    """
    table_rows = _tiered(audit)
    has_known = table_rows["known"].notna().any()
    table = Table(title="leakage audit (left out and to review first)")
    # Text folds to the room left; figures never wrap, so a narrow terminal cannot cut a number.
    table.add_column("column", overflow="fold")
    table.add_column("known at" if has_known else "role", overflow="fold")
    table.add_column("AUC", justify="right", no_wrap=True)
    table.add_column("missing\npos / neg", justify="right", no_wrap=True)
    table.add_column("purest value", overflow="fold")
    table.add_column("verdict", overflow="fold")
    for row in table_rows.itertuples(index=False):
        pure = ""
        if isinstance(row.purest_value, str):
            pure = (f"{row.purest_value} ({_figure(row.purest_value_positive_rate)} positive, "
                    f"{_figure(row.purest_value_class_share)} of {row.purest_value_class!s}s)")  # fmt: skip
        known = str(row.known).replace("_", " ") if has_known else f"{row.role} {row.type}"
        missing = f"{_figure(row.missing_rate_positive)} / {_figure(row.missing_rate_negative)}"
        verdict = _verdict(str(row.tier), bool(row.kept))
        table.add_row(str(row.column), known, _figure(row.auc, ".2f"), missing, pure, verdict)
    console.print(table)

    tested = table_rows.loc[table_rows["drop_one_auc_change"].notna()]
    if not tested.empty:
        reference = f" (validation AUC {valid_auc:.3f})" if valid_auc is not None and not math.isnan(valid_auc) else ""
        leaning = Table(title=f"what the model on the kept columns leans on{reference}: each column dropped in turn")
        leaning.add_column("column", overflow="fold")
        leaning.add_column("gain\nshare", justify="right", no_wrap=True)
        leaning.add_column("AUC change\nwithout it", justify="right", no_wrap=True)
        leaning.add_column("verdict", overflow="fold")
        for row in tested.sort_values("gain_share", ascending=False, kind="stable").itertuples(index=False):
            leaning.add_row(str(row.column), _figure(row.gain_share), _figure(row.drop_one_auc_change, "+.3f"),
                            _verdict(str(row.tier), bool(row.kept)))  # fmt: skip
        console.print(leaning)

    declared = table_rows.loc[table_rows["tier"] == "declared"]
    for moment, group in declared.groupby("known", sort=False):
        console.print(f"left out by declaration, known only at {str(moment).replace('_', ' ')}: "
                      f"{', '.join(str(c) for c in group['column'])}", soft_wrap=True, highlight=False)  # fmt: skip
    leaks = table_rows.loc[table_rows["tier"] == "leak"]
    review = table_rows.loc[table_rows["tier"] == "review"]
    if leaks.empty and review.empty:
        besides = "besides the columns declared late, no" if not declared.empty else "no"
        console.print(f"{besides} column looks recorded after the outcome")
    for row in leaks.itertuples(index=False):
        action = "kept, as the mapping's keep asks" if row.kept else "left out of training"
        # Soft-wrapped: a reason stays one line however narrow the terminal, so it can be searched and copied.
        console.print(f"[bold]{row.column}[/bold] ({action}): {row.reason}", soft_wrap=True, highlight=False)
    if not review.empty:
        console.print(
            f"{len(review)} column(s) to review, kept in training: under the hard limits, but worth a look. If one is "
            "recorded once sales is in touch, declare it in the mapping (known: sales_contact).",
            soft_wrap=True, highlight=False,
        )  # fmt: skip
    for row in review.itertuples(index=False):
        console.print(f"[bold]{row.column}[/bold] (kept, to review): {row.reason}", soft_wrap=True, highlight=False)


HoldoutOption = Annotated[float, typer.Option(min=0.05, max=0.5, help="Share of leads held out.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the random split, the audit's folds and LightGBM.")]
ThreadsOption = Annotated[int, typer.Option(min=0, help="LightGBM threads; 0: all cores.")]


@crm_app.command()
def audit(
    export: ExportOption,
    mapping: MappingOption,
    holdout_fraction: HoldoutOption = CRM_HOLDOUT_FRACTION,
    seed: SeedOption = 0,
    threads: ThreadsOption = _BOOSTER.num_threads,
) -> None:
    """Check an export against its mapping: which columns are known too late, look leaky, or deserve a look.

    Audits the training and validation leads of the split `crm train` makes with the same --holdout-fraction and
    --seed, so both commands show the same evidence; the holdout is never looked at.
    """
    from training.crm_audit import audit_export
    from training.crm_split import split_export

    loaded, crm_mapping = _load(export, mapping)
    _print_export(loaded, crm_mapping)
    try:
        split = split_export(loaded, holdout_fraction=holdout_fraction, seed=seed)
        with console.status("auditing ..."):
            config = BoosterConfig(num_threads=threads, seed=seed)
            result = audit_export(loaded.frame, loaded.y, crm_mapping, split, config=config, seed=seed)
    except ValueError as err:
        console.print(f"[red]cannot audit this export:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from err
    console.print(
        f"audited the {result.rows:,} training and validation leads, as crm train does; {split.note}", highlight=False
    )
    _print_audit(result.table, valid_auc=result.valid_auc)


def _print_result(result: CrmTrainResult) -> None:
    console.print(result.split.note, highlight=False)
    splits = Table(title="leads by split")
    for column in ("split", "leads", "positives", "positive rate", "from", "to"):
        splits.add_column(column, justify="left" if column == "split" else "right", no_wrap=column != "split")
    for row in result.split_summary.itertuples(index=False):
        first, last = (
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in (row.first, row.last)
        )
        splits.add_row(str(row.split), f"{row.rows:,}", f"{row.positives:,}", _figure(row.positive_rate, ".1%"), first,
                       last)  # fmt: skip
    console.print(splits)
    table = Table(title="holdout: audited columns vs every mapped column (leaky ones included)")
    table.add_column("metric", overflow="fold")
    everything = len(result.features) + len(result.excluded)
    table.add_column(f"audited ({len(result.features)} columns)", justify="right", no_wrap=True)
    table.add_column(f"everything ({everything} columns)", justify="right", no_wrap=True)
    for metric in ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10"):
        table.add_row(metric, f"{result.metrics_audited[metric]:.3f}", f"{result.metrics_everything[metric]:.3f}")
    console.print(table)
    console.print(f"left out: {', '.join(result.excluded) or 'none'}", highlight=False)
    baselines = Table(title="holdout: the model against its baselines (same split, fitted on the same rows)")
    baselines.add_column("scorer", overflow="fold")
    for metric in ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10"):
        baselines.add_column(metric, justify="right", no_wrap=True)
    for row in result.comparison.table.itertuples(index=False):
        baselines.add_row(str(row.model), *(_figure(getattr(row, m), ".3f") for m in ("roc_auc", "pr_auc", "log_loss",
                                                                                     "ece", "lift_top10")))  # fmt: skip
    console.print(baselines)
    drift = Table(title=f"column drift, training vs holdout (PSI; top {TOP_DRIFT})")
    drift.add_column("column", overflow="fold")
    drift.add_column("PSI", justify="right", no_wrap=True)
    drift.add_column("bin that moved most", overflow="fold")
    for row in result.drift.head(TOP_DRIFT).itertuples(index=False):
        drift.add_row(str(row.column), _figure(row.psi, ".3f"), f"{row.top_bin}: {_figure(row.train_share, '.0%')} -> "
                      f"{_figure(row.holdout_share, '.0%')}")  # fmt: skip
    console.print(drift)
    importance = Table(title=f"what the audited model uses (gain, top {TOP_IMPORTANCE})")
    importance.add_column("column", overflow="fold")
    importance.add_column("role", overflow="fold")
    importance.add_column("gain share", justify="right", no_wrap=True)
    for row in result.importance.head(TOP_IMPORTANCE).itertuples(index=False):
        importance.add_row(str(row.column), f"{row.role} {row.type}", _figure(row.gain_share))
    console.print(importance)
    for warning in result.quality_warnings:
        console.print(f"[yellow]quality warning:[/yellow] {warning['message']}", soft_wrap=True, highlight=False)
    verdict = "[green]registration:[/green]" if result.comparison.register else "[red]registration:[/red]"
    console.print(f"{verdict} {result.comparison.reason}", soft_wrap=True, highlight=False)


@crm_app.command()
def train(
    export: ExportOption,
    mapping: MappingOption,
    tracking_uri: TrackingOption = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = CRM_EXPERIMENT,
    track: Annotated[bool, typer.Option(help="Log the run to MLflow.")] = True,
    out: Annotated[Path | None, typer.Option(help="Also write leakage_audit.csv and feature_importance.csv here.")] = (
        None
    ),
    holdout_fraction: HoldoutOption = CRM_HOLDOUT_FRACTION,
    seed: SeedOption = 0,
    threads: ThreadsOption = _BOOSTER.num_threads,
    model_name: Annotated[
        str, typer.Option(help="Registered model name (serve it with LEADSCORE_MODEL_NAME set to it).")
    ] = CRM_MODEL_NAME,
    register: Annotated[bool, typer.Option(help="Register the model as @challenger (needs --track).")] = True,
) -> None:
    """Audit the export, train a servable scorer on the columns that pass, and compare with a model on every column.

    Logs one MLflow run (experiment leadscore-crm-export) with the scorer as a pyfunc model, registered under
    --model-name as @challenger: `leadscore crm promote` gates it to @champion, and `leadscore serve` serves it.
    """
    from training.crm import log_export_run, train_export

    loaded, crm_mapping = _load(export, mapping)
    _print_export(loaded, crm_mapping)
    try:
        with console.status("auditing and training both models ..."):
            config = BoosterConfig(num_threads=threads, seed=seed)
            result = train_export(loaded, crm_mapping, holdout_fraction=holdout_fraction, seed=seed, config=config)
    except ValueError as err:
        console.print(f"[red]cannot train on this export:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from err
    _print_audit(result.audit)
    _print_result(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.audit.to_csv(out / "leakage_audit.csv", index=False)
        result.importance.to_csv(out / "feature_importance.csv", index=False)
        console.print(f"wrote leakage_audit.csv and feature_importance.csv to {out}", highlight=False)
    if track:
        logged = log_export_run(result, mapping_path=mapping, export_path=export, tracking_uri=tracking_uri,
                                experiment=experiment, model_name=model_name if register else None)  # fmt: skip
        console.print(f"MLflow run {logged.run_id} (experiment {experiment}); the audit CSV and the mapping are its "
                      "artifacts", highlight=False)  # fmt: skip
        if logged.version is not None:
            console.print(f"registered {model_name} version {logged.version} as @challenger; next: leadscore crm "
                          f"promote --export {export} --mapping {mapping}", highlight=False)  # fmt: skip
    if register and not result.comparison.register:
        raise typer.Exit(EXIT_GATE_REFUSED)


@crm_app.command()
def promote(
    export: ExportOption,
    mapping: MappingOption,
    tracking_uri: TrackingOption = None,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = CRM_MODEL_NAME,
    holdout_fraction: HoldoutOption = CRM_HOLDOUT_FRACTION,
    seed: SeedOption = 0,
    auc_tolerance: AucToleranceOption = 0.005,
    ece_tolerance: EceToleranceOption = 0.01,
    accept_warnings: AcceptWarningsOption = False,
) -> None:
    """Move @champion to the export model at @challenger if it has no quality warnings and is not worse.

    Both models score the holdout leads of the export (the split train made): ranking (AUC) of both scores and the
    calibration of the outcome model must not be worse than the champion's. Exit 4 when the gate refuses it, 5 when
    it carries quality warnings and --accept-warnings is not given.
    """
    from mlflow import MlflowClient

    from training.crm import CrmError, evaluate_on_export
    from training.crm_split import split_export
    from training.promotion import default_gate
    from training.promotion import promote as gate
    from training.tracking import configure_tracking

    loaded, crm_mapping = _load(export, mapping)
    configure_tracking(tracking_uri)
    split = split_export(loaded, holdout_fraction=holdout_fraction, seed=seed)
    rules = default_gate(auc_tolerance, ece_tolerance)
    try:
        decision = gate(MlflowClient(), None, None, rules=rules, name=model_name, accept_warnings=accept_warnings,
                        evaluate=evaluate_on_export(loaded, crm_mapping, split))  # fmt: skip
    except CrmError as err:
        console.print(f"[red]cannot compare:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from err
    report_decision(console, decision, promoted=f" ({model_name}); serve it with leadscore serve --model-name "
                    f"{model_name}")  # fmt: skip
