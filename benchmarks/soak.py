"""Soak: the real service under a steady, realistic load for minutes, with its memory, files and store per minute."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow.parquet as pq
import typer
import uvloop
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.serve import (
    API_KEY,
    HOST,
    MODEL_URI,
    Connection,
    ProtocolError,
    Server,
    compact_json,
    demo_leads,
    exchange,
    free_port,
    group_stats,
    http_request,
    quickstart,
    running,
    server_env,
    simulate_demo,
)
from serving.score_log import JOURNAL_ROTATE_BYTES
from serving.store import score_log, score_log_archives

log = logging.getLogger("benchmarks.soak")
app = typer.Typer(add_completion=False)

ADMIN_KEY = "soak-admin-key"
MONITORING_KEY = "soak-monitoring-key"  # what a Prometheus scraper would hold: /metrics needs a key
SOAK_LEADS = 1000  # distinct leads cycled through; batches are consecutive slices of them
BATCH_SIZE = 100  # leads per batch request: a CRM syncing a list view
# The mix, as data: one request in BATCH_EVERY is a batch, one in MALFORMED_EVERY is malformed (they never coincide:
# i = 25 mod 50 is 5 or 15 mod 20), the rest are single leads. So 93% single, 2% batches, 5% malformed.
BATCH_EVERY, BATCH_AT = 50, 25
MALFORMED_EVERY, MALFORMED_AT = 20, 10
DEFAULT_RATE = 100.0  # requests per second: the figure (about 290 score records a second with this mix)
# Open loop: more requests than this waiting for an answer means the service fell behind; later ones are not sent
# (and counted), so that a stalled service does not make the load generator open thousands of connections.
MAX_IN_FLIGHT = 1000
REQUEST_TIMEOUT_S = 60.0  # an answer later than this counts as none
# The service closes a keep-alive connection idle for 5 s (LEADSCORE_TIMEOUT_KEEP_ALIVE): a client reusing one that
# old races the close, so connections idle longer than this are dropped instead of reused.
REUSE_IDLE_SECONDS = 2.0
SCRAPE_TIMEOUT_S = 10.0
# After the load: the workers report their backlog every second (serving.state.STATUS_SECONDS), so a backlog of 0
# is believed only once this long has passed since the last request; the flush then has DRAIN_SECONDS at most.
SETTLE_SECONDS = 2.5
DRAIN_SECONDS = 60.0
DRAIN_POLL_SECONDS = 0.5
# A journal file rotates on the first write after it passes JOURNAL_ROTATE_BYTES: it can end up to a request's
# records over it (100 leads: about half a megabyte).
JOURNAL_SLACK_BYTES = 1_000_000
RSS_FLAT_RATIO = 1.05  # a worker whose RSS grew by more than 5% from the first full minute to the last is growing
EXIT_FAILED = 1  # an unexpected answer, a lost or duplicated score, or a replaced worker: the gate fails
SINGLE, BATCH, MALFORMED = "single", "batch", "malformed"
KINDS = (SINGLE, BATCH, MALFORMED)
RETENTION_ENV = "LEADSCORE_SCORE_LOG_RETENTION_DAYS"
MB = 1e6


# --- the workload ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request as bytes on the wire, and how many score records a 200 to it acknowledges."""

    kind: str
    wire: bytes
    records: int


@dataclass(frozen=True)
class Mix:
    """The requests of each kind, cycled through in turn."""

    single: list[Request]
    batch: list[Request]
    malformed: list[Request]

    def request(self, i: int) -> Request:
        """The `i`th request of the run."""
        if i % BATCH_EVERY == BATCH_AT:
            return self.batch[(i // BATCH_EVERY) % len(self.batch)]
        if i % MALFORMED_EVERY == MALFORMED_AT:
            return self.malformed[(i // MALFORMED_EVERY) % len(self.malformed)]
        return self.single[i % len(self.single)]


def build_mix(bodies: Sequence[dict[str, Any]]) -> Mix:
    """Single leads, batches of BATCH_SIZE of them, and malformed requests a CRM could send (each must get 422)."""
    key = {"X-API-Key": API_KEY}

    def single(body: Any) -> bytes:
        return http_request("/v1/score", compact_json(body), key)

    def batch(leads: Any) -> bytes:
        return http_request("/v1/score/batch", compact_json({"leads": leads}), key)

    first = bodies[0]
    negative = first | {"lead": first["lead"] | {"employee_count": -5}}
    bad_time = first | {"activities": [{"occurred_at": "last tuesday", "activity_type": "email_open"}]}
    no_lead = {k: v for k, v in first.items() if k != "lead"}
    no_id = {**bodies[1], "lead": {k: v for k, v in bodies[1]["lead"].items() if k != "lead_id"}}
    malformed = [
        single(negative),
        single(bad_time),
        single(no_lead),
        http_request("/v1/score", compact_json(first)[:-7], key),  # cut short: not JSON
        batch([*bodies[:1], no_id, *bodies[2:BATCH_SIZE]]),  # one bad lead refuses the whole batch
    ]
    return Mix(
        single=[Request(SINGLE, single(body), 1) for body in bodies],
        batch=[
            Request(BATCH, batch(bodies[start : start + BATCH_SIZE]), BATCH_SIZE)
            for start in range(0, len(bodies) - BATCH_SIZE + 1, BATCH_SIZE)
        ],
        malformed=[Request(MALFORMED, wire, 0) for wire in malformed],
    )


# --- the load generator ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """The traffic of one row: requests by kind, answers by kind and status (0: no answer), latencies by kind."""

    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies_ns: dict[str, list[int]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    not_sent: int = 0

    def unexpected(self) -> Counter[int]:
        """Answers that are wrong for their request, by status: non-2xx to a valid one, anything but 422 to a bad one.

        Status 0 (no answer) is left out: it is counted on its own.
        """
        wrong: Counter[int] = Counter()
        for (kind, status), n in self.answers.items():
            expected = status == 422 if kind == MALFORMED else 200 <= status < 300
            if status and not expected:
                wrong[status] += n
        return wrong

    def no_answer(self) -> int:
        """Requests that got no answer: the connection failed, or the answer took over REQUEST_TIMEOUT_S."""
        return sum(n for (_, status), n in self.answers.items() if status == 0)

    def percentile_ms(self, kind: str, q: float) -> float:
        """Latency percentile `q` of answered requests of `kind`, in ms (NaN when there were none)."""
        values = self.latencies_ns[kind]
        return float(np.percentile(np.asarray(values), q)) / 1e6 if values else math.nan

    def add(self, other: Tally) -> None:
        """Pool another row's traffic into this one."""
        self.sent += other.sent
        self.answers += other.answers
        for kind in KINDS:
            self.latencies_ns[kind] += other.latencies_ns[kind]
        self.not_sent += other.not_sent


class Recorder:
    """Answers as they come in: the current row's tally, and the request ids of every acknowledged score."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.acknowledged: dict[str, int] = {}  # request id -> score records its 200 acknowledged

    def rotate(self) -> Tally:
        """The tally of the row that ends now; a fresh one starts."""
        done, self.tally = self.tally, Tally()
        return done

    def record(self, request: Request, status: int, body: bytes, latency_ns: int) -> None:
        """One answer (status 0: none)."""
        self.tally.answers[request.kind, status] += 1
        if status:
            self.tally.latencies_ns[request.kind].append(latency_ns)
        if status == 200 and request.records:
            self.acknowledged[request_id(body)] = request.records


def request_id(body: bytes) -> str:
    """The request id of a score answer; the service writes it first, so usually without parsing the answer."""
    prefix = b'{"request_id":"'
    if body.startswith(prefix):
        return body[len(prefix) : body.index(b'"', len(prefix))].decode()
    return str(json.loads(body)["request_id"])


class Pool:
    """Kept-alive connections to the service, reused while fresh."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[Connection, float]] = []
        self.opened = 0

    async def acquire(self) -> Connection:
        """An idle connection used within REUSE_IDLE_SECONDS, or a new one."""
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if now - since < REUSE_IDLE_SECONDS:
                return connection
            connection[1].close()
        self.opened += 1
        return await asyncio.open_connection(HOST, self.port)

    def release(self, connection: Connection) -> None:
        """Give a connection back after a complete exchange."""
        self._idle.append((connection, time.monotonic()))

    def close(self) -> None:
        """Close every idle connection."""
        for (_, writer), _ in self._idle:
            writer.close()
        self._idle = []


async def send(pool: Pool, recorder: Recorder, request: Request, started_ns: int) -> None:
    """One request; its latency counts from `started_ns` (when it was due, in the open loop)."""
    status, body = 0, b""
    connection: Connection | None = None
    try:
        connection = await pool.acquire()
        status, body = await asyncio.wait_for(exchange(*connection, request.wire), REQUEST_TIMEOUT_S)
    except (OSError, EOFError, TimeoutError, ProtocolError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        if connection is not None:
            connection[1].close()
        connection = None
    latency = time.perf_counter_ns() - started_ns
    if connection is not None:
        pool.release(connection)
    recorder.record(request, status, body, latency)


async def open_loop(pool: Pool, recorder: Recorder, mix: Mix, rate: float, stop: asyncio.Event) -> None:
    """Requests at a fixed rate whatever the answers' pace, until `stop`; then wait for those in flight."""
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter_ns()
    i = 0
    while not stop.is_set():
        due = start + round(i * 1e9 / rate)
        wait = (due - time.perf_counter_ns()) / 1e9
        if wait > 0:
            try:
                await asyncio.wait_for(stop.wait(), wait)
                break
            except TimeoutError:
                pass
        request = mix.request(i)
        i += 1
        if len(in_flight) >= MAX_IN_FLIGHT:
            recorder.tally.not_sent += 1
            continue
        recorder.tally.sent[request.kind] += 1
        task = asyncio.create_task(send(pool, recorder, request, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight)


async def closed_loop(pool: Pool, recorder: Recorder, mix: Mix, concurrency: int, stop: asyncio.Event) -> None:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered, until `stop`."""

    async def client(k: int) -> None:
        i = k
        while not stop.is_set():
            request = mix.request(i)
            i += concurrency
            recorder.tally.sent[request.kind] += 1
            await send(pool, recorder, request, time.perf_counter_ns())

    await asyncio.gather(*(client(k) for k in range(concurrency)))


# --- what is measured each minute ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The service's processes, files and store at one moment."""

    at: float  # time.monotonic()
    parent: tuple[int, int] | None  # (RSS bytes, open fds) of uvicorn's supervisor; None with one worker
    workers: dict[int, tuple[int, int]]  # pid -> (RSS bytes, open fds)
    cpu_ticks: int  # user + system ticks of the whole process group so far
    store_bytes: int  # database and WAL (SQLite), or the score log table (PostgreSQL)
    wal_bytes: int  # SQLite's WAL alone: it grows to a checkpoint's worth and stays, whatever the records
    journal_bytes: int
    archive_bytes: int | None  # None: retention is not set for the run
    log_rows: int  # score-log rows added since the run started (archived ones leave the table)
    archived: int  # score-log records archived since the run started
    pending: float | None  # leadscore_score_log_pending (None: /metrics did not answer)
    oldest_pending_s: float | None


@dataclass(frozen=True)
class Row:
    """One row of the table: a minute's traffic and the sample at its end."""

    index: int
    tally: Tally
    sample: Sample
    seconds: float
    cores: float  # CPU of the service's process group over the row


def _proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _is_worker(pid: int) -> bool:
    # uvicorn starts its workers with multiprocessing's spawn; its resource tracker is another child, not a worker.
    return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            continue  # a journal file removed meanwhile
    return total


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (None: another database); a store in memory cannot be measured."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"{url}: a SQLite store must be a file to be measured (and shared by the workers)")
    return Path(parsed.database).resolve()


class Store:
    """The service's store, read on a read-only connection: its size on disk and the score log's rows."""

    def __init__(self, url: str) -> None:
        self.sqlite_path = sqlite_file(url)
        if self.sqlite_path is not None:
            self.engine: Engine = create_engine(f"sqlite:///file:{self.sqlite_path}?mode=ro&uri=true")
        else:
            readonly = {"postgresql_readonly": True} if make_url(url).get_backend_name() == "postgresql" else {}
            self.engine = create_engine(url, execution_options=readonly)
        with self.engine.connect() as conn:
            self.first_id = int(conn.execute(select(func.coalesce(func.max(score_log.c.id), 0))).scalar_one())

    def size(self) -> tuple[int, int]:
        """(bytes on disk, of which the WAL): database file and WAL (SQLite), or score_log and indexes (PostgreSQL)."""
        if self.sqlite_path is not None:
            wal = self.sqlite_path.with_name(self.sqlite_path.name + "-wal")
            wal_bytes = wal.stat().st_size if wal.exists() else 0
            return self.sqlite_path.stat().st_size + wal_bytes, wal_bytes
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                return int(conn.execute(text("SELECT pg_total_relation_size('score_log')")).scalar_one()), 0
        return 0, 0  # no portable way to ask other databases

    def rows(self) -> int:
        """Score-log rows added since the run started."""
        query = select(func.count()).select_from(score_log).where(score_log.c.id > self.first_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def archived(self) -> int:
        """Records of the run that retention moved to archive files."""
        query = select(func.coalesce(func.sum(score_log_archives.c.records), 0)).where(
            score_log_archives.c.last_id > self.first_id
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def logged(self) -> dict[str, tuple[int, int]]:
        """Per request id of the run: (records, distinct leads) in the score log."""
        query = (
            select(score_log.c.request_id, func.count(), func.count(score_log.c.lead_id.distinct()))
            .where(score_log.c.id > self.first_id)
            .group_by(score_log.c.request_id)
        )
        with self.engine.connect() as conn:
            return {str(r[0]): (int(r[1]), int(r[2])) for r in conn.execute(query)}

    def payload_bytes(self) -> float:
        """Mean length of a record's inputs and outputs text: what a record carries before any storage overhead."""
        length = func.length(score_log.c.inputs) + func.length(score_log.c.outputs)
        query = select(func.avg(length)).where(score_log.c.id > self.first_id)
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one() or math.nan)


def archived_records(archive_dir: Path, first_id: int) -> list[tuple[str, str]]:
    """(request id, lead id) of the run's records in retention's archive files."""
    pairs: list[tuple[str, str]] = []
    for path in sorted(archive_dir.glob("score_log-*.parquet")):
        table = pq.read_table(path, columns=["id", "request_id", "lead_id"]).to_pydict()
        pairs += [
            (r, lead)
            for i, r, lead in zip(table["id"], table["request_id"], table["lead_id"], strict=True)
            if i > first_id
        ]
    return pairs


def scrape(port: int) -> tuple[float | None, float | None]:
    """leadscore_score_log_pending and leadscore_score_log_oldest_pending_seconds from /metrics (None: no answer)."""
    request = urllib.request.Request(f"http://{HOST}:{port}/metrics", headers={"X-API-Key": MONITORING_KEY})
    try:
        with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as response:
            exposition = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        log.warning("/metrics did not answer: %s", err)
        return None, None
    values: dict[str, float] = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        if name in ("leadscore_score_log_pending", "leadscore_score_log_oldest_pending_seconds"):
            values[name] = float(value)
    return values.get("leadscore_score_log_pending"), values.get("leadscore_score_log_oldest_pending_seconds")


@dataclass
class Sampler:
    """Takes samples of one running service."""

    server: Server
    store: Store
    journal_dir: Path
    archive_dir: Path | None
    single_process: bool  # one worker: uvicorn serves in its own process, there is no supervisor

    def sample(self) -> Sample:
        """The service now (reads /proc, the folders, the store and /metrics)."""
        stats = group_stats(self.server.pgid)
        ticks = sum(int(stat[11]) + int(stat[12]) for stat in stats.values())  # utime + stime
        parent: tuple[int, int] | None = None
        workers: dict[int, tuple[int, int]] = {}
        for pid in stats:
            try:
                figures = (_proc_rss(pid), _proc_fds(pid))
                if pid == self.server.pgid and not self.single_process:
                    parent = figures
                elif pid == self.server.pgid or _is_worker(pid):
                    workers[pid] = figures
            except OSError:
                continue  # exited meanwhile
        pending, oldest = scrape(self.server.port)
        store_bytes, wal_bytes = self.store.size()
        return Sample(
            at=time.monotonic(),
            parent=parent,
            workers=workers,
            cpu_ticks=ticks,
            store_bytes=store_bytes,
            wal_bytes=wal_bytes,
            journal_bytes=_folder_bytes(self.journal_dir),
            archive_bytes=None if self.archive_dir is None else _folder_bytes(self.archive_dir),
            log_rows=self.store.rows(),
            archived=self.store.archived() if self.archive_dir is not None else 0,
            pending=pending,
            oldest_pending_s=oldest,
        )


# --- the table -------------------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _mb(value: float) -> str:
    return f"{value / MB:.1f}"


def _optional(value: float | None, digits: int = 0) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


@dataclass
class Columns:
    """The per-minute table, printed a row at a time: names and widths, then each row's values."""

    archive: bool
    workers: int
    names: list[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        per_worker = 6 * self.workers
        self.names = [
            ("min", 4), ("single", 7), ("batch", 6), ("bad", 5), ("errors", 10), ("no ans", 6),
            ("single p50/p99", 15), ("batch p50/p99", 14), ("cpu", 5), ("parent MB", 9),
            ("worker MB", max(per_worker, 10)), ("worker fds", max(per_worker, 10)), ("store MB", 9),
            ("journal MB", 10), ("log rows", 9), ("pending", 8), ("oldest s", 8),
        ]  # fmt: skip
        if self.archive:
            self.names.append(("archive MB", 10))

    def header(self, seconds_per_row: float) -> list[str]:
        """The header lines: what a row covers, then the column names."""
        unit = "minute" if seconds_per_row == 60 else f"{seconds_per_row:g} s"
        note = (
            f"one row per {unit}: requests by kind (bad: malformed, must get 422); errors: unexpected statuses "
            "(status:count); no ans: no answer; latency in ms; cpu: cores used by the service; MB: 10^6 bytes; "
            "workers in pid order; log rows: score-log rows added"
        )
        return [note, self._line([name for name, _ in self.names])]

    def line(self, row: Row) -> str:
        """One row's values, aligned under the header."""
        t, s = row.tally, row.sample
        wrong = t.unexpected()
        errors = ",".join(f"{status}:{n}" for status, n in sorted(wrong.items())) or "0"
        if t.not_sent:
            errors += f",ns:{t.not_sent}"  # not sent: the service fell behind
        workers = [s.workers[pid] for pid in sorted(s.workers)]
        started = row.index > 0
        values = [
            str(row.index),
            f"{t.sent[SINGLE]:,}" if started else "-",
            f"{t.sent[BATCH]:,}" if started else "-",
            f"{t.sent[MALFORMED]:,}" if started else "-",
            errors if started else "-",
            str(t.no_answer()) if started else "-",
            f"{_ms(t.percentile_ms(SINGLE, 50))}/{_ms(t.percentile_ms(SINGLE, 99))}" if started else "-",
            f"{_ms(t.percentile_ms(BATCH, 50))}/{_ms(t.percentile_ms(BATCH, 99))}" if started else "-",
            f"{row.cores:.2f}" if started else "-",
            "-" if s.parent is None else f"{s.parent[0] / MB:.0f}",
            "/".join(f"{rss / MB:.0f}" for rss, _ in workers) or "none",
            "/".join(str(fds) for _, fds in workers) or "none",
            _mb(s.store_bytes),
            _mb(s.journal_bytes),
            f"{s.log_rows:,}",
            _optional(s.pending),
            _optional(s.oldest_pending_s, 1),
        ]
        if self.archive:
            values.append("-" if s.archive_bytes is None else _mb(s.archive_bytes))
        return self._line(values)

    def _line(self, values: Sequence[str]) -> str:
        return "  ".join(v.rjust(width) for v, (_, width) in zip(values, self.names, strict=True))


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readback:
    """The acknowledged scores looked up in the score log (and retention's archive) after the flush."""

    acknowledged_requests: int
    acknowledged_records: int
    stored_records: int  # of the acknowledged requests
    lost: int
    duplicated: int
    unacknowledged_records: int  # records of the run whose request the client saw no 200 for
    drained: bool
    drain_seconds: float


def read_back(
    store: Store, archive_dir: Path | None, acknowledged: dict[str, int], drain: tuple[bool, float]
) -> Readback:
    """Each acknowledged request's records, looked up by request id: lost when fewer, duplicated when more."""
    logged = store.logged()
    if archive_dir is not None:
        leads: dict[str, list[str]] = {}
        for rid, lead in archived_records(archive_dir, store.first_id):
            leads.setdefault(rid, []).append(lead)
        for rid, ids in leads.items():
            n, distinct = logged.get(rid, (0, 0))
            # An archived record left the table: the two never hold the same record, so their counts add up.
            logged[rid] = (n + len(ids), distinct + len(set(ids)))
    lost = duplicated = stored = 0
    for rid, expected in acknowledged.items():
        n, distinct = logged.get(rid, (0, 0))
        stored += n
        lost += max(0, expected - distinct)
        duplicated += (n - distinct) + max(0, distinct - expected)
    extra = sum(n for rid, (n, _) in logged.items() if rid not in acknowledged)
    return Readback(
        acknowledged_requests=len(acknowledged),
        acknowledged_records=sum(acknowledged.values()),
        stored_records=stored,
        lost=lost,
        duplicated=duplicated,
        unacknowledged_records=extra,
        drained=drain[0],
        drain_seconds=drain[1],
    )


async def wait_for_drain(port: int) -> tuple[bool, float]:
    """Wait until /metrics reports no score waiting for the database; (whether it happened, seconds waited)."""
    start = time.monotonic()
    await asyncio.sleep(SETTLE_SECONDS)
    while True:
        pending, _ = await asyncio.to_thread(scrape, port)
        if pending == 0:
            return True, time.monotonic() - start
        if time.monotonic() - start > DRAIN_SECONDS:
            return False, time.monotonic() - start
        await asyncio.sleep(DRAIN_POLL_SECONDS)


@dataclass(frozen=True)
class Plan:
    """How to drive the service: for how long, how hard."""

    rows: int
    seconds_per_row: float
    rate: float | None  # open loop at this many requests per second
    concurrency: int | None  # closed loop with this many clients


@dataclass(frozen=True)
class Run:
    """What a soak measured."""

    rows: list[Row]  # row 0: before the load
    readback: Readback
    client_cpu: float  # share of one core the load generator used
    connections: int  # connections the load generator opened


async def soak(server: Server, sampler: Sampler, mix: Mix, plan: Plan, emit: Callable[[Row], None]) -> Run:
    """Drive the service for plan.rows rows, emitting each as it ends; then let it drain and read the log back.

    Samples are taken in a thread, so that the load generator keeps its pace while the store is counted.
    """
    recorder = Recorder()
    pool = Pool(server.port)
    stop = asyncio.Event()
    previous = await asyncio.to_thread(sampler.sample)
    rows = [Row(0, Tally(), previous, 0.0, 0.0)]
    emit(rows[0])
    if plan.rate is not None:
        load = asyncio.create_task(open_loop(pool, recorder, mix, plan.rate, stop))
    else:
        assert plan.concurrency is not None
        load = asyncio.create_task(closed_loop(pool, recorder, mix, plan.concurrency, stop))
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        for k in range(1, plan.rows + 1):
            await asyncio.sleep(max(0.0, start + k * plan.seconds_per_row - time.monotonic()))
            if k == plan.rows:
                stop.set()
                await load  # the last answers belong to the last row
            tally = recorder.rotate()
            sample = await asyncio.to_thread(sampler.sample)
            seconds = sample.at - previous.at
            cores = (sample.cpu_ticks - previous.cpu_ticks) / os.sysconf("SC_CLK_TCK") / seconds
            rows.append(Row(k, tally, sample, seconds, cores))
            emit(rows[-1])
            previous = sample
    finally:
        stop.set()
        if not load.done():
            await load
        pool.close()
    client_cpu = (time.process_time() - cpu_start) / (time.monotonic() - start)
    drain = await wait_for_drain(server.port)
    if not drain[0]:
        log.warning("score-log records were still waiting for the database %.0f s after the load", DRAIN_SECONDS)
    readback = await asyncio.to_thread(read_back, sampler.store, sampler.archive_dir, recorder.acknowledged, drain)
    return Run(rows, readback, client_cpu, pool.opened)


# --- the summary -----------------------------------------------------------------------------------------------------


def summarise(run: Run, payload: float, workers: int) -> tuple[Table, list[str]]:
    """The summary table, and why the gate fails (nothing: it passes).

    Each figure of the last minute is set against the first full minute, or against a reference named beside it.
    """
    rows, readback = run.rows, run.readback
    table = Table(title="soak summary: last minute against the first full minute (or the reference named)")
    for column in ("measure", "value", "reference", "ratio", "verdict"):
        table.add_column(column, justify="left" if column in ("measure", "verdict") else "right")
    first, last = rows[1], rows[-1]
    total = Tally()
    for row in rows[1:]:
        total.add(row.tally)
    failures: list[str] = []

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else ""

    # Workers are matched by pid: a new pid is a worker uvicorn started in place of one that died.
    started = {pid for row in rows for pid in row.sample.workers} - set(rows[0].sample.workers)
    if started:
        failures.append(f"{len(started)} worker(s) replaced during the run (new pids {sorted(started)})")
        table.add_row("workers started during the run (replacing dead ones)", str(len(started)), "0", "", "REPLACED")
    for n, pid in enumerate(sorted(first.sample.workers), start=1):
        rss0 = first.sample.workers[pid][0]
        end = last.sample.workers.get(pid)
        if end is None:
            table.add_row(f"worker {n} (pid {pid}) RSS MB", "gone", _mb(rss0), "", "DIED")
            continue
        grew = end[0] / rss0
        table.add_row(f"worker {n} (pid {pid}) RSS MB", _mb(end[0]), _mb(rss0), f"{grew:.3f}x",
                      "flat" if grew <= RSS_FLAT_RATIO else f"grows (> {RSS_FLAT_RATIO:.2f}x)")  # fmt: skip
        table.add_row(f"worker {n} (pid {pid}) open fds", str(end[1]), str(first.sample.workers[pid][1]),
                      ratio(end[1], first.sample.workers[pid][1]), "")  # fmt: skip
    if first.sample.parent is not None and last.sample.parent is not None:
        end_rss, first_rss = last.sample.parent[0], first.sample.parent[0]
        table.add_row("parent (uvicorn supervisor) RSS MB", _mb(end_rss), _mb(first_rss),
                      f"{end_rss / first_rss:.3f}x", "")  # fmt: skip
    for kind in (SINGLE, BATCH):
        for q in (50, 99):
            a, b = last.tally.percentile_ms(kind, q), first.tally.percentile_ms(kind, q)
            table.add_row(f"{kind} p{q} latency ms", _ms(a), _ms(b), ratio(a, b), "")
    grown = last.sample.store_bytes - rows[0].sample.store_bytes
    stored = last.sample.log_rows + last.sample.archived
    per_record = grown / stored if stored else math.nan
    table.add_row("store bytes per score record, whole run (vs its inputs + outputs text)", f"{per_record:,.0f}",
                  f"{payload:,.0f}", ratio(per_record, payload), "")  # fmt: skip
    # From the first full minute on: SQLite's WAL has reached its working size by then, so this is what each further
    # record costs (the whole run's figure carries the WAL's start-up, large for a short run).
    added = stored - (first.sample.log_rows + first.sample.archived)
    if added > 0:
        steady = (last.sample.store_bytes - first.sample.store_bytes) / added
        table.add_row("store bytes per score record, after the first minute (vs inputs + outputs)", f"{steady:,.0f}",
                      f"{payload:,.0f}", ratio(steady, payload), "")  # fmt: skip
    if last.sample.wal_bytes:
        table.add_row("of the store: SQLite WAL MB at the end", _mb(last.sample.wal_bytes), "", "", "")
    minutes = sum(r.seconds for r in rows[1:]) / 60
    table.add_row("store growth MB per minute (vs score records per minute)", _mb(grown / minutes),
                  f"{stored / minutes:,.0f} records", "", "")  # fmt: skip
    bound = workers * (JOURNAL_ROTATE_BYTES + JOURNAL_SLACK_BYTES)
    largest = max(r.sample.journal_bytes for r in rows)
    journal = last.sample.journal_bytes
    table.add_row("journal MB at the end (vs workers x a journal file's size)", _mb(journal), _mb(bound),
                  ratio(journal, bound), "within" if journal <= bound else "OVER")  # fmt: skip
    table.add_row("journal MB, largest sample", _mb(largest), _mb(bound), ratio(largest, bound), "")
    if last.sample.archive_bytes is not None:
        table.add_row("archive MB at the end (records archived)", _mb(last.sample.archive_bytes),
                      f"{last.sample.archived:,}", "", "")  # fmt: skip
    requests = sum(total.sent.values())
    wrong = total.unexpected()
    table.add_row("unexpected answers (vs requests)", f"{sum(wrong.values()):,}", f"{requests:,}",
                  ratio(sum(wrong.values()), requests), _statuses(wrong) or "none")  # fmt: skip
    if wrong:
        failures.append(f"unexpected answers: {_statuses(wrong)}")
    table.add_row("no answer (vs requests)", f"{total.no_answer():,}", f"{requests:,}",
                  ratio(total.no_answer(), requests), "")  # fmt: skip
    if total.no_answer():
        failures.append(f"{total.no_answer()} requests got no answer (connection failed, or over "
                        f"{REQUEST_TIMEOUT_S:.0f} s)")  # fmt: skip
    if total.not_sent:
        table.add_row("not sent: the service fell behind (vs requests)", f"{total.not_sent:,}", f"{requests:,}",
                      ratio(total.not_sent, requests), "")  # fmt: skip
        failures.append(f"{total.not_sent} requests not sent: over {MAX_IN_FLIGHT} were waiting for an answer")
    malformed = total.sent[MALFORMED]
    table.add_row("malformed requests answered 422", f"{total.answers[MALFORMED, 422]:,}", f"{malformed:,}",
                  ratio(total.answers[MALFORMED, 422], malformed), "")  # fmt: skip
    table.add_row("acknowledged score records in the score log once", f"{readback.stored_records:,}",
                  f"{readback.acknowledged_records:,}", ratio(readback.stored_records, readback.acknowledged_records),
                  f"lost {readback.lost}, duplicated {readback.duplicated}")  # fmt: skip
    if readback.lost or readback.duplicated:
        failures.append(f"score log: {readback.lost} acknowledged records lost, {readback.duplicated} duplicated")
    table.add_row("records logged without a 200 seen by the client", f"{readback.unacknowledged_records:,}", "",
                  "", "")  # fmt: skip
    drain = f"{readback.drain_seconds:.1f} s" + ("" if readback.drained else " (NOT drained)")
    table.add_row("wait until no record was pending (after the load)", drain, "", "", "")
    return table, failures


def _statuses(statuses: Counter[int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))


# --- the command -----------------------------------------------------------------------------------------------------


@contextmanager
def _workspace(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="leadscore-soak-"))
    try:
        yield root
    finally:
        if keep:
            log.info("kept %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


@app.command()
def main(
    minutes: Annotated[int, typer.Option(min=1, help="Rows to run, one per minute (see --seconds-per-row).")] = 5,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes of the service.")] = 2,
    rate: Annotated[
        float | None, typer.Option(min=0.1, help=f"Open loop: requests per second (default {DEFAULT_RATE:g}).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Closed loop: clients that each send as soon as answered.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help=f"Existing store with {MODEL_URI}; default: train one in a temporary folder.")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option(help="The service's store (e.g. PostgreSQL); default: a temporary SQLite file.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Leads and activities for the request bodies; default: simulated demo leads.")
    ] = None,
    seconds_per_row: Annotated[
        float, typer.Option(min=0.5, help="Length of a row: a minute, or seconds for a quick check.")
    ] = 60.0,
    keep: Annotated[bool, typer.Option(help="Keep the temporary folder (store, journal, server log).")] = False,
) -> None:
    """Drive the real service steadily; print a row per minute, then a summary; exit 1 if the soak gate fails.

    The gate fails on a wrong answer (a 5xx, or anything but 422 to a malformed request), a request left without an
    answer, or an acknowledged score the score log lost or holds twice.
    """
    if rate is not None and concurrency is not None:
        raise typer.BadParameter("give --rate (open loop) or --concurrency (closed loop), not both")
    if rate is None and concurrency is None:
        rate = DEFAULT_RATE
    try:
        if store_url is not None:
            sqlite_file(store_url)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--store-url") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    with _workspace(keep) as root:
        if tracking_uri is None:
            tracking_uri = quickstart(root)
            data_dir = data_dir or root / "demo" / "data"
        elif data_dir is None:
            data_dir = root / "demo" / "data"
            simulate_demo(data_dir)
        store_url = store_url or f"sqlite:///{root / 'service.db'}"
        journal_dir, archive_dir = root / "journal", root / "archive"
        retention = os.environ.get(RETENTION_ENV)
        extra = {
            "LEADSCORE_STORE_URL": store_url,
            "LEADSCORE_JOURNAL_DIR": str(journal_dir),
            "LEADSCORE_SCORE_LOG_ARCHIVE_DIR": str(archive_dir),
            "LEADSCORE_API_KEYS": API_KEY,
            "LEADSCORE_ADMIN_KEYS": ADMIN_KEY,
            "LEADSCORE_MONITORING_KEYS": MONITORING_KEY,
        }
        if retention:
            extra[RETENTION_ENV] = retention
        port = free_port()
        command = [sys.executable, "-m", "leadscore", "serve", "--port", str(port), "--workers", str(workers)]
        plan = Plan(minutes, seconds_per_row, rate, concurrency)
        columns = Columns(archive=bool(retention), workers=workers)
        console = Console(width=220)
        env = server_env(tracking_uri, extra)
        with ThreadPoolExecutor(max_workers=1) as executor:
            # The request bodies are built while the service starts (tens of seconds): neither waits for the other.
            bodies = executor.submit(demo_leads, data_dir, SOAK_LEADS)
            with running("leadscore", command, env, cwd=root, port=port, probe_path="/readyz",
                         workers=workers) as server:  # fmt: skip
                mix = build_mix(bodies.result().ours)
                store = Store(store_url)
                sampler = Sampler(server, store, journal_dir, archive_dir if retention else None, workers == 1)
                for line in columns.header(seconds_per_row):
                    console.out(line, highlight=False)

                def emit(row: Row) -> None:
                    console.out(columns.line(row), highlight=False)

                run = uvloop.run(soak(server, sampler, mix, plan, emit))
                payload = store.payload_bytes()
                store.engine.dispose()
        table, failures = summarise(run, payload, workers)
        console.print(table)
        console.print(_setup(plan, workers, server, tracking_uri, store_url, mix, run, retention))
        if failures:
            for failure in failures:
                log.error("soak gate: %s", failure)
            raise typer.Exit(EXIT_FAILED)
        log.info("soak gate passed: every answer as expected, every acknowledged score in the score log once")


def _setup(
    plan: Plan, workers: int, server: Server, tracking_uri: str, store_url: str, mix: Mix, run: Run,
    retention: str | None,
) -> Table:  # fmt: skip
    setup = Table(title="setup", show_header=False)
    setup.add_column("what")
    setup.add_column("value")
    load = (
        f"open loop, {plan.rate:g} requests/s (latency from when each was due)"
        if plan.rate is not None
        else f"closed loop, {plan.concurrency} clients"
    )
    setup.add_row("load", f"{load}; {plan.rows} rows of {plan.seconds_per_row:g} s")
    setup.add_row(
        "mix",
        f"{100 - 100 / BATCH_EVERY - 100 / MALFORMED_EVERY:.0f}% single leads, {100 / BATCH_EVERY:.0f}% batches of "
        f"{BATCH_SIZE}, {100 / MALFORMED_EVERY:.0f}% malformed ({len(mix.malformed)} kinds, each must get 422); "
        f"{len(mix.single):,} distinct leads",
    )
    setup.add_row("service", f"leadscore serve --workers {workers} ({server.workers_started} started), {MODEL_URI}")
    setup.add_row("tracking store", tracking_uri)
    setup.add_row("service store", store_url)
    setup.add_row("retention", f"{RETENTION_ENV}={retention}" if retention else "service default (nothing is old "
                  "enough to archive in a soak)")  # fmt: skip
    setup.add_row("load generator", f"{100 * run.client_cpu:.0f}% of one core, {run.connections:,} connections opened")
    setup.add_row("machine", f"{os.cpu_count()} cores")
    return setup


if __name__ == "__main__":
    app()
