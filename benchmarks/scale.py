"""Benchmark: bulk rescoring and training at 1 M and 5 M leads, in one process and on a local Dask cluster."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import resource
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.measure import peak_rss_mb
from features.validation import validate_activities, validate_leads
from scaleout.cluster import ClusterSpec, dask_client
from scaleout.tables import source_of
from serving.batch import BatchJob, score_in_process, score_on_cluster
from serving.model import load_model
from serving.policy import RoutingPolicy
from serving.store import PolicyVersion
from training.cluster_dataset import build_on_cluster
from training.config import SimulationConfig, TrainConfig
from training.data import read_table
from training.dataset import build_training_set
from training.pipeline import train_models
from training.simulator import write_simulation

log = logging.getLogger("benchmarks.scale")
app = typer.Typer(add_completion=False)
DEFAULT_OUT = Path("benchmarks/out")
DEFAULT_WORKER_MEMORY = "4GB"
# The out-of-core case: 5 M leads and about 100 M touches, on workers of 4 GB.
DEFAULT_SIZES = "1000000,5000000"
# Above this many leads the one-process runs are skipped: their tables alone outgrow a 24 GB machine.
IN_PROCESS_MAX_LEADS = 1_000_000


def _data(out: Path, leads: int) -> tuple[Path, float]:
    """The simulated funnel of `leads` leads (cached), and the seconds simulating it took (nan when cached)."""
    folder = out / f"sim-{leads}"
    if (folder / "leads").is_dir() and (folder / "DONE").exists():
        return folder, math.nan
    start = time.perf_counter()
    write_simulation(SimulationConfig(n_leads=leads, oracle_max_rows=0), folder)
    (folder / "DONE").write_text("")
    return folder, time.perf_counter() - start


def _job(uri: str, threads: int) -> Any:

    loaded = load_model(uri, "lead-scorer", "champion")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    policy = PolicyVersion(0, now, "benchmark", "defaults", RoutingPolicy.from_cutoffs(loaded.scorer.cutoffs))
    return BatchJob(loaded.scorer, "lead-scorer", loaded.version, policy, now, threads=threads)


def _sources(folder: Path) -> tuple[Any, Any]:

    return source_of(str(folder / "leads"), "leads"), source_of(str(folder / "activities"), "activities")


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score(folder: str, uri: str, mode: str, workers: int, memory: str, spill: str) -> dict[str, float]:
    """One rescoring run in a fresh process: rows, seconds, this process's and each worker's peak memory."""
    leads, activities = _sources(Path(folder))
    with tempfile.TemporaryDirectory(dir=spill) as tmp:
        out = str(Path(tmp) / "scores.parquet")
        peaks: dict[str, float] = {}
        if mode == "process":
            result = score_in_process(_job(uri, 0), leads, activities, out)
        else:
            client_box: dict[str, Any] = {}

            def remember(client: Any) -> None:
                client_box["client"] = client

            def sample(done: int, total: int, rows: int) -> None:
                if done == total:  # the workers' peaks, before the cluster goes away
                    peaks.update(client_box["client"].run(_worker_peak_mb))

            spec = ClusterSpec(None, workers, memory, local_directory=spill)
            result = score_on_cluster(_job(uri, 1), leads, activities, out, spec, progress=sample, on_start=remember)
    return {
        "rows": float(result.rows),
        "seconds": result.seconds,
        "partitions": float(result.partitions),
        "client_peak_mb": peak_rss_mb(),
        "worker_peak_mb": max(peaks.values(), default=math.nan),
    }


def _train(folder: str, mode: str, workers: int, memory: str, spill: str) -> dict[str, float]:
    """Building the training set and training both models in a fresh process (MLflow logging left out)."""
    start = time.perf_counter()
    peaks: dict[str, float] = {}
    if mode == "process":
        leads = validate_leads(read_table(Path(folder) / "leads"))
        activities = validate_activities(read_table(Path(folder) / "activities"), leads)
        training_set = build_training_set(leads, activities)
        del activities
    else:
        with dask_client(ClusterSpec(None, workers, memory, local_directory=spill)) as client:
            built = build_on_cluster(client, *_sources(Path(folder)))
            peaks.update(client.run(_worker_peak_mb))
        training_set, leads = built.training_set, built.leads
    features_s = time.perf_counter() - start
    train_models(training_set, leads, TrainConfig(), shap_rows=2000)
    return {
        "rows": float(len(training_set.readiness)),
        "features_s": features_s,
        "seconds": time.perf_counter() - start,
        "client_peak_mb": peak_rss_mb(),
        "worker_peak_mb": max(peaks.values(), default=math.nan),
    }


def _fresh(func: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def _mb(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f} MB"


@app.command()
def main(
    sizes: Annotated[str, typer.Option(help="Lead counts to run, comma-separated (about 20 touches each).")] = (
        DEFAULT_SIZES
    ),
    out: Annotated[Path, typer.Option(help="Cache folder for the simulated data and the model.")] = DEFAULT_OUT,
    workers: Annotated[int, typer.Option(min=1, help="Workers of the local cluster.")] = 2,
    worker_memory: Annotated[str, typer.Option(help="Memory limit per worker (past it, a worker spills).")] = (
        DEFAULT_WORKER_MEMORY
    ),
    rescore: Annotated[bool, typer.Option(help="Time rescoring (one process and cluster).")] = True,
    train: Annotated[bool, typer.Option(help="Time training on the cluster too.")] = True,
    train_in_process: Annotated[
        bool, typer.Option(help="Also time training in one process, up to 1 M leads (the train benchmark's figure).")
    ] = False,
    tracking_uri: Annotated[
        str, typer.Option(help="Registry whose lead-scorer@champion rescores (the quickstart's, by default).")
    ] = "sqlite:///mlflow.db",
    results: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Print rescoring rows/s (one process vs a local cluster), peak memory per worker, and training time."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spill = str(out / "spill")
    Path(spill).mkdir(parents=True, exist_ok=True)
    counts = [int(s) for s in sizes.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    uri = tracking_uri
    for n in counts:
        folder, simulated = _data(out, n)
        log.info("%d leads: simulated in %s s", n, simulated)
        runs: list[tuple[str, str, Callable[..., dict[str, float]], tuple[Any, ...]]] = []
        if rescore and n <= IN_PROCESS_MAX_LEADS:
            runs.append(
                ("rescore", "process", _score, (str(folder), uri, "process", workers, worker_memory, str(spill)))
            )
        if rescore:
            runs.append(("rescore", "cluster", _score, (str(folder), uri, "cluster", workers, worker_memory, spill)))
        if train:
            if train_in_process and n <= IN_PROCESS_MAX_LEADS:
                runs.append(("train", "process", _train, (str(folder), "process", workers, worker_memory, spill)))
            runs.append(("train", "cluster", _train, (str(folder), "cluster", workers, worker_memory, spill)))
        for what, mode, func, args in runs:
            log.info("%d leads: %s in %s", n, what, mode)
            try:
                figures = _fresh(func, *args)
            except Exception as err:  # a run that fails is a figure of the table, not the end of the benchmark
                log.exception("%s %s at %d leads failed", what, mode, n)
                figures = {"error": str(err)[:80]}  # type: ignore[dict-item]
            rows.append({"leads": n, "what": what, "mode": mode, **figures})
            log.info("%s", rows[-1])
    if results is not None:
        results.write_text(json.dumps(rows, indent=2))
    _print(rows, workers, worker_memory)


def _print(rows: list[dict[str, Any]], workers: int, memory: str) -> None:
    table = Table(title=f"scale-out benchmark: one process vs a local cluster of {workers} workers of {memory}")
    for column in ("leads", "measure", "one process", f"cluster ({workers} workers)", "ratio", "peak per worker",
                   "peak, driving process"):  # fmt: skip
        table.add_column(column, justify="left" if column == "measure" else "right")
    by = {(r["leads"], r["what"], r["mode"]): r for r in rows}
    for n in sorted({r["leads"] for r in rows}):
        for what in ("rescore", "train"):
            one, many = by.get((n, what, "process"), {}), by.get((n, what, "cluster"), {})
            if not many:
                continue

            def cell(run: dict[str, Any], what: str = what) -> str:
                if "error" in run:
                    return f"failed: {run['error']}"
                if not run:
                    return "not run" if what == "train" else "not run (does not fit one machine)"
                if what == "rescore":
                    return f"{run['rows'] / run['seconds']:,.0f} leads/s ({run['seconds']:.0f} s)"
                return f"{run['seconds']:.0f} s (features {run['features_s']:.0f} s)"

            ratio = ""
            if one and "error" not in one and "error" not in many:
                ratio = f"{one['seconds'] / many['seconds']:.2f}x"
            label = "rescore every lead" if what == "rescore" else f"train ({int(many.get('rows', 0)):,} snapshots)"
            table.add_row(
                f"{n:,}", label, cell(one), cell(many), ratio, _mb(many.get("worker_peak_mb", math.nan)),
                _mb(many.get("client_peak_mb", math.nan)),
            )  # fmt: skip
    Console(width=200).print(table)


if __name__ == "__main__":
    app()
