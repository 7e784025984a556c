"""Prometheus metrics of the score service: requests, latency, routes chosen and the scores handed out."""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.launch import MULTIPROCESS_DIR

if TYPE_CHECKING:
    from serving.score_log import ScoreLogStatus

# Latency buckets from 0.5 ms: a single score takes a few milliseconds, a batch of 1,000 up to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = tuple(float(b) for b in range(10, 101, 10))


@dataclass
class ServiceMetrics:
    """One registry per app, so that tests and several apps in one process never share counters."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "leadscore_http_requests", "HTTP requests by route and status.", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "leadscore_http_request_seconds", "Request latency by route.", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.routes = Counter("leadscore_routes", "Leads routed, by queue.", ["queue"], registry=self.registry)
        self.scores = Histogram(
            "leadscore_score", "Scores handed out (0-100), by model.", ["model"], buckets=SCORE_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.fast_path = Counter(
            "leadscore_fast_path", "Score requests answered on the fast path, or handed to the documented endpoints.",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "leadscore_model_reloads", "Model reloads by outcome.", ["outcome"], registry=self.registry
        )
        # Per worker; a scrape of several workers adds up the backlogs and shows the oldest wait.
        self.score_log_pending = Gauge(
            "leadscore_score_log_pending", "Scores journaled and not yet in the database.", registry=self.registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.score_log_lag = Gauge(
            "leadscore_score_log_oldest_pending_seconds", "Age of the oldest score not yet in the database.",
            registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.score_log_writable = Gauge(
            "leadscore_score_log_journal_writable", "1 while the journal can be written (0: scores are refused).",
            registry=self.registry, multiprocess_mode="livemin",
        )  # fmt: skip
        self.thresholds_stale = Gauge(
            "leadscore_thresholds_stale", "1 while the policy in force cannot be read (the last one read is used).",
            registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.score_log_rejected = Counter(
            "leadscore_score_log_rejected", "Score records the database refused as data, set aside beside the journal.",
            registry=self.registry,
        )  # fmt: skip
        self._rejected_seen = 0
        # Rescore on change: the queue is the database's, so every worker sees the same backlog (max, not sum).
        self.rescores = Counter(
            "leadscore_rescores", "Leads taken from the rescore queue, by outcome (scored, failed, gone: erased).",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.rescore_backlog = Gauge(
            "leadscore_rescore_backlog", "Leads due for a rescore.", registry=self.registry,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.rescore_lag = Gauge(
            "leadscore_rescore_oldest_due_seconds", "How long the longest-waiting due rescore has waited.",
            registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        # Labelled children, kept: `labels()` takes a lock and builds a key on every call, five times per score.
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._routes: dict[str, Counter] = {}
        self._scores: dict[str, Histogram] = {}
        self._fast_path: dict[str, Counter] = {}

    def forget_dead_workers(self) -> None:
        """Drop the gauges of workers that are gone (uvicorn replaced them): theirs are no news about the service.

        Each worker calls this when it starts, which is when one has been replaced.
        """
        folder = os.environ.get(MULTIPROCESS_DIR)
        if not folder:
            return
        for path in Path(folder).glob("gauge_live*_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format: those of every worker when they share a multiprocess folder."""
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def observe_thresholds(self, *, stale: bool) -> None:
        """Whether this worker routes with a policy it could not read again."""
        self.thresholds_stale.set(1 if stale else 0)

    def observe_score_log(self, status: ScoreLogStatus) -> None:
        """The score log's backlog, lag, journal and refused records, as a worker last saw them."""
        self.score_log_pending.set(status.pending)
        self.score_log_lag.set(status.oldest_pending_seconds or 0.0)
        self.score_log_writable.set(0 if status.journal_error else 1)
        if status.rejected > self._rejected_seen:
            self.score_log_rejected.inc(status.rejected - self._rejected_seen)
            self._rejected_seen = status.rejected

    def observe_rescore_queue(self, backlog: int, oldest_due_seconds: float) -> None:
        """The rescore queue as a worker last saw it: leads due, and the wait of the longest-waiting one."""
        self.rescore_backlog.set(backlog)
        self.rescore_lag.set(oldest_due_seconds)

    def count_rescores(self, outcome: str, n: int) -> None:
        """`n` queued leads done with: scored, failed (tried again later) or gone (erased meanwhile)."""
        if n:
            self.rescores.labels(outcome).inc(n)

    def count_request(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered: its route template, status and latency."""
        counter = self._requests.get((route, status))
        if counter is None:
            counter = self._requests[route, status] = self.requests.labels(route, str(status))
        counter.inc()
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = self.latency.labels(route)
        latency.observe(seconds)

    def count_fast_path(self, *, answered: bool) -> None:
        """A score request answered on the fast path, or handed to the documented endpoint."""
        key = "answered" if answered else "handed_over"
        counter = self._fast_path.get(key)
        if counter is None:
            counter = self._fast_path[key] = self.fast_path.labels(key)
        counter.inc()

    def count_scores(self, queues: Iterable[str], scores: Mapping[str, Iterable[float]]) -> None:
        """Leads routed (by queue) and the scores handed out (by model: fit, readiness)."""
        for queue, n in Tally(queues).items():
            counter = self._routes.get(queue)
            if counter is None:
                counter = self._routes[queue] = self.routes.labels(queue)
            counter.inc(n)
        for model, values in scores.items():
            histogram = self._scores.get(model)
            if histogram is None:
                histogram = self._scores[model] = self.scores.labels(model)
            for value in values:
                histogram.observe(value)


class MetricsAndLimitsMiddleware:
    """Pure ASGI middleware: counts and times requests, and refuses bodies over the size limit with 413.

    The body limit is checked on the declared Content-Length and again on the bytes actually received, so a
    chunked upload cannot slip past it.
    """

    def __init__(
        self, app: ASGIApp, *, metrics: ServiceMetrics, max_body_bytes: int, paths: Callable[[], Collection[str]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # The documented paths, to name the route of a request refused before routing (a 413): read at first use.
        self._paths = paths
        self._known: Collection[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _too_large(send, self.max_body_bytes)
            status["code"] = 413
        else:
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise _BodyTooLargeError(self.max_body_bytes)
                return message

            try:
                await self.app(scope, receive_limited, send_wrapper)
            except _BodyTooLargeError:
                await _too_large(send, self.max_body_bytes)
                status["code"] = 413
        elapsed = time.perf_counter() - start
        self.metrics.count_request(self._route(scope), status["code"], elapsed)

    def _route(self, scope: Scope) -> str:
        """The route's template, never the raw path: unknown paths must not grow the label set."""
        matched = scope.get("route")
        if matched is not None:
            return str(getattr(matched, "path", "unmatched"))
        if self._known is None:  # refused before the router saw it: a documented path names itself
            self._known = frozenset(self._paths())
        path = scope.get("path", "")
        return path if path in self._known else "unmatched"


class _BodyTooLargeError(HTTPException):
    # An HTTPException, so that FastAPI's body parsing lets it through (it turns other errors into a 400) and the
    # app answers 413 itself; the middleware answers it when raised outside the app's exception handling.
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body exceeds the limit of {limit} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process under that number: not ours to forget
    return True
