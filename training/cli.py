"""The `leadscore` command line: generate demo data, build training sets (train, evaluate, promote come next)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from features.validation import ContractError
from training.data import load_tables, read_table, replace_dir_atomic, write_parquet_atomic
from training.dataset import TrainingSet, build_training_set
from training.evaluation import oracle_auc
from training.simulator import SimulationConfig, conversion_rates, write_simulation
from training.snapshots import SnapshotConfig

log = logging.getLogger("leadscore")
app = typer.Typer(help="leadscore: calibrated, explained lead scoring.", no_args_is_help=True)
console = Console()

# Exit codes scripts can rely on.
EXIT_BAD_DATA = 2
EXIT_MISSING_INPUT = 3

DEFAULT_WORKDIR = Path("leadscore-demo")
# Defaults shown in --help come from the simulator config itself (one home for each value).
_SIM = SimulationConfig()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Set up logging once, for every command."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )


def _generate(out: Path, config: SimulationConfig) -> None:
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
    leads: Annotated[int, typer.Option(min=1, help="Number of leads to simulate.")] = _SIM.n_leads,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = _SIM.seed,
    days: Annotated[int, typer.Option(min=60, help="Days of history.")] = _SIM.days,
) -> None:
    """Simulate a B2B funnel (leads, activities and the true probabilities behind them)."""
    _generate(out, SimulationConfig(n_leads=leads, seed=seed, days=days))


def _load(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        return load_tables(data)
    except FileNotFoundError as err:
        console.print(f"[red]missing input:[/red] {err}")
        raise typer.Exit(EXIT_MISSING_INPUT) from err
    except ContractError as err:
        console.print(f"[red]the data break the lead contract:[/red]\n{err}")
        raise typer.Exit(EXIT_BAD_DATA) from err


def _build(data: Path, out: Path, snapshot_config: SnapshotConfig, data_end: str | None) -> TrainingSet:
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
    table = Table(title="leadscore training data", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    readiness = training_set.readiness
    table.add_row("readiness snapshots", f"{len(readiness):,}")
    table.add_row("readiness positive rate", f"{readiness['label'].mean():.1%}")
    table.add_row("fit examples", f"{len(training_set.fit):,}")
    table.add_row("fit positive rate (won)", f"{training_set.fit['label'].mean():.1%}")
    table.add_row("features", str(len(training_set.builder.feature_names_)))
    leads = read_table(data / "leads") if (data / "leads").is_dir() else None
    if leads is not None:
        rates = conversion_rates(leads, training_set.data_end)
        table.add_row("lead -> MQL", f"{rates.lead_to_mql:.1%}")
        table.add_row("MQL -> SQL", f"{rates.mql_to_sql:.1%}")
        table.add_row("SQL -> won", f"{rates.sql_to_won:.1%}")
    if (data / "oracle").is_dir():
        auc, n = oracle_auc(readiness, read_table(data / "oracle"))
        table.add_row("oracle readiness AUC (best achievable)", f"{auc:.3f} on {n:,} snapshots")
    console.print(table)


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where demo data and outputs go.")] = DEFAULT_WORKDIR,
    leads: Annotated[int, typer.Option(min=100, help="Number of demo leads.")] = _SIM.n_leads,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _SIM.seed,
) -> None:
    """The whole job on embedded defaults: simulate demo data, validate it, build training sets."""
    config = SimulationConfig(n_leads=leads, seed=seed)
    _generate(workdir / "data", config)
    training_set = _build(workdir / "data", workdir / "datasets", SnapshotConfig(), data_end=None)
    _report(training_set, workdir / "data")
    console.print(f"training sets written to {workdir / 'datasets'}")
