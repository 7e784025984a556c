"""The `leadscore` command line: generate demo data, build training sets, train, evaluate and promote models."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.cli_shared import (
    AcceptWarningsOption,
    AucToleranceOption,
    EceToleranceOption,
    TrackingOption,
    report_decision,
)
from training.config import (
    CHAMPION,
    DEFAULT_EXPERIMENT,
    MODEL_NAME,
    BoosterConfig,
    SimulationConfig,
    SnapshotConfig,
    TrainConfig,
)
from training.crm_cli import crm_app
from training.exits import EXIT_BAD_DATA, EXIT_MISSING_INPUT

# Everything heavy (pandas, MLflow, LightGBM) is imported inside the commands: `leadscore --help` starts at once, and
# so does every service worker, which uvicorn starts by importing the console script again.
if TYPE_CHECKING:
    import pandas as pd

    from features.scoring import LeadScorer
    from features.spec import LeadContract
    from scaleout.cluster import ClusterSpec
    from timeline.export import ExportCounts
    from training.cluster_dataset import ClusterTrainingData
    from training.dataset import TrainingSet
    from training.pipeline import TrainResult
    from training.promotion import Decision
    from training.tracking import LoggedModel

log = logging.getLogger("leadscore")
app = typer.Typer(help="leadscore: calibrated, explained lead scoring.", no_args_is_help=True)
app.add_typer(crm_app, name="crm", help="Bring your own CRM export: leakage audit and training on a flat export.")
console = Console()


DEFAULT_WORKDIR = Path("leadscore-demo")


def _simulation_default(name: str) -> int:
    """A SimulationConfig default, read without building one (that would import pandas): one home for each value."""
    value = next(f.default for f in fields(SimulationConfig) if f.name == name)
    assert isinstance(value, int)
    return value


_SIM = {name: _simulation_default(name) for name in ("n_leads", "seed", "days")}
# The demo simulates more leads, over a longer period, than the simulator's default: wins are ~2 % of the leads old
# enough to judge, and the fit model's holdout (the latest fifth of them, the least mature) needs at least
# training.quality.MIN_HOLDOUT_POSITIVES wins for its AUC to say anything. 20,000 leads over 540 days left it 20 wins
# (and an AUC of 0.55, below the point rules); 30,000 over 630 days leave it 60 (seed 7).
QUICKSTART_LEADS = 30_000
QUICKSTART_DAYS = 630
# The exact readiness oracle costs about 0.4 ms of CPU per row: the simulator's default 200,000 rows took 85 of the
# demo's 116 CPU seconds of simulation. 50,000 rows still match ~17,000 training snapshots, enough for the oracle AUC
# the data table prints, and the whole quickstart then takes ~145 CPU seconds instead of ~230.
QUICKSTART_ORACLE_ROWS = 50_000


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Set up logging once, for every command."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=False)
        line = "%(message)s"
    else:
        # A service's log goes to a file or a collector: one unwrapped line per record, searchable and parsable.
        handler = logging.StreamHandler()
        line = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=line, handlers=[handler], force=True)


def _generate(out: Path, config: SimulationConfig) -> None:
    from training.data import replace_dir_atomic
    from training.simulator import write_simulation

    # Written to a staging folder first: an interrupted run never leaves a half-written data set in `out`.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        with console.status(f"simulating {config.n_leads:,} leads ..."):
            summary = write_simulation(config, staging)
        replace_dir_atomic(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "wrote %d leads, %d activities, %d oracle rows to %s",
        summary.n_leads,
        summary.n_activities,
        summary.n_oracle,
        out,
    )


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder for leads/, activities/, truth/ and oracle/.")] = (
        DEFAULT_WORKDIR / "data"
    ),
    leads: Annotated[int, typer.Option(min=1, help="Number of leads to simulate.")] = _SIM["n_leads"],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = _SIM["seed"],
    days: Annotated[int, typer.Option(min=60, help="Days of history.")] = _SIM["days"],
) -> None:
    """Simulate a B2B funnel (leads, activities and the true probabilities behind them)."""
    _generate(out, SimulationConfig(n_leads=leads, seed=seed, days=days))


def _load(data: Path, contract: LeadContract | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from features.spec import DEFAULT_CONTRACT
    from features.validation import ContractError
    from training.data import load_tables

    try:
        return load_tables(data, contract or DEFAULT_CONTRACT)
    except FileNotFoundError as err:
        console.print(f"[red]missing input:[/red] {err}")
        raise typer.Exit(EXIT_MISSING_INPUT) from err
    except ContractError as err:
        console.print(f"[red]the data break the lead contract:[/red]\n{err}")
        raise typer.Exit(EXIT_BAD_DATA) from err


def _contract_of(scorer: LeadScorer) -> LeadContract | None:
    """The lead contract a scorer was trained with (None: not a lead contract model)."""
    from features.builder import FeatureBuilder

    builder = scorer.builder
    return builder.contract if isinstance(builder, FeatureBuilder) else None


def _merged(contracts: list[LeadContract | None]) -> LeadContract | None:
    """The first contract, with the custom attributes the others declare besides (the readiness label of the first)."""
    known = [c for c in contracts if c is not None]
    if not known:
        return None
    first, names = known[0], {a.name for a in known[0].custom_attributes}
    extra = [a for c in known[1:] for a in c.custom_attributes if a.name not in names]
    return replace(first, custom_attributes=(*first.custom_attributes, *extra))


def _build(data: Path, out: Path, snapshot_config: SnapshotConfig, data_end: str | None) -> TrainingSet:
    import pandas as pd

    from training.data import write_parquet_atomic
    from training.dataset import build_training_set

    leads, activities = _load(data)
    end = pd.Timestamp(data_end, tz="UTC") if data_end else None
    with console.status("building snapshots, labels and point-in-time features ..."):
        training_set = build_training_set(leads, activities, snapshot_config=snapshot_config, data_end=end)
    write_parquet_atomic(training_set.readiness, out / "readiness.parquet")
    write_parquet_atomic(training_set.fit, out / "fit.parquet")
    return training_set


@app.command("build-dataset")
def build_dataset(
    data: Annotated[Path, typer.Option(help="Folder with the leads and activities tables.")] = DEFAULT_WORKDIR / "data",
    out: Annotated[Path, typer.Option(help="Folder for readiness.parquet and fit.parquet.")] = (
        DEFAULT_WORKDIR / "datasets"
    ),
    horizon_days: Annotated[int, typer.Option(min=1, help="Readiness = SQL within this many days.")] = 30,
    every_days: Annotated[int, typer.Option(min=1, help="Days between snapshot dates.")] = 7,
    max_per_lead: Annotated[int, typer.Option(min=1, help="Most snapshots kept per lead.")] = 12,
    fit_horizon_days: Annotated[int, typer.Option(min=1, help="Unwon leads younger than this are censored.")] = 180,
    data_end: Annotated[str | None, typer.Option(help="End of observation (ISO date); default: latest stamp.")] = None,
) -> None:
    """Validate the tables and build labelled, point-in-time feature tables for both models."""
    config = SnapshotConfig(
        horizon_days=horizon_days, every_days=every_days, max_per_lead=max_per_lead, fit_horizon_days=fit_horizon_days
    )
    training_set = _build(data, out, config, data_end)
    _report(training_set, data)


def _report(training_set: TrainingSet, data: Path) -> None:
    from training.data import read_table

    leads = read_table(data / "leads") if (data / "leads").is_dir() else None
    oracle = read_table(data / "oracle") if (data / "oracle").is_dir() else None
    console.print(_data_table(training_set, leads, oracle))


def _data_table(training_set: TrainingSet, leads: pd.DataFrame | None, oracle: pd.DataFrame | None) -> Table:
    """What the training sets hold, the funnel's conversion rates, and the best AUC reachable (simulated data)."""
    from training.evaluation import oracle_auc
    from training.simulator import conversion_rates

    table = Table(title="leadscore training data", show_header=True)
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    readiness = training_set.readiness
    table.add_row("readiness snapshots", f"{len(readiness):,}")
    table.add_row("readiness positive rate", f"{readiness['label'].mean():.1%}")
    table.add_row("fit examples", f"{len(training_set.fit):,}")
    table.add_row("fit positive rate (won)", f"{training_set.fit['label'].mean():.1%}")
    table.add_row("features", str(len(training_set.builder.feature_names_)))
    if leads is not None:
        rates = conversion_rates(leads, training_set.data_end)
        table.add_row("lead -> MQL", f"{rates.lead_to_mql:.1%}")
        table.add_row("MQL -> SQL", f"{rates.mql_to_sql:.1%}")
        table.add_row("SQL -> won", f"{rates.sql_to_won:.1%}")
    if oracle is not None:
        auc, n = oracle_auc(readiness, oracle)
        table.add_row("oracle readiness AUC (best achievable)", f"{auc:.3f} on {n:,} snapshots")
    return table


ExperimentOption = Annotated[str, typer.Option(help="MLflow experiment.")]
# Where a model trained by `train --store` got its data: the service store's URL, its password masked.
DATA_STORE_TAG = "leadscore.data_store"
DATA_STORE_PARAM = "data_store"
EXIT_USAGE = 2  # options that cannot go together or a folder that cannot be used: Click's own usage-error code
_BOOSTER = BoosterConfig()
_SNAPSHOTS = SnapshotConfig()


def _train(
    data: Path,
    snapshot_config: SnapshotConfig,
    config: TrainConfig,
    experiment: str,
    data_end: str | None = None,
    built: TrainingSet | None = None,
    contract: LeadContract | None = None,
    contract_file: Path | None = None,
    store: str | None = None,
    cluster: ClusterSpec | None = None,
) -> LoggedModel:
    """Train on `data` and log the result; `built` is its training set when the caller already built it.

    With `cluster`, the touches are validated and featured on that Dask cluster (training.cluster_dataset).

    `contract` (read from `contract_file`, which the run keeps as an artifact) validates the tables and declares the
    custom attributes and the readiness label; `snapshot_config` must label readiness as it declares. `store` (a
    redacted URL) says that `data` is a temporary export of that service store: the run records the store instead.
    """
    import mlflow
    import pandas as pd

    from features.spec import DEFAULT_CONTRACT
    from training.data import read_table
    from training.dataset import build_training_set
    from training.pipeline import train_models
    from training.tracking import log_training, training_run

    # The run is opened before the data are loaded: its duration in MLflow is the whole job's, logging included.
    with training_run(experiment):
        if contract_file is not None:
            mlflow.log_artifact(str(contract_file), artifact_path="contract")
        if store is not None:
            mlflow.set_tag(DATA_STORE_TAG, store)
            mlflow.log_param(DATA_STORE_PARAM, store)
        end = pd.Timestamp(data_end, tz="UTC") if data_end else None
        n_activities = None
        if cluster is None:
            leads, activities = _load(data, contract)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
            step = bar.add_task("building snapshots and point-in-time features", total=None)
            try:
                if cluster is not None:
                    bar.update(step, description="building snapshots and point-in-time features on the Dask cluster")
                    where = "point-in-time features on the Dask cluster"

                    def partitions_done(done: int, total: int) -> None:
                        bar.update(step, description=f"{where}: {done} of {total} partitions")

                    scaled = _build_on_cluster(
                        data, cluster, snapshot_config, contract or DEFAULT_CONTRACT, end, partitions_done
                    )
                    training_set, leads = scaled.training_set, scaled.leads
                    activities, n_activities = scaled.example_activities, scaled.n_activities
                else:
                    training_set = built or build_training_set(
                        leads,
                        activities,
                        snapshot_config=snapshot_config,
                        contract=contract or DEFAULT_CONTRACT,
                        data_end=end,
                    )
                result = train_models(
                    training_set, leads, config, progress=lambda what: bar.update(step, description=what)
                )
            except ValueError as err:
                console.print(f"[red]cannot train on these data:[/red] {err}")
                raise typer.Exit(EXIT_BAD_DATA) from err
            bar.update(step, description="logging to MLflow and registering the model")
            oracle = read_table(data / "oracle") if (data / "oracle").is_dir() else None
            # A store's export is a temporary folder, gone after the run: the run names the store (above) instead.
            logged = log_training(
                result,
                training_set,
                leads,
                activities,
                config,
                experiment=experiment,
                data_dir=None if store is not None else data,
                oracle=oracle,
                n_activities=n_activities,
            )
    console.print(_training_table(result, logged))
    _print_quality_warnings(logged)
    console.print(f"run {logged.run_id}; model {logged.model_uri}")
    return logged


def _build_on_cluster(
    data: Path,
    cluster: ClusterSpec,
    snapshot_config: SnapshotConfig,
    contract: LeadContract,
    end: pd.Timestamp | None,
    progress: Callable[[int, int], None],
) -> ClusterTrainingData:
    """The training set built on the Dask cluster; missing tables exit 3, a cluster that cannot be had exits 3."""
    from scaleout.cluster import ClusterError, dask_client
    from scaleout.tables import InputError, MissingInputError, check_source, locate
    from training.cluster_dataset import build_on_cluster

    try:
        sources = locate(str(data), "leads"), locate(str(data), "activities")
        for source in sources:
            check_source(source, contract)  # before a cluster starts: a missing column is said at once
    except MissingInputError as err:
        console.print(f"[red]missing input:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from None
    except InputError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from None
    try:
        with dask_client(cluster) as client:
            return build_on_cluster(
                client, *sources, snapshot_config=snapshot_config, contract=contract, data_end=end, progress=progress
            )
    except ClusterError as err:
        console.print(f"[red]--scheduler:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from None


def _print_quality_warnings(logged: LoggedModel) -> None:
    """Say under the metrics table whether the figures above can be trusted, and what promote will do about it."""
    if not logged.quality_warnings:
        console.print("quality: no warnings (enough holdout positives, and no baseline ranks better)", highlight=False)
        return
    console.print(f"[yellow]quality warnings[/yellow] for version {logged.version}:", highlight=False)
    for warning in logged.quality_warnings:
        console.print(f"  - {warning.message}", highlight=False)
    console.print(
        "  leadscore promote refuses this model unless given --accept-warnings; its fit grades and readiness stages"
        " would still drive routing",
        highlight=False,
    )


# Scorer headers of the training report, broken over two lines: its figure columns then fit in 80 columns whole.
SCORER_HEADERS = {
    "model": "model",
    "odoo_naive_bayes": "Odoo\nnaive Bayes",
    "point_rules": "point\nrules",
    "logistic_regression": "logistic\nregression",
}
READINESS_REPORTED = ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10")


def _training_table(result: TrainResult, logged: LoggedModel) -> Table:
    """Holdout figures of the model and each baseline: one row per metric, one column per scorer."""
    from training.pipeline import BASELINES

    scorers = ("model", *BASELINES)
    table = Table(title=f"out-of-time holdout: lead-scorer version {logged.version} (@challenger)")
    table.add_column("holdout metric", overflow="fold")
    for scorer in scorers:
        table.add_column(SCORER_HEADERS.get(scorer, scorer), justify="right", no_wrap=True)
    rows = [("readiness", metric) for metric in READINESS_REPORTED] + [("fit", "roc_auc")]
    for task, metric in rows:
        scored = result.readiness.metrics if task == "readiness" else result.fit.metrics
        table.add_row(f"{task} {metric}", *(f"{scored[scorer][metric]:.3f}" for scorer in scorers))
    return table


def _path_or_none(value: str) -> Path | None:
    """A path option MLproject may pass empty (its parameters cannot be left out): empty means not given."""
    return Path(value) if value.strip() else None


def _days_or_none(value: str) -> int | None:
    """A number of days >= 1, or None for an empty value (as MLproject passes a parameter left at its default)."""
    if not value.strip():
        return None
    try:
        days = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a whole number of days") from None
    if days < 1:
        raise typer.BadParameter(f"{days} is not a number of days >= 1")
    return days


ContractOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path_or_none,
        metavar="<path>",
        help="Contract file (YAML): custom lead attributes and the lifecycle stamp that marks readiness (see"
        " examples/contract.yaml); default: the built-in contract, readiness = SQL.",
    ),
]
StoreUrlHelp = (
    "SQLAlchemy URL of the service's store (the service's LEADSCORE_STORE_URL), e.g. sqlite:///leadscore-service.db"
    " or postgresql+psycopg://user:password@host/db."
)


def _read_contract(path: Path) -> LeadContract:
    """The contract a contract file declares; exits 3 when it is missing and 2 when it is not valid."""
    from features.contract_file import ContractFileError, contract_from_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError) as err:
        console.print(f"[red]missing input:[/red] no contract file {path} ({err.strerror})", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from err
    try:
        return contract_from_yaml(text, source=str(path))
    except ContractFileError as err:
        console.print(f"[red]the contract file is not valid:[/red]\n{err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from err


def _readiness_snapshots(
    contract: LeadContract | None, contract_file: Path | None, horizon_days: int | None, max_rows: int
) -> SnapshotConfig:
    """Snapshots labelled as the contract declares, or as SQL within --horizon-days; a contradiction exits 2."""
    declared = contract.readiness if contract is not None else None
    if declared is None:
        return SnapshotConfig(horizon_days=horizon_days or _SNAPSHOTS.horizon_days, max_rows=max_rows)
    if horizon_days is not None and horizon_days != declared.horizon_days:
        console.print(
            f"[red]--horizon-days {horizon_days} contradicts the contract:[/red] {contract_file} declares readiness as"
            f" {declared.meaning}; leave --horizon-days out, or change readiness.horizon_days in the file",
            highlight=False,
        )
        raise typer.Exit(EXIT_BAD_DATA)
    return SnapshotConfig(readiness_stamp=declared.stamp, horizon_days=declared.horizon_days, max_rows=max_rows)


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(help=f"Folder with the leads and activities tables; default: {DEFAULT_WORKDIR / 'data'}."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help=f"Train from the service's store instead of --data: {StoreUrlHelp}", show_default=False),
    ] = None,
    tracking_uri: TrackingOption = None,
    experiment: ExperimentOption = DEFAULT_EXPERIMENT,
    contract: ContractOption = None,
    horizon_days: Annotated[
        int | None,
        typer.Option(
            parser=_days_or_none,
            metavar="<days>",
            help="Readiness = the readiness stamp within this many days; default: the contract's horizon_days, else"
            f" {_SNAPSHOTS.horizon_days}.",
        ),
    ] = None,
    data_end: Annotated[str | None, typer.Option(help="End of observation (ISO date); default: latest stamp.")] = None,
    holdout_fraction: Annotated[float, typer.Option(min=0.05, max=0.5, help="Latest share of rows held out.")] = 0.2,
    learning_rate: Annotated[float, typer.Option(min=0.001, max=1.0, help="LightGBM learning rate.")] = (
        _BOOSTER.learning_rate
    ),
    num_leaves: Annotated[int, typer.Option(min=2, help="LightGBM leaves per tree.")] = _BOOSTER.num_leaves,
    max_rounds: Annotated[int, typer.Option(min=1, help="Most boosting rounds (early stopping ends sooner).")] = (
        _BOOSTER.max_rounds
    ),
    rules: Annotated[Path | None, typer.Option(help="Point-rules baseline table (YAML).")] = None,
    max_snapshots: Annotated[int, typer.Option(min=1000, help="Most readiness snapshots (a seeded sample).")] = (
        _SNAPSHOTS.max_rows or 2_500_000
    ),
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Build the features on a Dask cluster: 'local' starts one on this machine, tcp://host:8786 uses an"
            " existing one. The touches never load into this process; the boosters train here.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="--scheduler local: worker processes (default: cores).")
    ] = None,
    worker_memory: Annotated[
        str | None, typer.Option(help="--scheduler local: memory per worker, e.g. 4GB (past it a worker spills).")
    ] = None,
) -> None:
    """Train the fit and readiness models, evaluate them against baselines, log and register them (@challenger).

    With --store, the service store's leads and touches are exported to a temporary folder and trained on as a data
    folder would be; the run records the store's URL (password masked). Exit 2 when the data break the contract or
    their labels are of one class (the message says what to declare), 3 when the store is unreachable or empty.
    """
    from training.tracking import configure_tracking

    if store is not None and data is not None:
        console.print("[red]--data and --store:[/red] give --data or --store, not both", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    cluster = _cluster(scheduler, workers, worker_memory)
    if store is not None and cluster is not None and cluster.scheduler is not None:
        console.print("[red]--store and --scheduler:[/red] the store is exported to a folder on this machine, which a"
                      " remote cluster's workers cannot read; use --scheduler local", highlight=False)  # fmt: skip
        raise typer.Exit(EXIT_USAGE)
    declared = _read_contract(contract) if contract is not None else None
    snapshots = _readiness_snapshots(declared, contract, horizon_days, max_snapshots)
    configure_tracking(tracking_uri)
    readiness = replace(_BOOSTER, learning_rate=learning_rate, num_leaves=num_leaves, max_rounds=max_rounds)
    default = TrainConfig()
    fit = replace(default.fit, learning_rate=learning_rate, max_rounds=max_rounds)
    config = TrainConfig(readiness=readiness, fit=fit, holdout_fraction=holdout_fraction, rules_path=rules)
    if store is None:
        data = data or DEFAULT_WORKDIR / "data"
        _train(
            data, snapshots, config, experiment, data_end, contract=declared, contract_file=contract, cluster=cluster
        )
        return
    from timeline.export import redact

    with tempfile.TemporaryDirectory(prefix="leadscore-store-export-") as tmp:
        exported = Path(tmp) / "data"
        _export(store, exported, declared)
        _train(
            exported,
            snapshots,
            config,
            experiment,
            data_end,
            contract=declared,
            contract_file=contract,
            store=redact(store),
            cluster=cluster,
        )


def _cluster(scheduler: str | None, workers: int | None, memory: str | None) -> ClusterSpec | None:
    """The cluster `train` builds its features on (None: in this process); options that cannot be used exit 2."""
    if scheduler is None:
        if workers is not None or memory is not None:
            console.print("[red]--workers and --worker-memory[/red] size a local cluster: add --scheduler local",
                          highlight=False)  # fmt: skip
            raise typer.Exit(EXIT_USAGE)
        return None
    from scaleout.cluster import ClusterError, ClusterSpec

    spec = ClusterSpec(None if scheduler == "local" else scheduler, workers, memory)
    try:
        spec.check()
    except ClusterError as err:
        console.print(f"[red]--scheduler:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    return spec


def _export(store: str, out: Path, contract: LeadContract | None) -> ExportCounts:
    """Export the store at `store` to `out`; an unreachable or empty store exits 3, a refused --out exits 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from timeline.export import EmptyStoreError, ExportError, OutputFolderError, export_tables, open_store, redact

    shown = redact(store)
    try:
        engine = open_store(store)
    except ExportError as err:
        console.print(f"[red]--store:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from None
    try:
        with console.status(f"exporting leads and touches from {shown} ..."):
            return export_tables(engine, out, contract=contract, source=shown)
    except OutputFolderError as err:
        console.print(f"[red]--out:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except EmptyStoreError as err:
        console.print(f"[red]--store {shown}:[/red] {err}; nothing to export", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from None
    except ExportError as err:
        console.print(f"[red]--store {shown}:[/red] {err}", highlight=False)
        raise typer.Exit(EXIT_BAD_DATA) from None
    except SQLAlchemyError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        console.print(f"[red]--store:[/red] lost the store {shown} while exporting: {first}", highlight=False)
        raise typer.Exit(EXIT_MISSING_INPUT) from None
    finally:
        engine.dispose()


@app.command()
def export(
    store: Annotated[
        str,
        typer.Option(
            envvar="LEADSCORE_STORE_URL",
            help=f"{StoreUrlHelp} Default: $LEADSCORE_STORE_URL (keeps a password off the command line).",
            show_default=False,
            show_envvar=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for leads/ and activities/ (Parquet parts) and export.json: new, empty, or an earlier export"
            " (replaced whole)."
        ),
    ],
    contract: ContractOption = None,
) -> None:
    """Write the service store's leads and touches as the contract's leads and activities tables.

    The folder reads as a data folder does (build-dataset, train --data, evaluate). Touches of visitors never identified
    are left out and counted. Exit 3 when the store is unreachable or holds no leads.
    """
    declared = _read_contract(contract) if contract is not None else None
    counts = _export(store, out, declared)
    skipped = counts.anonymous_touches + counts.orphan_touches
    note = (
        f"; left out {counts.anonymous_touches:,} anonymous touches and {counts.orphan_touches:,} touches of leads"
        " the store does not hold"
        if skipped
        else ""
    )
    console.print(
        f"exported {counts.leads:,} leads and {counts.activities:,} activities to {out}{note}", highlight=False
    )


def _decide(data: Path | None, auc_tolerance: float, ece_tolerance: float, accept_warnings: bool = False) -> Decision:
    from mlflow import MlflowClient

    from training.config import CHALLENGER
    from training.promotion import default_gate, promote
    from training.tracking import load_scorer, version_by_alias

    client = MlflowClient()
    challenger = version_by_alias(client, CHALLENGER)
    champion = version_by_alias(client, CHAMPION)
    leads = activities = None
    from training.promotion import logged_warnings

    blocked = challenger is not None and bool(logged_warnings(challenger)) and not accept_warnings
    if challenger is not None and champion is not None and champion.version != challenger.version and not blocked:
        if data is None:
            run = client.get_run(challenger.tags.get("leadscore.run_id") or str(challenger.run_id))
            params = run.data.params
            if not params.get("data_dir") and params.get(DATA_STORE_PARAM):
                # Trained by `train --store`: its data were a temporary export, gone with the run.
                console.print(
                    f"[red]missing input:[/red] version {challenger.version} was trained from the store"
                    f" {params[DATA_STORE_PARAM]}; give --data, an export of it (leadscore export)",
                    highlight=False,
                )
                raise typer.Exit(EXIT_MISSING_INPUT)
            data = Path(params.get("data_dir", ""))
        # Both models score the same leads: the columns of both contracts' custom attributes are read.
        contracts = [_contract_of(load_scorer(f"models:/{MODEL_NAME}/{v.version}")) for v in (challenger, champion)]
        leads, activities = _load(data, _merged(contracts))
    rules = default_gate(auc_tolerance, ece_tolerance)
    return promote(client, leads, activities, rules=rules, accept_warnings=accept_warnings)


@app.command("promote")
def promote_command(
    tracking_uri: TrackingOption = None,
    data: Annotated[
        Path | None, typer.Option(help="Data holding the challenger's holdout; default: the data it was trained on.")
    ] = None,
    auc_tolerance: AucToleranceOption = 0.005,
    ece_tolerance: EceToleranceOption = 0.01,
    accept_warnings: AcceptWarningsOption = False,
) -> None:
    """Move @champion to @challenger if it has no quality warnings and is not worse on the same holdout.

    Exit 4 when the gate refuses it, 5 when it carries quality warnings and --accept-warnings is not given.
    """
    from training.tracking import configure_tracking

    configure_tracking(tracking_uri)
    report_decision(console, _decide(data, auc_tolerance, ece_tolerance, accept_warnings))


@app.command()
def evaluate(
    model_uri: Annotated[str, typer.Option(help="Model to evaluate.")] = f"models:/{MODEL_NAME}@{CHAMPION}",
    data: Annotated[Path, typer.Option(help="Folder with the leads and activities tables.")] = DEFAULT_WORKDIR / "data",
    tracking_uri: TrackingOption = None,
    since: Annotated[
        str | None, typer.Option(help="Holdout start (ISO date); default: the model's own holdout start.")
    ] = None,
    data_end: Annotated[str | None, typer.Option(help="End of observation (ISO date); default: latest stamp.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the metrics here as JSON.")] = None,
) -> None:
    """Score a holdout period of `data` with a registered model and print its metrics."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from training.promotion import Holdout, evaluate_scorer
    from training.snapshots import data_end_of
    from training.tracking import configure_tracking, load_scorer

    configure_tracking(tracking_uri)
    try:
        scorer = load_scorer(model_uri)
    except MlflowException as err:
        console.print(f"[red]cannot load {model_uri}:[/red] {err.message}")
        raise typer.Exit(EXIT_MISSING_INPUT) from err
    # The model's own contract: its custom attributes are columns of the leads table it reads.
    leads, activities = _load(data, _contract_of(scorer))
    holdout = Holdout.of_scorer(scorer)
    end = pd.Timestamp(data_end, tz="UTC") if data_end else data_end_of(leads, activities)
    start = pd.Timestamp(since, tz="UTC") if since else None
    holdout = replace(
        holdout,
        data_end=end,
        readiness_start=start or holdout.readiness_start,
        fit_start=start or holdout.fit_start,
    )
    try:
        metrics = evaluate_scorer(scorer, leads, activities, holdout)
    except ValueError as err:
        console.print(f"[red]cannot evaluate:[/red] {err}")
        raise typer.Exit(EXIT_BAD_DATA) from err
    title = f"{model_uri} on {data} (readiness from {holdout.readiness_start}, fit from {holdout.fit_start})"
    console.print(_evaluation_table(metrics, title=title))
    if out is not None:
        out.write_text(json.dumps(metrics, indent=2))


# Counts among the evaluation metrics: printed whole, with thousands separators, never in scientific notation.
COUNT_METRICS = frozenset({"n", "positives"})


def _evaluation_table(metrics: dict[str, dict[str, float]], *, title: str) -> Table:
    """Readiness and fit metrics side by side, counts whole and the rest to four significant digits."""
    table = Table(title=title)
    table.add_column("metric", overflow="fold")
    table.add_column("readiness", justify="right", no_wrap=True)
    table.add_column("fit", justify="right", no_wrap=True)
    for name in metrics["readiness"]:
        spec = ",.0f" if name in COUNT_METRICS else ".4g"
        table.add_row(name, format(metrics["readiness"][name], spec), format(metrics["fit"][name], spec))
    return table


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where demo data and outputs go.")] = DEFAULT_WORKDIR,
    leads: Annotated[int, typer.Option(min=100, help="Number of demo leads.")] = QUICKSTART_LEADS,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _SIM["seed"],
    days: Annotated[int, typer.Option(min=60, help="Days of demo history.")] = QUICKSTART_DAYS,
    tracking_uri: TrackingOption = None,
    experiment: ExperimentOption = DEFAULT_EXPERIMENT,
) -> None:
    """The whole job on embedded defaults: simulate demo data, train, register, promote a champion."""
    # Said before anything heavy is imported: a newcomer sees what is coming from the first second on.
    console.print(
        f"leadscore quickstart: four steps, about two minutes on two cores; everything goes to {workdir}/ and the "
        "MLflow store",
        highlight=False,
    )
    console.print(f"[1/4] simulating a B2B funnel of {leads:,} demo leads over {days} days", highlight=False)
    with console.status("loading pandas, LightGBM and MLflow ..."):
        import mlflow

        from training.tracking import configure_tracking

        configure_tracking(tracking_uri)
    config = SimulationConfig(n_leads=leads, seed=seed, days=days, oracle_max_rows=QUICKSTART_ORACLE_ROWS)
    _generate(workdir / "data", config)
    console.print("[2/4] validating the data and building point-in-time training sets", highlight=False)
    snapshots = SnapshotConfig()
    training_set = _build(workdir / "data", workdir / "datasets", snapshots, data_end=None)
    _report(training_set, workdir / "data")
    console.print("[3/4] training, calibrating and evaluating both models against the baselines", highlight=False)
    # The training set of step 2 is trained on as it is: building it again would double the longest step but one.
    _train(workdir / "data", snapshots, TrainConfig(), experiment, built=training_set)
    console.print("[4/4] the promotion gate: challenger against champion", highlight=False)
    decision = _decide(workdir / "data", 0.005, 0.01)
    for line in decision.lines:
        console.print(f"  {line}", highlight=False)
    state = "promoted to @champion" if decision.promoted else "not promoted"
    if decision.refused_for_warnings:
        state += " (quality warnings; leadscore promote --accept-warnings overrides them)"
    console.print(f"lead-scorer version {decision.challenger}: {state}; tracking store {mlflow.get_tracking_uri()}")
