"""`leadscore score-batch`: rescore every lead of a data set or of the service's store, on a Dask cluster."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from scaleout.cluster import ClusterSpec
    from scaleout.tables import TableSource
    from serving.batch import BatchJob, BatchResult
    from serving.store import PolicyVersion

log = logging.getLogger(__name__)
console = Console()
EXIT_INVALID = 2  # bad input: options, tables or an output that cannot be used; nothing was scheduled
EXIT_UNAVAILABLE = 3  # an input is not there: a file, the model, the store, the scheduler
EXIT_FAILED = 1  # the job started and failed (a partition's data broke the contract, the cluster failed)


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[red]score-batch:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _as_of(text: str | None) -> dt.datetime:
    from serving.batch import default_as_of

    if text is None:
        return default_as_of()
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"--as-of {text!r}: not an ISO 8601 time (such as 2026-12-01T00:00:00Z)", EXIT_INVALID) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _sources(data: str | None, leads: str | None, activities: str | None) -> tuple[TableSource, TableSource]:
    from scaleout.tables import locate, source_of

    if data is not None and (leads is not None or activities is not None):
        raise _fail("give --data, or --leads and --activities, not both", EXIT_INVALID)
    if data is not None:
        return locate(data, "leads"), locate(data, "activities")
    if leads is None or activities is None:
        raise _fail("give the tables to score: --data FOLDER, --leads and --activities, or --store URL", EXIT_INVALID)
    return source_of(leads, "leads"), source_of(activities, "activities")


def _policy(store_url: str | None, version: int | None, default: PolicyVersion) -> PolicyVersion:
    """The routing policy: `version` (or the one in force) of the store; the model's own cut-offs without a store."""
    from serving.store import PolicyStore
    from timeline.export import ExportError, open_store, redact

    if store_url is None:
        if version is not None:
            raise _fail("--policy-version names a version of a store: give --policy-store too", EXIT_INVALID)
        console.print("routing with the model's own cut-offs (thresholds version 0): give --policy-store to route"
                      " as the service does", highlight=False)  # fmt: skip
        return default
    try:
        engine = open_store(store_url)
    except ExportError as err:
        raise _fail(f"--policy-store: {err}", EXIT_UNAVAILABLE) from None
    try:
        policies = PolicyStore(engine)
        found = policies.latest() if version is None else policies.get(version)
    finally:
        engine.dispose()
    if found is None and version is not None:
        raise _fail(f"--policy-version {version}: the store {redact(store_url)} holds no such version", EXIT_INVALID)
    return found or default


def _result_table(result: BatchResult) -> Table:
    table = Table(title="leads by queue")
    table.add_column("queue")
    table.add_column("leads", justify="right")
    for queue, n in sorted(result.queues.items(), key=lambda kv: -kv[1]):
        table.add_row(queue, f"{n:,}")
    return table


def _summary(result: BatchResult) -> str:
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    return (
        f"{result.partitions} partitions on {result.workers} worker(s) in {result.seconds:.1f} s ({rate:,.0f} leads/s)"
    )


def score_batch(
    out: Annotated[str, typer.Option(help="The scores: a .parquet or .csv file (path or fsspec URL), replaced whole.")],
    data: Annotated[
        str | None, typer.Option(help="Folder (path or URL) with leads/ or leads.parquet|csv, and activities.")
    ] = None,
    leads: Annotated[str | None, typer.Option(help="The leads table: Parquet file, folder or glob, or CSV.")] = None,
    activities: Annotated[str | None, typer.Option(help="The activities table, as --leads.")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Score the service store's leads (SQLAlchemy URL) instead of files; open leads by default."),
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Score as of this moment (ISO 8601; default: now, to the second).")
    ] = None,
    open_only: Annotated[
        bool | None,
        typer.Option(
            "--open-only/--all-leads",
            help="Score open leads only (lead, MQL, SAL, recycled), or every lead; default: open for --store, all"
            " for files. Colleagues always count.",
            show_default=False,
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking/registry URI; default as for serve.")
    ] = None,
    model_name: Annotated[str, typer.Option(help="Registered model.")] = "lead-scorer",
    alias: Annotated[str, typer.Option(help="Registry alias of the model to score with.")] = "champion",
    model_version: Annotated[str | None, typer.Option(help="Score with this version instead of the alias.")] = None,
    policy_store: Annotated[
        str | None,
        typer.Option(
            help="Service store whose routing thresholds apply; default: --store, else $LEADSCORE_STORE_URL if set."
        ),
    ] = None,
    policy_version: Annotated[
        int | None, typer.Option(min=1, help="Route under this thresholds version (default: the one in force).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Run on an existing Dask cluster (tcp://host:8786); default: a local one.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Local cluster: worker processes (default: cores).")
    ] = None,
    worker_memory: Annotated[
        str | None, typer.Option(help="Local cluster: memory per worker, e.g. 4GB; past it a worker spills to disk.")
    ] = None,
    in_process: Annotated[bool, typer.Option(help="Score in this process, without Dask (small data).")] = False,
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Account partitions (default: from the input's size and the cores).")
    ] = None,
    top_reasons: Annotated[int, typer.Option(min=1, max=10, help="Reasons per side (fit, behaviour).")] = 3,
) -> None:
    """Score every lead with the champion, as the score API would, and write one row per lead for a CRM bulk import.

    Leads and touches are split into partitions of whole accounts (buying-group features need every colleague), and
    each partition is scored on a Dask cluster by the API's own scorer and routing policy. Nothing is scheduled until
    the options, the tables' columns, the model and the policy have been checked. Exit 2: bad options or input
    (nothing ran); 3: an input, the model, the store or the scheduler is not there; 1: the job failed (the output
    is left as it was).
    """
    from scaleout.cluster import ClusterError, ClusterSpec
    from scaleout.tables import InputError, MissingInputError, check_source
    from serving.batch import BatchError, check_paths, output_kind

    if store is not None and (data or leads or activities):
        raise _fail("give --store or files (--data, --leads, --activities), not both", EXIT_INVALID)
    if in_process and (scheduler or workers or worker_memory):
        raise _fail("--in-process runs without a cluster: leave out --scheduler, --workers and --worker-memory",
                    EXIT_INVALID)  # fmt: skip
    if store is not None and scheduler is not None:
        raise _fail("--store is read into a folder on this machine, which a remote cluster's workers cannot read:"
                    " leave out --scheduler (a local cluster) or give --in-process", EXIT_INVALID)  # fmt: skip
    cluster = None if in_process else ClusterSpec(scheduler, workers, worker_memory)
    try:
        output_kind(out)
        if cluster is not None:
            cluster.check()
    except (BatchError, ClusterError) as err:
        raise _fail(str(err), EXIT_INVALID) from None
    moment = _as_of(as_of)
    job = _job(tracking_uri, model_name, alias, model_version, moment, top_reasons, open_only, store, in_process)
    policy_url = policy_store or store or os.environ.get("LEADSCORE_STORE_URL")
    job = _with_policy(job, _policy(policy_url, policy_version, job.policy))
    with tempfile.TemporaryDirectory(prefix="leadscore-batch-") as tmp:
        try:
            if store is not None:
                lead_source, activity_source = _exported(store, Path(tmp) / "data", job)
            else:
                lead_source, activity_source = _sources(data, leads, activities)
            for source in (lead_source, activity_source):
                check_source(source, job.contract)
            check_paths(out, (lead_source, activity_source))
        except InputError as err:
            raise _fail(str(err), EXIT_UNAVAILABLE if isinstance(err, MissingInputError) else EXIT_INVALID) from None
        except BatchError as err:
            raise _fail(str(err), EXIT_INVALID) from None
        result = _run(job, lead_source, activity_source, out, cluster, partitions)
    console.print(f"scored {result.rows:,} leads into {out}", highlight=False)
    console.print(_result_table(result))
    console.print(_summary(result), highlight=False)


def _job(
    tracking_uri: str | None,
    name: str,
    alias: str,
    version: str | None,
    as_of: dt.datetime,
    top_k: int,
    open_only: bool | None,
    store: str | None,
    in_process: bool,
) -> BatchJob:
    from serving.batch import BatchError, BatchJob
    from serving.model import ModelNotAvailableError, load_model
    from serving.policy import RoutingPolicy
    from serving.settings import Settings
    from serving.settings import tracking_uri as default_tracking_uri
    from serving.store import PolicyVersion

    uri = tracking_uri or default_tracking_uri(Settings())
    try:
        loaded = load_model(uri, name, alias, version)
    except ModelNotAvailableError as err:
        raise _fail(str(err), EXIT_UNAVAILABLE) from None
    default = PolicyVersion(
        0, as_of, "model", "the model's own cut-offs", RoutingPolicy.from_cutoffs(loaded.scorer.cutoffs)
    )
    job = BatchJob(
        scorer=loaded.scorer,
        model_name=name,
        model_version=loaded.version,
        policy=default,
        as_of=as_of,
        top_k=top_k,
        open_only=open_only if open_only is not None else store is not None,
        threads=0 if in_process else 1,
    )
    try:
        job.contract  # noqa: B018 -- refuses an export model here, before anything is read
    except BatchError as err:
        raise _fail(str(err), EXIT_INVALID) from None
    return job


def _with_policy(job: BatchJob, policy: PolicyVersion) -> BatchJob:
    from dataclasses import replace

    return replace(job, policy=policy)


def _exported(store: str, folder: Path, job: BatchJob) -> tuple[TableSource, TableSource]:
    """The store's leads and touches, exported to `folder` as the contract's tables."""
    from sqlalchemy.exc import SQLAlchemyError

    from scaleout.tables import source_of
    from timeline.export import EmptyStoreError, ExportError, export_tables, open_store, redact

    shown = redact(store)
    try:
        engine = open_store(store)
    except ExportError as err:
        raise _fail(f"--store: {err}", EXIT_UNAVAILABLE) from None
    try:
        with console.status(f"reading leads and touches from {shown} ..."):
            export_tables(engine, folder, contract=job.contract, source=shown)
    except EmptyStoreError as err:
        raise _fail(f"--store {shown}: {err}; nothing to score", EXIT_UNAVAILABLE) from None
    except (ExportError, SQLAlchemyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _fail(f"--store {shown}: {first}", EXIT_UNAVAILABLE) from None
    finally:
        engine.dispose()
    return source_of(str(folder / "leads"), "leads"), source_of(str(folder / "activities"), "activities")


def _run(
    job: BatchJob,
    leads: TableSource,
    activities: TableSource,
    out: str,
    cluster: ClusterSpec | None,
    partitions: int | None,
) -> BatchResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from features.validation import ContractError
    from scaleout.cluster import ClusterError
    from serving.batch import score_in_process, score_on_cluster

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task("scoring partitions", total=None)

        def progress(done: int, total: int, rows: int) -> None:
            bar.update(task, completed=done, total=total, description=f"scoring partitions ({rows:,} leads)")

        try:
            if cluster is not None:
                return score_on_cluster(job, leads, activities, out, cluster, partitions=partitions, progress=progress)
            return score_in_process(job, leads, activities, out, partitions=partitions, progress=progress)
        except ClusterError as err:
            raise _fail(str(err), EXIT_UNAVAILABLE) from None
        except ContractError as err:
            raise _fail(f"the data break the contract; {out} was not written:\n{err}", EXIT_FAILED) from None
