"""A Dask cluster for a job: a local one sized to the machine, or an existing scheduler reached at its address."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from dask.utils import parse_bytes
from distributed import Client, Future, LocalCluster

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a job waits for an existing scheduler to answer before it says so: a mistyped address should not hang.
CONNECT_TIMEOUT_SECONDS = 15


class ClusterError(RuntimeError):
    """The cluster asked for cannot be started or reached; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Where a job runs: `scheduler` (tcp://host:port) for an existing cluster, else a local one of these workers."""

    scheduler: str | None = None
    workers: int | None = None  # local cluster only; default: one per core
    memory_limit: str | None = None  # local cluster only, per worker ("4GB"); default: the machine's memory shared out
    local_directory: str | None = None  # where local workers spill; default: Dask's temporary folder

    def check(self) -> None:
        """Refuse settings no cluster can take, before anything starts."""
        if self.scheduler is not None:
            if not self.scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
                raise ClusterError(f"--scheduler {self.scheduler!r}: give the scheduler's address, as tcp://host:8786")
            if self.workers is not None or self.memory_limit is not None:
                raise ClusterError("--workers and --worker-memory size a local cluster; an existing one has its own")
        if self.workers is not None and self.workers < 1:
            raise ClusterError(f"--workers {self.workers}: at least one worker")
        if self.memory_limit is not None:
            try:
                limit = parse_bytes(self.memory_limit)
            except ValueError:
                raise ClusterError(
                    f"--worker-memory {self.memory_limit!r}: give a size such as 4GB or 512MiB"
                ) from None
            if limit < 256 * 2**20:
                raise ClusterError(f"--worker-memory {self.memory_limit}: at least 256MiB per worker")


def machine_cores() -> int:
    """The cores this process may run on (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def dask_client(spec: ClusterSpec) -> Iterator[Client]:
    """A client of the cluster `spec` names; a local cluster is started here and shut down on leaving."""
    spec.check()
    if spec.scheduler is not None:
        try:
            client = Client(spec.scheduler, timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {spec.scheduler}: {err}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # The scheduler runs in this process: its start-up and shuffle chatter is not the job's output.
    for name, level in (("distributed", logging.WARNING), ("distributed.shuffle", logging.ERROR)):
        logging.getLogger(name).setLevel(max(level, logging.getLogger(name).getEffectiveLevel()))
    workers = spec.workers or machine_cores()
    # One thread per worker process: the feature engine and TreeSHAP hold the GIL in parts, and a process per core
    # spreads them without contention; the memory limit makes a worker spill to disk rather than grow past it.
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=spec.memory_limit or "auto",
        dashboard_address=":0",  # any free port: two jobs on one machine do not compete for 8787
        local_directory=spec.local_directory,
        silence_logs=logging.WARNING,
    )
    log.info("started a local Dask cluster of %d worker(s) at %s", workers, cluster.scheduler_address)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def total_threads(client: Client) -> int:
    """Threads across the cluster's workers (at least one)."""
    return max(1, sum(int(n) for n in client.nthreads().values()))


def _same(value: T) -> T:
    return value


def share(client: Client, value: T) -> Future[T]:
    """`value` on the cluster for many tasks to read, recomputable when every worker holding it dies.

    Not `client.scatter`: scattered data has no lineage, so losing the workers that hold it (the nanny restarts a
    worker past its memory limit) fails the whole job. A task that returns the value keeps it in the scheduler's
    graph, and Dask runs that task again wherever the value is needed after such a loss.
    """
    return client.submit(_same, value, pure=False)
