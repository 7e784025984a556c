"""Benchmark: the whole training pipeline on simulated data (default 1 M leads), its stage times, memory and quality."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.measure import peak_rss_mb
from training.config import SimulationConfig, TrainConfig
from training.data import load_tables, read_table
from training.dataset import build_training_set
from training.pipeline import BASELINES, train_models
from training.simulator import write_simulation
from training.tracking import configure_tracking, log_training, oracle_comparison

log = logging.getLogger("benchmarks.train")
app = typer.Typer(add_completion=False)
DEFAULT_OUT = Path("benchmarks/out")
PIPELINE_TARGET_S = 600.0
AUC_SHARE_TARGET = 0.97
ECE_TARGET = 0.02


def _timed(func: Callable[[], Any]) -> tuple[Any, float, float]:
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start, peak_rss_mb()


@app.command()
def main(
    leads: Annotated[int, typer.Option(help="Leads to simulate (about 20 activities each).")] = 1_000_000,
    out: Annotated[Path, typer.Option(help="Cache folder for the simulated data.")] = DEFAULT_OUT,
) -> None:
    """Print wall time and peak memory per stage, and the quality table: model vs baselines vs oracle."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = out / f"sim-{leads}-oracle"
    stages: list[tuple[str, float, float]] = []
    if not (data / "leads").is_dir():
        _, seconds, rss = _timed(lambda: write_simulation(SimulationConfig(n_leads=leads), data))
        stages.append(("simulate (not part of the pipeline)", seconds, rss))
    # Reference for the ratios: reading the raw Parquet tables, the least any pipeline must do.
    _, t_read, rss = _timed(lambda: (read_table(data / "leads"), read_table(data / "activities")))
    stages.append(("reference: read Parquet", t_read, rss))
    (tables, seconds, rss) = _timed(lambda: load_tables(data))
    leads_df, activities = tables
    stages.append(("load + validate", seconds, rss))
    training_set, seconds, rss = _timed(lambda: build_training_set(leads_df, activities))
    stages.append((f"snapshots + features ({len(training_set.readiness):,} readiness rows)", seconds, rss))
    config = TrainConfig()
    result, seconds, rss = _timed(lambda: train_models(training_set, leads_df, config))
    stages.append(("train, calibrate, baselines, evaluate, SHAP", seconds, rss))
    oracle = read_table(data / "oracle")
    with tempfile.TemporaryDirectory() as tmp:
        configure_tracking(f"sqlite:///{tmp}/mlflow.db")
        _, seconds, rss = _timed(
            lambda: log_training(result, training_set, leads_df, activities, config, data_dir=data, oracle=oracle)
        )
    stages.append(("log to MLflow + register", seconds, rss))

    console = Console(width=150)
    timing = Table(title=f"training pipeline, {leads:,} leads, {len(activities):,} activities")
    for column in ("stage", "wall time", "x read Parquet", "peak RSS"):
        timing.add_column(column, justify="left" if column == "stage" else "right")
    pipeline_s = 0.0
    for name, seconds, rss in stages:
        if not name.startswith(("simulate", "reference")):
            pipeline_s += seconds
        timing.add_row(name, f"{seconds:.1f} s", f"{seconds / t_read:.1f}x", f"{rss:,.0f} MB")
    timing.add_row("whole pipeline (load to registered)", f"{pipeline_s:.1f} s", f"{pipeline_s / t_read:.1f}x",
                   f"target <= {PIPELINE_TARGET_S:.0f} s")  # fmt: skip
    console.print(timing)

    versus = oracle_comparison(result.readiness, oracle)
    oracle_auc = versus.get("readiness_oracle_roc_auc_holdout", math.nan)
    quality = Table(title="readiness, out-of-time holdout (oracle-covered rows for the AUC ratio)")
    for column in ("scorer", "ROC AUC", "PR AUC", "log loss", "ECE", "lift top 10 %", "fit ROC AUC"):
        quality.add_column(column, justify="left" if column == "scorer" else "right")
    for scorer in ("model", *BASELINES):
        m = result.readiness.metrics[scorer]
        quality.add_row(
            scorer, f"{m['roc_auc']:.4f}", f"{m['pr_auc']:.4f}", f"{m['log_loss']:.4f}", f"{m['ece']:.4f}",
            f"{m['lift_top10']:.2f}", f"{result.fit.metrics[scorer]['roc_auc']:.4f}",
        )  # fmt: skip
    free = result.readiness.unconstrained_roc_auc
    if free is not None:
        quality.add_row("model without direction constraints", f"{free:.4f}", "", "", "", "", "")
    quality.add_row("oracle (simulator truth)", f"{oracle_auc:.4f}", "", "", "", "", "")
    console.print(quality)
    share = versus.get("readiness_auc_share_of_oracle_holdout", math.nan)
    ece = result.readiness.metrics["model"]["ece"]
    beats = all(
        result.readiness.metrics["model"]["roc_auc"] > result.readiness.metrics[b]["roc_auc"] for b in BASELINES
    )
    targets = Table(title="targets")
    for column in ("target", "value", "met"):
        targets.add_column(column)
    targets.add_row(
        f"readiness AUC >= {AUC_SHARE_TARGET} x oracle (same rows)", f"{share:.3f} x", str(share >= AUC_SHARE_TARGET)
    )
    targets.add_row(f"readiness ECE <= {ECE_TARGET}", f"{ece:.4f}", str(ece <= ECE_TARGET))
    targets.add_row("readiness AUC above every baseline", "", str(beats))
    targets.add_row(
        f"pipeline <= {PIPELINE_TARGET_S:.0f} s", f"{pipeline_s:.0f} s", str(pipeline_s <= PIPELINE_TARGET_S)
    )
    console.print(targets)


if __name__ == "__main__":
    app()
