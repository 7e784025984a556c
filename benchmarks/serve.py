"""Benchmark: our score service against `mlflow models serve` on the same model, leads, workers and machine."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
import uvloop
from rich.console import Console
from rich.table import Table

from features.spec import LEADS
from serving.settings import Settings
from training.config import SimulationConfig
from training.data import load_tables
from training.simulator import write_simulation

log = logging.getLogger("benchmarks.serve")
app = typer.Typer(add_completion=False)

HOST = "127.0.0.1"  # the load generator never leaves the machine
MODEL_URI = "models:/lead-scorer@champion"
API_KEY = "bench-key"
DEMO_LEADS = 5000  # enough for 1,000 leads with 20-50 touches, small enough to train in about a minute
TOUCHES = (20, 50)  # activities per benchmarked lead: a lead worth scoring has a history
BATCH_LEADS = 1000  # the service's default batch limit
SANITY_LEADS = 5  # leads scored by both servers and compared before timing
CONCURRENCY = (1, 16)
MAX_REQUESTS = 100_000  # a measurement stops after `seconds` or this many requests, whichever comes first
BATCH_REPEATS = 5  # timed batches per server at most (also bounded by `seconds`)
# Connections are opened afresh, at most this many times, until every worker holds at least this share of its
# fair part of them (16 connections on 2 workers: 4 each at least); each try waits this long for the accepts.
REOPEN_TRIES = 10
MIN_SHARE = 0.5
ACCEPT_SECONDS = 2.0
WARMUP_SECONDS = 1.0  # untimed traffic on the open connections before each measurement
GRACE_SECONDS = 120.0  # a measurement that overruns its time by this much is a hung server, not a slow one
READY_SECONDS = 300.0  # start-up bound: model download and load, per server
QUICKSTART_SECONDS = 1800.0
STOP_SECONDS = 15.0  # after SIGTERM, then SIGKILL
BUSY_CORES = 0.2  # other processes using more than this many cores while we measure make the figures doubtful
PING_TIMEOUT_S = 2.0
STARTED = b"Application startup complete."  # uvicorn logs this once per worker, after the app's lifespan start-up
# Targets: ours/MLflow ratios for throughput, an absolute bound for the single-lead median.
C16_RATIO_TARGET = 30.0
C1_P50_TARGET_MS = 2.0
BATCH_RATIO_TARGET = 3.0


@dataclass(frozen=True)
class Workload:
    """The same leads, as of the same time, encoded for both servers (complete HTTP/1.1 requests)."""

    ours_single: list[bytes]
    mlflow_single: list[bytes]
    ours_batch: bytes
    mlflow_batch: bytes
    ours_sanity: list[bytes]
    mlflow_sanity: bytes
    lead_ids: list[str]
    mean_touches: float
    as_of: dt.datetime


@dataclass
class Measurement:
    """One timed run of the load generator against one server."""

    latencies_ns: list[int]
    statuses: Counter[int]
    seconds: float
    client_cpu: float  # share of one core the load generator used; near 1.0 means it may be the bottleneck
    spread: tuple[int, ...] = ()  # the connections each worker held, most first (empty: not known)
    reopened: int = 0  # times the connections were opened afresh because they were spread unevenly

    @property
    def requests(self) -> int:
        """Requests completed (any status)."""
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        """Latency percentile `q` (0-100) in milliseconds."""
        return float(np.percentile(np.asarray(self.latencies_ns), q)) / 1e6

    @property
    def errors(self) -> int:
        """Non-2xx responses; status 0 counts transport failures (reset or closed connections)."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @classmethod
    def pooled(cls, rounds: Sequence[Measurement]) -> Measurement:
        """The rounds as one measurement: all requests over all their time."""
        seconds = sum(m.seconds for m in rounds)
        return cls(
            latencies_ns=[ns for m in rounds for ns in m.latencies_ns],
            statuses=sum((m.statuses for m in rounds), Counter()),
            seconds=seconds,
            client_cpu=sum(m.client_cpu * m.seconds for m in rounds) / seconds,
            reopened=sum(m.reopened for m in rounds),
        )


@dataclass
class ServerResult:
    """Everything measured against one server, round by round."""

    name: str
    workers_started: int
    single: dict[int, list[Measurement]] = field(default_factory=dict)
    batch: list[Measurement] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)  # per round: CPU of processes other than these two

    def pooled_single(self, concurrency: int) -> Measurement:
        """Single-lead requests at `concurrency`, all rounds pooled."""
        return Measurement.pooled(self.single[concurrency])

    def pooled_batch(self) -> Measurement:
        """Batches, all rounds pooled."""
        return Measurement.pooled(self.batch)


class ProtocolError(RuntimeError):
    """The server answered something this minimal HTTP/1.1 client cannot read."""


# --- the load generator: a minimal HTTP/1.1 keep-alive client ----------------------------------------------------
# It shares the machine with the servers, so it runs on uvloop: every core-second it spends is taken from them.


def http_request(path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """A complete POST request, encoded once so that the timed loop only writes bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """Send one request on a kept-alive connection and read the whole response: (status, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].split(b"\r\n")
    length: int | None = None
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ProtocolError(f"response without Content-Length: {status_line!r}")
    return int(status_line.split(b" ", 2)[1]), await reader.readexactly(length)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def drive(
    port: int, connections: list[Connection], requests: Sequence[bytes], *, seconds: float, max_requests: int
) -> Measurement:
    """Closed loop: each connection sends its next request as soon as the previous answer is in."""
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    deadline = start + seconds
    cpu_start = time.process_time()

    async def user(k: int) -> None:
        i = k
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            request = requests[i % len(requests)]
            i += len(connections)
            sent = time.perf_counter_ns()
            try:
                status, _ = await exchange(*connections[k], request)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 0
                connections[k][1].close()
                connections[k] = await asyncio.open_connection(HOST, port)
            latencies.append(time.perf_counter_ns() - sent)
            statuses[status] += 1

    users = asyncio.gather(*(user(k) for k in range(len(connections))))
    await asyncio.wait_for(users, timeout=seconds + GRACE_SECONDS)
    elapsed = time.perf_counter() - start
    return Measurement(latencies, statuses, elapsed, (time.process_time() - cpu_start) / elapsed)


Spread = Callable[[], tuple[int, ...] | None]  # connections per worker of the server now, most first


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    seconds: float,
    max_requests: int,
    warmup: int,
    spread: Spread | None = None,
    workers: int = 1,
) -> Measurement:
    """Open `concurrency` connections, warm them up (untimed), then measure.

    uvicorn's workers share one listening socket, and the first to wake accepts every connection waiting. The load
    generator opens its connections within a millisecond, so at times one worker gets all or nearly all of them,
    and the round measures one worker rather than the server: MLflow then answers half as many requests. With
    `spread`, connections are opened afresh (a few times at most) until each worker holds at least MIN_SHARE of its
    fair part; both servers get the same rule, and the spread is kept with the measurement.
    """
    connections: list[Connection] = []
    held: tuple[int, ...] | None = None
    reopened = 0
    try:
        for attempt in range(REOPEN_TRIES):
            connections = [await asyncio.open_connection(HOST, port) for _ in range(concurrency)]
            if spread is None or concurrency < workers:
                break
            held = await _accepted(spread, concurrency)
            if held is None or is_balanced(held, concurrency, workers):
                break
            if attempt == REOPEN_TRIES - 1:
                log.warning("port %d: connections stayed unevenly spread over the workers after %d tries: %s",
                            port, REOPEN_TRIES, list(held))  # fmt: skip
                break
            reopened += 1
            _close(connections)
            connections = []
        await drive(port, connections, requests, seconds=WARMUP_SECONDS, max_requests=warmup)
        m = await drive(port, connections, requests, seconds=seconds, max_requests=max_requests)
        return dataclasses.replace(m, spread=held or (), reopened=reopened)
    finally:
        _close(connections)


async def _accepted(spread: Spread, concurrency: int) -> tuple[int, ...] | None:
    """The connections per worker once the server has accepted all `concurrency` (None: cannot tell)."""
    deadline = time.monotonic() + ACCEPT_SECONDS
    while True:
        held = spread()
        if held is None or sum(held) >= concurrency or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.01)


def is_balanced(held: tuple[int, ...], concurrency: int, workers: int) -> bool:
    """Every worker holds at least MIN_SHARE of its fair part of the connections."""
    return len(held) >= workers and min(held) >= MIN_SHARE * concurrency / workers


def _close(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.close()


async def send_once(port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a fresh connection (sanity checks, not timed)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return await asyncio.wait_for(exchange(reader, writer, request), timeout=GRACE_SECONDS)
    finally:
        writer.close()


# --- the workload --------------------------------------------------------------------------------------------------


def _stamp(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()


def _lead_fields(lead: Mapping[Hashable, Any], as_of: pd.Timestamp) -> dict[str, Any]:
    """Contract columns with JSON types; lifecycle stamps from as_of on are not known yet, so they are left out."""
    out: dict[str, Any] = {}
    for col in LEADS.columns:
        value = lead[col.name]
        if pd.isna(value):
            out[col.name] = None
        elif col.dtype == "datetime":
            out[col.name] = _stamp(value) if value < as_of else None
        elif col.dtype == "int":
            out[col.name] = int(value)
        elif col.dtype == "float":
            out[col.name] = float(value)
        else:
            out[col.name] = str(value)
    return out


def compact_json(value: Any) -> bytes:
    """JSON without spaces, as bytes: the request bodies as a client library sends them."""
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class DemoLeads:
    """Simulated leads with 20-50 touches as request bodies for both servers, all scored as of the same time."""

    lead_ids: list[str]
    ours: list[dict[str, Any]]  # POST /v1/score bodies
    mlflow_rows: list[list[Any]]  # rows of the pyfunc's dataframe_split, in `columns` order
    columns: list[str]
    touches: list[int]  # activities per lead
    as_of: pd.Timestamp


def demo_leads(data_dir: Path, count: int = BATCH_LEADS) -> DemoLeads:
    """The first `count` simulated leads with 20-50 touches, scored as of the day after the last touch."""
    leads, activities = load_tables(data_dir)
    as_of = activities["occurred_at"].max().ceil("D")
    counts = activities.groupby("lead_id").size()
    eligible = sorted(str(k) for k in counts[(counts >= TOUCHES[0]) & (counts <= TOUCHES[1])].index)
    if len(eligible) < count:
        raise RuntimeError(
            f"{data_dir} has {len(eligible)} leads with {TOUCHES[0]}-{TOUCHES[1]} activities; {count} needed"
        )
    chosen = eligible[:count]
    touches = activities[activities["lead_id"].isin(chosen)].sort_values(["lead_id", "occurred_at"])
    by_lead = {
        str(k): [{"occurred_at": _stamp(t), "activity_type": str(a)} for t, a in
                 zip(g["occurred_at"], g["activity_type"], strict=True)]
        for k, g in touches.groupby("lead_id", observed=True)
    }  # fmt: skip
    profiles = leads.set_index("lead_id", drop=False).loc[chosen]
    as_of_text = as_of.isoformat()
    ours: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    columns = [*LEADS.names, "as_of", "activities", "colleagues"]
    for lead_id, profile in zip(chosen, profiles.to_dict(orient="records"), strict=True):
        fields = _lead_fields(profile, as_of)
        lead = {k: v for k, v in fields.items() if v is not None} | {"custom": {}}
        ours.append({"lead": lead, "activities": by_lead[lead_id], "colleagues": [], "as_of": as_of_text})
        # The pyfunc signature types the contract's numbers as doubles and takes the lists as JSON strings.
        numbers = {c.name for c in LEADS.columns if c.dtype in ("int", "float")}
        row = [float(fields[c]) if c in numbers and fields[c] is not None else fields[c] for c in LEADS.names]
        rows.append([*row, as_of_text, json.dumps(by_lead[lead_id]), "[]"])
    return DemoLeads(chosen, ours, rows, columns, [len(by_lead[k]) for k in chosen], as_of)


def build_workload(data_dir: Path) -> Workload:
    """The first 1,000 simulated leads with 20-50 touches, scored as of the day after the last touch."""
    demo = demo_leads(data_dir)
    ours, rows = demo.ours, demo.mlflow_rows
    key = {"X-API-Key": API_KEY}

    def split(part: list[list[Any]]) -> bytes:
        return compact_json({"dataframe_split": {"columns": demo.columns, "data": part}})

    return Workload(
        ours_single=[http_request("/v1/score", compact_json(r), key) for r in ours],
        mlflow_single=[http_request("/invocations", split([row]), {}) for row in rows],
        ours_batch=http_request("/v1/score/batch", compact_json({"leads": ours}), key),
        mlflow_batch=http_request("/invocations", split(rows), {}),
        ours_sanity=[http_request("/v1/score", compact_json(r), key) for r in ours[:SANITY_LEADS]],
        mlflow_sanity=http_request("/invocations", split(rows[:SANITY_LEADS]), {}),
        lead_ids=demo.lead_ids,
        mean_touches=float(np.mean(demo.touches)),
        as_of=demo.as_of.to_pydatetime(),
    )


# --- the servers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PING_TIMEOUT_S) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass(frozen=True)
class Server:
    """A started server: its port, process group and the workers that completed start-up."""

    port: int
    pgid: int
    workers_started: int


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process) from /proc; (0, 0) where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime


def connections_per_process(pgid: int, port: int) -> tuple[int, ...] | None:
    """Established connections to `port` that each process of a group holds, most first; None without /proc.

    A worker that holds none is missing from the result: compare its length with the number of workers.
    """
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    local = f":{port:04X}"
    # Columns: sl, local address, remote address, state (01: established), ..., inode (the tenth).
    inodes = {f"socket:[{f[9]}]" for f in (line.split() for line in table) if f[1].endswith(local) and f[3] == "01"}
    held: list[int] = []
    for pid in group_stats(pgid):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # exited meanwhile
        n = 0
        for fd in fds:
            try:
                n += os.readlink(fd) in inodes
            except OSError:
                continue  # closed meanwhile
        if n:
            held.append(n)
    return tuple(sorted(held, reverse=True))


def group_stats(pgid: int) -> dict[int, list[str]]:
    """The /proc stat fields (after the command name) of the live processes in a process group."""
    stats = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(stat[2]) == pgid:
            stats[int(entry.name)] = stat
    return stats


def _group_ticks(pgid: int) -> int:
    """CPU ticks (user + system) of the live processes in a process group."""
    return sum(int(stat[11]) + int(stat[12]) for stat in group_stats(pgid).values())


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn's parent and workers), SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.1)
        log.warning("process group %d still alive %.0f s after %s", process.pid, STOP_SECONDS, sig.name)
    process.wait(timeout=STOP_SECONDS)


@contextmanager
def running(
    name: str, command: list[str], env: Mapping[str, str], *, cwd: Path, port: int, probe_path: str, workers: int
) -> Iterator[Server]:
    """Start a server in its own process group, wait until all its workers are up, and always stop it."""
    log_path = cwd / f"{name.lower()}-server.log"
    probe = f"http://{HOST}:{port}{probe_path}"
    log.info("starting %s: %s (log %s)", name, " ".join(command), log_path)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + READY_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} during start-up:\n{_tail(log_path)}")
                if _answers(probe) and log_path.read_bytes().count(STARTED) >= workers:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {READY_SECONDS:.0f} s:\n{_tail(log_path)}")
                time.sleep(0.25)
            started = log_path.read_bytes().count(STARTED)
            log.info("%s ready: %d workers started", name, started)
            yield Server(port, process.pid, started)
        finally:
            _stop(process)
            log.info("%s stopped", name)


def server_env(tracking_uri: str, extra: Mapping[str, str]) -> dict[str, str]:
    """A server's environment: ours minus LEADSCORE_* and MLFLOW_* settings, plus the registry and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEADSCORE_", "MLFLOW_"))}
    # MLflow starts `uvicorn` from PATH: the one beside this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env | {"MLFLOW_TRACKING_URI": tracking_uri} | dict(extra)


# --- the benchmark -------------------------------------------------------------------------------------------------


def measure_round(result: ServerResult, server: Server, single: list[bytes], batch: bytes, seconds: float) -> None:
    """One round against one server: single-lead requests at each concurrency, then 1,000-lead batches in turn."""
    port, name = server.port, result.name
    start, machine, own, group = time.perf_counter(), *_cpu_ticks(), _group_ticks(server.pgid)
    for concurrency in CONCURRENCY:
        m = uvloop.run(
            closed_loop(
                port, single, concurrency=concurrency, seconds=seconds, max_requests=MAX_REQUESTS, warmup=MAX_REQUESTS,
                spread=functools.partial(connections_per_process, server.pgid, port), workers=server.workers_started,
            )
        )  # fmt: skip
        result.single.setdefault(concurrency, []).append(m)
        log.info(
            "%s c=%d: %d requests, %.1f req/s, p50 %.2f ms, p99 %.2f ms, %d non-2xx, load generator %.0f%% of a core, "
            "connections per worker %s (opened afresh %d times)",
            name, concurrency, m.requests, m.rate, m.percentile_ms(50), m.percentile_ms(99), m.errors,
            100 * m.client_cpu, list(m.spread) or "unknown", m.reopened,
        )  # fmt: skip
    m = uvloop.run(closed_loop(port, [batch], concurrency=1, seconds=seconds, max_requests=BATCH_REPEATS, warmup=1))
    result.batch.append(m)
    machine_end, own_end = _cpu_ticks()
    other = (machine_end - machine) - (own_end - own) - (_group_ticks(server.pgid) - group)
    if machine:
        cores = other / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - start)
        result.other_cores.append(cores)
        if cores > BUSY_CORES:
            log.warning("other processes used %.2f cores while %s was measured", cores, name)
    log.info(
        "%s batch: %d x %d leads, %.0f rows/s, %.2f s per batch (median), %d non-2xx",
        name, m.requests, BATCH_LEADS, m.rate * BATCH_LEADS, m.percentile_ms(50) / 1e3, m.errors,
    )  # fmt: skip


def _sanity_ours(port: int, requests: list[bytes]) -> list[float]:
    probabilities = []
    for request in requests:
        status, body = asyncio.run(send_once(port, request))
        if status != 200:
            raise RuntimeError(f"our server answered {status} to a benchmark lead: {body[:500]!r}")
        probabilities.append(float(json.loads(body)["fit"]["probability"]))
    return probabilities


def _sanity_mlflow(port: int, request: bytes) -> list[float]:
    status, body = asyncio.run(send_once(port, request))
    if status != 200:
        raise RuntimeError(f"MLflow answered {status} to the benchmark leads: {body[:500]!r}")
    return [round(float(p["fit_probability"]), 6) for p in json.loads(body)["predictions"]]


def simulate_demo(data_dir: Path) -> None:
    """Simulated demo leads for the request bodies, when the model comes from an existing registry."""
    log.info("simulating %d demo leads into %s for the request bodies", DEMO_LEADS, data_dir)
    write_simulation(SimulationConfig(n_leads=DEMO_LEADS, oracle_max_rows=0), data_dir)


def quickstart(root: Path) -> str:
    """Train and promote a demo model with `leadscore quickstart` under `root`; its tracking URI."""
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "leadscore", "quickstart", "--leads", str(DEMO_LEADS),
        "--workdir", str(root / "demo"), "--tracking-uri", tracking_uri,
    ]  # fmt: skip
    log_path = root / "quickstart.log"
    log.info("training and promoting a model: %s (cwd %s, log %s)", " ".join(command), root, log_path)
    start = time.perf_counter()
    with log_path.open("wb") as log_file:
        done = subprocess.run(
            command, cwd=root, env=server_env(tracking_uri, {}), stdout=log_file, stderr=subprocess.STDOUT,
            timeout=QUICKSTART_SECONDS, check=False, start_new_session=True,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"quickstart failed with {done.returncode}:\n{_tail(log_path)}")
    log.info("quickstart done in %.0f s", time.perf_counter() - start)
    return tracking_uri


def _fmt_rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _errors(m: Measurement) -> str:
    detail = ", ".join(f"{'no answer' if s == 0 else s}: {n}" for s, n in sorted(m.statuses.items()) if s // 100 != 2)
    return f"{m.errors:,} of {m.requests:,}" + (f" ({detail})" if detail else "")


def _spread(ratios: Sequence[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""


def report(ours: ServerResult, theirs: ServerResult, work: Workload, notes: dict[str, str]) -> None:
    """The comparison table (all rounds pooled, with the spread of the per-round ratios), then how it was measured."""
    rounds = len(ours.batch)
    table = Table(title=f"score service vs mlflow models serve (same model, leads, as_of, workers; {rounds} rounds)")
    for column in ("measure", "ours", "MLflow", "ours/MLflow", "per round", "target", "met"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    def row(
        label: str, a: float, b: float, per_round: Sequence[float] = (), *, ms: bool = False, target: str = "",
        met: bool | None = None,
    ) -> None:  # fmt: skip
        shown = (f"{a:.2f}", f"{b:.2f}") if ms else (_fmt_rate(a), _fmt_rate(b))
        verdict = "" if met is None else ("yes" if met else "NO")
        table.add_row(label + (" (ms)" if ms else ""), *shown, f"{a / b:.2f}x", _spread(per_round), target, verdict)

    for c in CONCURRENCY:
        a, b = ours.pooled_single(c), theirs.pooled_single(c)
        ratios = [x.rate / y.rate for x, y in zip(ours.single[c], theirs.single[c], strict=True)]
        if c == CONCURRENCY[-1]:
            met = a.rate / b.rate >= C16_RATIO_TARGET
            row(f"single lead, c={c}: req/s", a.rate, b.rate, ratios, target=f">= {C16_RATIO_TARGET:.0f}x", met=met)
        else:
            row(f"single lead, c={c}: req/s", a.rate, b.rate, ratios)
        p50 = a.percentile_ms(50)
        if c == CONCURRENCY[0]:
            target = f"<= {C1_P50_TARGET_MS:.0f} ms (ours)"
            row(f"single lead, c={c}: p50", p50, b.percentile_ms(50), ms=True, target=target,
                met=p50 <= C1_P50_TARGET_MS)  # fmt: skip
        else:
            row(f"single lead, c={c}: p50", p50, b.percentile_ms(50), ms=True)
        row(f"single lead, c={c}: p99", a.percentile_ms(99), b.percentile_ms(99), ms=True)
    a_batch, b_batch = ours.pooled_batch(), theirs.pooled_batch()
    a_rows, b_rows = a_batch.rate * BATCH_LEADS, b_batch.rate * BATCH_LEADS
    ratios = [x.rate / y.rate for x, y in zip(ours.batch, theirs.batch, strict=True)]
    label = f"batch of {BATCH_LEADS:,}, c=1"
    row(f"{label}: rows/s", a_rows, b_rows, ratios, target=f">= {BATCH_RATIO_TARGET:.0f}x",
        met=a_rows / b_rows >= BATCH_RATIO_TARGET)  # fmt: skip
    row(f"{label}: p50 per batch", a_batch.percentile_ms(50), b_batch.percentile_ms(50), ms=True)
    for c in CONCURRENCY:
        table.add_row(f"non-2xx, single c={c}", _errors(ours.pooled_single(c)), _errors(theirs.pooled_single(c)),
                      "", "", "", "")  # fmt: skip
    table.add_row("non-2xx, batch", _errors(a_batch), _errors(b_batch), "", "", "", "")

    setup = Table(title="setup", show_header=False)
    setup.add_column("what")
    setup.add_column("value")
    setup.add_row("workers", f"ours {ours.workers_started} started; MLflow {theirs.workers_started} started")
    setup.add_row("leads", f"{len(work.lead_ids):,} leads, mean {work.mean_touches:.1f} activities each (20-50)")
    setup.add_row("as_of", work.as_of.isoformat())
    load = ", ".join(
        f"{r.name} c={c} {100 * r.pooled_single(c).client_cpu:.0f}%" for r in (ours, theirs) for c in CONCURRENCY
    )
    setup.add_row("load generator CPU (of one core)", load)
    c = CONCURRENCY[-1]
    spreads = "; ".join(
        f"{r.name} {' '.join(str(list(m.spread)) for m in r.single[c]) or 'unknown'}"
        f" (opened afresh {r.pooled_single(c).reopened} times)"
        for r in (ours, theirs)
    )
    setup.add_row(f"connections per worker, c={c}, by round", spreads)
    others = ", ".join(f"while {r.name} ran {max(r.other_cores, default=math.nan):.2f}" for r in (ours, theirs))
    setup.add_row("CPU used by other processes (cores, worst round)", f"{others} (of {os.cpu_count()})")
    for key, value in notes.items():
        setup.add_row(key, value)
    console = Console(width=170)
    console.print(table)
    console.print(setup)


@dataclass(frozen=True)
class Contender:
    """A server to start: its name, command, environment, readiness probe and the requests it is sent."""

    name: str
    command: list[str]
    env: dict[str, str]
    probe_path: str
    single: list[bytes]
    batch: bytes


def _contenders(
    root: Path, tracking_uri: str, ours_env: dict[str, str], work: Workload, workers: int
) -> list[Contender]:
    ours_port, mlflow_port = free_port(), free_port()
    return [
        Contender(
            "ours",
            [sys.executable, "-m", "leadscore", "serve", "--port", str(ours_port), "--workers", str(workers)],
            server_env(tracking_uri, ours_env), "/readyz", work.ours_single, work.ours_batch,
        ),
        Contender(
            "MLflow",
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
             "--host", HOST, "--port", str(mlflow_port), "--workers", str(workers)],
            server_env(tracking_uri, {}), "/ping", work.mlflow_single, work.mlflow_batch,
        ),
    ]  # fmt: skip


def _port(command: list[str]) -> int:
    return int(command[command.index("--port") + 1])


def _bench(
    root: Path, contenders: list[Contender], work: Workload, workers: int, seconds: float, rounds: int
) -> tuple[ServerResult, ServerResult, float]:
    """Start both servers, check they agree, then measure them in alternating order, round after round.

    Both stay up throughout (an idle server costs nothing): the machine's speed drifts over minutes, and
    alternating short rounds exposes both servers to the same drift, so the pooled ratio is the fair one.
    """
    with ExitStack() as stack:
        servers = [
            stack.enter_context(running(c.name, c.command, c.env, cwd=root, port=_port(c.command),
                                        probe_path=c.probe_path, workers=workers))
            for c in contenders
        ]  # fmt: skip
        ours_p = _sanity_ours(servers[0].port, work.ours_sanity)
        mlflow_p = _sanity_mlflow(servers[1].port, work.mlflow_sanity)
        results = [ServerResult(c.name, s.workers_started) for c, s in zip(contenders, servers, strict=True)]
        for k in range(rounds):
            order = [0, 1] if k % 2 == 0 else [1, 0]
            for i in order:
                log.info("round %d of %d: %s", k + 1, rounds, contenders[i].name)
                measure_round(results[i], servers[i], contenders[i].single, contenders[i].batch, seconds)
    gap = max(abs(a - b) for a, b in zip(ours_p, mlflow_p, strict=True))
    return results[0], results[1], gap


@app.command()
def main(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes for each server.")] = 2,
    seconds: Annotated[float, typer.Option(min=1.0, help="Time bound of each measurement in a round.")] = 5.0,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds, each measuring both servers (order alternates).")] = 3,
    tracking_uri: Annotated[
        str | None, typer.Option(help=f"Existing store with {MODEL_URI}; default: train one in a temporary folder.")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary folder (data, store, server logs).")] = False,
) -> None:
    """Serve one model with our service and with `mlflow models serve`, load both alike, print the ratios."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    try:
        if tracking_uri is None:
            tracking_uri = quickstart(root)
        else:
            simulate_demo(root / "demo" / "data")
        work = build_workload(root / "demo" / "data")
        notes = {"tracking store": tracking_uri, "model": MODEL_URI}
        default_limit = Settings.model_construct().max_body_bytes
        batch_bytes = len(work.ours_batch)
        ours_env = {
            "LEADSCORE_STORE_URL": f"sqlite:///{root / 'service.db'}",
            "LEADSCORE_API_KEYS": API_KEY,
        }
        limit_note = f"ours {batch_bytes / 1e6:.2f} MB, MLflow {len(work.mlflow_batch) / 1e6:.2f} MB"
        if batch_bytes > default_limit:
            ours_env["LEADSCORE_MAX_BODY_BYTES"] = str(2 * batch_bytes)
            limit_note += (
                f"; over our default limit of {default_limit / 1e6:.0f} MB, so LEADSCORE_MAX_BODY_BYTES="
                f"{2 * batch_bytes} for the run"
            )
        notes["batch body"] = limit_note
        single_sizes = [len(r) for r in work.ours_single], [len(r) for r in work.mlflow_single]
        notes["single body (mean)"] = (
            f"ours {np.mean(single_sizes[0]):,.0f} B, MLflow {np.mean(single_sizes[1]):,.0f} B"
        )

        contenders = _contenders(root, tracking_uri, ours_env, work, workers)
        for contender in contenders:
            notes[contender.name] = " ".join(contender.command)
        ours, theirs, gap = _bench(root, contenders, work, workers, seconds, rounds)
        notes["same scores"] = f"fit probability of {SANITY_LEADS} leads: largest difference {gap:.1e}"
        if gap > 1e-5:
            log.warning("the two servers disagree on the same leads (fit probability gap %.2e)", gap)
        report(ours, theirs, work, notes)
    finally:
        if keep:
            log.info("kept %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app()
