"""Benchmark: the lead timeline's ingest rate, ingest-to-webhook latency and score by id, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psycopg
import typer
import uvloop
from rich.console import Console
from rich.table import Table
from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Text, create_engine
from sqlalchemy import Table as SqlTable

from benchmarks.serve import (
    HOST,
    demo_leads,
    drive,
    exchange,
    free_port,
    quickstart,
    running,
    server_env,
    simulate_demo,
)
from serving.receiver import make_server

log = logging.getLogger("benchmarks.ingest")
app = typer.Typer(add_completion=False)

INGEST_KEY = "bench-ingest-key"
ADMIN_KEY = "bench-admin-key"
LEADS = 1000  # the population touches land on: 200 accounts of five, so colleagues are rescored too
PER_ACCOUNT = 5
BATCH = 100  # touches per POST /v1/activities, as the issue sets
PROBE_TOUCHES = 50  # stored touches of each score-by-id lead
PROBE_LEADS = 20
PROBES_PER_SECOND = 5.0  # fresh leads created during the load, each timed until its lead.routed webhook
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TYPES = ("page_view", "email_open", "email_click", "pricing_page_view", "content_download", "webinar_registered")
# Targets on 2 cores (issue 20).
TOUCHES_PER_SECOND_TARGET = 5000.0
WEBHOOK_P95_TARGET_S = 2.0
SCORE_BY_ID_P50_TARGET_MS = 3.0


def raw_request(method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
    """A complete HTTP/1.1 request, encoded once so that the timed loop only writes bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _stamp(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass
class Population:
    """Leads to create, score-by-id probes with their stored touches, and the timed batches of touches."""

    leads: dict[str, dict[str, Any]]  # lead_id -> PUT /v1/leads body
    probes: dict[str, list[dict[str, Any]]]  # lead_id -> its PROBE_TOUCHES touches
    fresh: list[tuple[str, dict[str, Any]]]  # leads created during the load (webhook latency)
    batches: list[bytes]  # POST /v1/activities requests, each BATCH new touches


def population(data_dir: Path, n_batches: int, seed: int = 0) -> Population:
    """Demo profiles as stored leads (five to an account), probes with 50 touches, and `n_batches` touch batches."""
    rng = random.Random(seed)
    demo = demo_leads(data_dir, count=LEADS + PROBE_LEADS + 300)  # fresh leads: 5 a second for up to 60 s
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    profiles = []
    for body in demo.ours:
        lead = {k: v for k, v in body["lead"].items() if not k.endswith("_at") or k == "created_at"}
        lead["created_at"] = _stamp(now - dt.timedelta(days=rng.randint(30, 300)))
        lead.pop("custom", None)
        profiles.append(lead)
    leads: dict[str, dict[str, Any]] = {}
    for i, lead in enumerate(profiles[:LEADS]):
        lead_id = f"B-{i:05d}"
        leads[lead_id] = {**lead, "account_id": f"ACC-{i // PER_ACCOUNT:04d}"}
        leads[lead_id].pop("lead_id", None)
    probes: dict[str, list[dict[str, Any]]] = {}
    for i, lead in enumerate(profiles[LEADS : LEADS + PROBE_LEADS]):
        lead_id = f"P-{i:03d}"
        leads[lead_id] = {**lead, "account_id": f"PACC-{i:03d}"}
        leads[lead_id].pop("lead_id", None)
        probes[lead_id] = [
            {"lead_id": lead_id, "activity_id": f"{lead_id}-{k}", "activity_type": rng.choice(TYPES),
             "occurred_at": _stamp(now - dt.timedelta(hours=rng.randint(1, 24 * 90)))}
            for k in range(PROBE_TOUCHES)
        ]  # fmt: skip
    fresh = []
    for i, lead in enumerate(profiles[LEADS + PROBE_LEADS :]):
        body = {**lead, "account_id": f"F-{i:04d}"}
        body.pop("lead_id", None)
        fresh.append((f"F-{i:04d}", body))
    ids = [lead_id for lead_id in leads if lead_id.startswith("B-")]
    headers = {"X-API-Key": INGEST_KEY}
    batches = []
    for b in range(n_batches):
        touches = [
            {"lead_id": rng.choice(ids), "activity_id": f"t{b}-{k}", "activity_type": rng.choice(TYPES),
             "occurred_at": _stamp(now - dt.timedelta(minutes=rng.randint(0, 60 * 24 * 14)))}
            for k in range(BATCH)
        ]  # fmt: skip
        batches.append(raw_request("POST", "/v1/activities", _json({"activities": touches}), headers))
    return Population(leads, probes, fresh, batches)


# --- the measurements -----------------------------------------------------------------------------------------------


async def _send(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return await exchange(reader, writer, request)
    finally:
        writer.close()


def send(port: int, method: str, path: str, body: Any, key: str) -> tuple[int, Any]:
    """One request on a fresh connection (set-up, not timed); the status and the parsed answer."""
    request = raw_request(method, path, None if body is None else _json(body), {"X-API-Key": key})
    status, answer = asyncio.run(_send(port, request))
    return status, json.loads(answer) if answer else None


def _checked(port: int, method: str, path: str, body: Any, key: str = INGEST_KEY) -> Any:
    status, answer = send(port, method, path, body, key)
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {path} answered {status}: {str(answer)[:500]}")
    return answer


@dataclass
class Receiver:
    """A local webhook receiver in a process of its own: each delivery as a line of its log.

    In this process it would wait for the load generator's turns at the interpreter lock, and so delay the very
    deliveries it times.
    """

    port: int
    log_path: Path

    def _lines(self) -> list[tuple[str, str, str, float]]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        return [(msg, kind, lead, float(at)) for msg, kind, lead, at in (line.split("\t") for line in lines if line)]

    @property
    def arrived(self) -> dict[str, float]:
        """lead_id -> wall-clock time its first lead.routed arrived."""
        first: dict[str, float] = {}
        for _, kind, lead_id, at in self._lines():
            if kind == "lead.routed":
                first.setdefault(lead_id, at)
        return first

    @property
    def seen(self) -> dict[str, int]:
        """webhook-id -> deliveries of it."""
        counts: dict[str, int] = {}
        for msg, _, _, _ in self._lines():
            counts[msg] = counts.get(msg, 0) + 1
        return counts


def _receive(port: int, log_path: str) -> None:
    """The receiver process: log each delivery (webhook-id, type, lead, arrival) as it comes."""
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    lock = threading.Lock()

    def on_event(event: dict[str, Any], headers: dict[str, str]) -> None:
        lead_id = str((event.get("data") or {}).get("lead_id", ""))
        with lock:
            out.write(f"{headers.get('webhook-id', '')}\t{event.get('type')}\t{lead_id}\t{time.time()}\n")

    make_server(HOST, port, None, on_event).serve_forever()


@contextmanager
def receiving(root: Path) -> Iterator[Receiver]:
    """A receiver process on a free port (signatures are checked by the tests; here only arrival times count)."""
    port = free_port()
    receiver = Receiver(port, root / f"received-{port}.tsv")
    process = multiprocessing.get_context("spawn").Process(target=_receive, args=(port, str(receiver.log_path)),
                                                           daemon=True)  # fmt: skip
    process.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            time.sleep(0.1)
        yield receiver
    finally:
        process.terminate()
        process.join(10)


@dataclass
class StoreResult:
    """Everything measured on one store."""

    store: str
    touches_per_second: float = 0.0
    accepted: int = 0
    refused_429: int = 0
    other_errors: int = 0
    raw_insert_per_second: float = 0.0
    webhook_latencies: list[float] = field(default_factory=list)
    probes_sent: int = 0
    duplicate_webhooks: int = 0
    by_id_ms: list[float] = field(default_factory=list)
    stateless_ms: list[float] = field(default_factory=list)
    rescores_per_second: float = 0.0  # leads rescored during the sustained ingest, by every worker

    def webhook_pct(self, q: float) -> float:
        """Ingest-to-webhook latency percentile, seconds (NaN without any)."""
        return float(np.percentile(self.webhook_latencies, q)) if self.webhook_latencies else float("nan")


def raw_insert_rate(url: str, seconds: float, seed: int = 1) -> float:
    """Touch-shaped rows/s the database takes in 100-row batches with no service in between: the reference."""
    engine = create_engine(url)
    meta = MetaData()
    table = SqlTable(
        "bench_raw_touches", meta,
        Column("id", BigInteger().with_variant(BigInteger, "postgresql"), primary_key=True),
        Column("touch_key", String(264), unique=True), Column("lead_id", String(256)),
        Column("occurred_at", DateTime(timezone=True)), Column("activity_type", String(64)),
        Column("properties", Text),
    )  # fmt: skip
    meta.drop_all(engine)
    meta.create_all(engine)
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    rows, n = 0, 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            batch = [
                {"id": n * BATCH + k, "touch_key": f"k{n}-{k}", "lead_id": f"B-{rng.randint(0, LEADS - 1):05d}",
                 "occurred_at": now, "activity_type": rng.choice(TYPES), "properties": None}
                for k in range(BATCH)
            ]  # fmt: skip
            with engine.begin() as conn:
                conn.execute(table.insert(), batch)
            rows += BATCH
            n += 1
        return rows / (time.perf_counter() - start)
    finally:
        meta.drop_all(engine)
        engine.dispose()


def load_store(port: int, pop: Population) -> None:
    """Store the population (bulk, in chunks) and the probes' touches, before anything is timed."""
    items = list(pop.leads.items())
    for start in range(0, len(items), 500):
        chunk = [{"lead_id": lead_id, **body} for lead_id, body in items[start : start + 500]]
        _checked(port, "POST", "/v1/leads/bulk", {"leads": chunk})
    for touches in pop.probes.values():
        _checked(port, "POST", "/v1/activities", {"activities": touches})


def metric(port: int, sample: str) -> float:
    """One sample of the service's /metrics (summed over its lines: every worker), e.g. a counter with its labels."""
    request = raw_request("GET", "/metrics", None, {"X-API-Key": ADMIN_KEY})
    _, body = asyncio.run(_send(port, request))
    return sum(float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(sample + " "))


def wait_rescored(port: int, seconds: float) -> None:
    """Wait until the rescore backlog is empty (the service's metric), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        request = raw_request("GET", "/metrics", None, {"X-API-Key": ADMIN_KEY})
        _, body = asyncio.run(_send(port, request))
        for line in body.decode().splitlines():
            if line.startswith("leadscore_rescore_backlog") and float(line.split()[-1]) == 0:
                return
        time.sleep(0.5)
    log.warning("the rescore backlog did not empty within %.0f s", seconds)


async def _probe_loop(port: int, fresh: Sequence[tuple[str, dict[str, Any]]], seconds: float,
                      sent: dict[str, float]) -> None:  # fmt: skip
    """Create fresh leads at PROBES_PER_SECOND while the load runs; when each PUT was answered."""
    deadline = time.perf_counter() + seconds
    for lead_id, body in fresh:
        if time.perf_counter() >= deadline:
            return
        request = raw_request("PUT", f"/v1/leads/{lead_id}", _json(body), {"X-API-Key": INGEST_KEY})
        status, _ = await _send(port, request)
        if status in (200, 201):
            sent[lead_id] = time.time()  # wall clock: the receiver's process stamps arrivals with it
        await asyncio.sleep(1 / PROBES_PER_SECOND)


def sustained_ingest(port: int, pop: Population, result: StoreResult, receiver: Receiver, seconds: float,
                     concurrency: int) -> None:  # fmt: skip
    """Touch batches from `concurrency` connections for `seconds`, with fresh leads timed to their webhook."""
    sent: dict[str, float] = {}

    async def run() -> Any:
        connections = [await asyncio.open_connection(HOST, port) for _ in range(concurrency)]
        try:
            probes = asyncio.create_task(_probe_loop(port, pop.fresh, seconds, sent))
            m = await drive(port, connections, pop.batches, seconds=seconds, max_requests=len(pop.batches))
            await probes
            return m
        finally:
            for _, writer in connections:
                writer.close()

    rescored = metric(port, 'leadscore_rescores_total{outcome="scored"}')
    m = uvloop.run(run())
    result.rescores_per_second = (metric(port, 'leadscore_rescores_total{outcome="scored"}') - rescored) / m.seconds
    if m.requests >= len(pop.batches):
        log.warning("every prepared batch was sent before the time was up: the rate is a lower bound")
    result.accepted = m.statuses.get(200, 0) + m.statuses.get(201, 0)
    result.refused_429 = m.statuses.get(429, 0)
    result.other_errors = m.requests - result.accepted - result.refused_429
    result.touches_per_second = result.accepted * BATCH / m.seconds
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(receiver.arrived.keys() & sent.keys()) < len(sent):
        time.sleep(0.2)
    result.probes_sent = len(sent)
    arrived = receiver.arrived
    result.webhook_latencies = [arrived[k] - t for k, t in sent.items() if k in arrived]
    result.duplicate_webhooks = sum(n - 1 for n in receiver.seen.values() if n > 1)


def score_by_id(port: int, pop: Population, result: StoreResult, seconds: float) -> None:
    """GET /v1/leads/{id}/score against POST /v1/score with the same touches in the body, one connection each."""
    key = {"X-API-Key": INGEST_KEY}
    by_id = [raw_request("GET", f"/v1/leads/{lead_id}/score", None, key) for lead_id in pop.probes]
    stateless = []
    for lead_id, touches in pop.probes.items():
        lead = {"lead_id": lead_id, **pop.leads[lead_id]}
        activities = [{k: t[k] for k in ("occurred_at", "activity_type")} for t in touches]
        stateless.append(raw_request("POST", "/v1/score", _json({"lead": lead, "activities": activities}), key))
    # Same answer first: the stored history is what the body carries.
    for a, b in zip(by_id[:3], stateless[:3], strict=True):
        (sa, ba), (sb, bb) = asyncio.run(_send(port, a)), asyncio.run(_send(port, b))
        if sa != 200 or sb != 200:
            raise RuntimeError(f"score by id {sa}, stateless {sb}: {ba[:300]!r} {bb[:300]!r}")
        fa, fb = json.loads(ba)["readiness"], json.loads(bb)["readiness"]
        if fa != fb:
            raise RuntimeError(f"score by id and stateless disagree: {fa} vs {fb}")

    async def timed(requests: list[bytes]) -> list[float]:
        connection = [await asyncio.open_connection(HOST, port)]
        try:
            await drive(port, connection, requests, seconds=1.0, max_requests=10_000)
            m = await drive(port, connection, requests, seconds=seconds, max_requests=100_000)
        finally:
            connection[0][1].close()
        if m.errors:
            raise RuntimeError(f"{m.errors} non-2xx answers while timing: {dict(m.statuses)}")
        return [ns / 1e6 for ns in m.latencies_ns]

    for _ in range(2):  # alternate, so that both see the same drift of the machine
        result.by_id_ms += uvloop.run(timed(by_id))
        result.stateless_ms += uvloop.run(timed(stateless))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards; its SQLAlchemy URL."""
    name = f"leadscore_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def bench_store(name: str, url: str, root: Path, tracking_uri: str, pop: Population, *, seconds: float,
                concurrency: int, workers: int) -> StoreResult:  # fmt: skip
    """Start the service on `url`, load it, and measure ingest, webhook latency and score by id."""
    result = StoreResult(name)
    log.info("%s: raw insert reference for %.0f s", name, seconds)
    result.raw_insert_per_second = raw_insert_rate(url, seconds)
    port = free_port()
    env = server_env(tracking_uri, {
        "LEADSCORE_STORE_URL": url, "LEADSCORE_JOURNAL_DIR": str(root / f"journal-{name}"),
        "LEADSCORE_INGEST_KEYS": INGEST_KEY, "LEADSCORE_ADMIN_KEYS": ADMIN_KEY, "LEADSCORE_API_KEYS": INGEST_KEY,
        "LEADSCORE_OPEN_MONITORING": "true", "LEADSCORE_MAX_BODY_BYTES": str(64_000_000),
    })  # fmt: skip
    command = ["leadscore", "serve", "--port", str(port), "--workers", str(workers)]
    with (
        running(f"service-{name}", command, env, cwd=root, port=port, probe_path="/readyz", workers=workers),
        receiving(root) as receiver,
    ):
        load_store(port, pop)
        wait_rescored(port, 300)
        score_by_id(port, pop, result, seconds=min(seconds, 10.0))
        _checked(port, "POST", "/v1/webhooks", {"url": f"http://{HOST}:{receiver.port}/", "events": ["lead.routed"]},
                 ADMIN_KEY)  # fmt: skip
        log.info("%s: sustained ingest for %.0f s from %d connections", name, seconds, concurrency)
        sustained_ingest(port, pop, result, receiver, seconds, concurrency)
    return result


def report(results: Sequence[StoreResult], notes: Mapping[str, str]) -> None:
    """The table: each figure, its reference measured in the same run, the ratio, and the target."""
    console = Console()
    table = Table(title="lead timeline: ingest, ingest-to-webhook, score by id (2 cores)")
    for column in ("store", "measure", "value", "reference (same run)", "ratio", "target", "met"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for r in results:
        rate_ok = r.touches_per_second >= TOUCHES_PER_SECOND_TARGET
        table.add_row(r.store, "touches/s, batches of 100", f"{r.touches_per_second:,.0f}",
                      f"raw INSERT {r.raw_insert_per_second:,.0f}/s",
                      f"{r.touches_per_second / r.raw_insert_per_second:.2f}x", f">= {TOUCHES_PER_SECOND_TARGET:,.0f}",
                      "yes" if rate_ok else "NO")  # fmt: skip
        table.add_row(r.store, "  answers: 2xx / 429 / other", f"{r.accepted} / {r.refused_429} / {r.other_errors}",
                      "", "", "no other", "yes" if r.other_errors == 0 else "NO")  # fmt: skip
        p50, p95 = r.webhook_pct(50), r.webhook_pct(95)
        table.add_row(
            r.store,
            f"ingest-to-webhook p50 / p95 ({len(r.webhook_latencies)}/{r.probes_sent} arrived)",
            f"{p50:.3f} / {p95:.3f} s",
            "",
            "",
            f"p95 <= {WEBHOOK_P95_TARGET_S:.0f} s",
            "yes" if p95 <= WEBHOOK_P95_TARGET_S and len(r.webhook_latencies) == r.probes_sent else "NO",
        )
        table.add_row(r.store, "  leads rescored/s meanwhile", f"{r.rescores_per_second:,.0f}", "", "", "", "")
        table.add_row(r.store, "  webhooks delivered twice", str(r.duplicate_webhooks), "", "", "0",
                      "yes" if r.duplicate_webhooks == 0 else "NO")  # fmt: skip
        by_id, stateless = float(np.median(r.by_id_ms)), float(np.median(r.stateless_ms))
        table.add_row(
            r.store,
            f"score by id p50 ({PROBE_TOUCHES} stored touches)",
            f"{by_id:.2f} ms",
            f"POST /v1/score {stateless:.2f} ms",
            f"{by_id / stateless:.2f}x",
            f"<= {SCORE_BY_ID_P50_TARGET_MS:.0f} ms",
            "yes" if by_id <= SCORE_BY_ID_P50_TARGET_MS else "NO",
        )
    console.print(table)
    for key, value in notes.items():
        console.print(f"{key}: {value}", highlight=False)


@app.command()
def main(
    seconds: Annotated[float, typer.Option(min=2.0, help="Length of the sustained ingest on each store.")] = 20.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Connections posting touch batches at once.")] = 8,
    workers: Annotated[int, typer.Option(min=1, help="Service worker processes.")] = 2,
    stores: Annotated[str, typer.Option(help="Comma-separated: sqlite, postgresql.")] = "sqlite,postgresql",
    tracking_uri: Annotated[
        str | None, typer.Option(help="Existing store with models:/lead-scorer@champion; default: train one.")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the work folder (servers' logs, stores) and print where.")] = False,
) -> None:
    """Measure the lead timeline on each store and print the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.ExitStack() as folder:
        if keep:
            root = Path(tempfile.mkdtemp(prefix="leadscore-ingest-bench-"))
            log.info("keeping the work folder %s", root)
        else:
            root = Path(folder.enter_context(tempfile.TemporaryDirectory(prefix="leadscore-ingest-bench-")))
        if tracking_uri is None:
            tracking_uri = quickstart(root)
        else:
            simulate_demo(root / "demo" / "data")
        n_batches = int(seconds * 3 * TOUCHES_PER_SECOND_TARGET / BATCH)  # room for three times the target
        results = []
        for name in (s.strip() for s in stores.split(",")):
            pop = population(root / "demo" / "data", n_batches)
            with contextlib.ExitStack() as stack:
                if name == "sqlite":
                    url = f"sqlite:///{root / 'timeline.db'}"
                elif name == "postgresql":
                    url = stack.enter_context(postgres_database())
                else:
                    raise typer.BadParameter(f"unknown store {name!r} (sqlite, postgresql)", param_hint="--stores")
                results.append(bench_store(name, url, root, tracking_uri, pop, seconds=seconds,
                                           concurrency=concurrency, workers=workers))  # fmt: skip
        report(results, {"workers": str(workers), "connections": str(concurrency), "seconds": f"{seconds:.0f}",
                         "leads": f"{LEADS} in accounts of {PER_ACCOUNT}, {PROBE_LEADS} probes"})  # fmt: skip


if __name__ == "__main__":
    app()
