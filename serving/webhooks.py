"""The webhook delivery loop: lease due deliveries from the outbox, POST them signed, record how each attempt went.

Every service process runs it (several replicas on one store deliver each webhook once at a time: see
timeline.outbox.claim_due). Delivery is at least once: a process stopped mid-send leaves its lease to run out and the
delivery is sent again, so receivers deduplicate on the webhook-id header. A receiver must answer within
LEADSCORE_WEBHOOK_TIMEOUT_SECONDS with a 2xx; anything else (another status, a redirect, a timeout, no connection) is
a failed attempt, retried with exponential backoff until the delivery is dead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine
from standardwebhooks import Webhook

from serving.settings import Settings
from timeline.outbox import ClaimedDelivery, RetryPolicy, claim_due, record_attempt

log = logging.getLogger(__name__)

# A lease outlives the longest attempt by this much, so that a slow receiver's delivery is not handed to a second
# process while the first still waits for its answer.
LEASE_MARGIN_SECONDS = 30.0
# How long the loop pauses after the store failed it (down, locked): the leases keep every delivery safe meanwhile.
ERROR_PAUSE_SECONDS = 2.0
# How much of a receiver's refusal the delivery log keeps (it is for a person reading why, not an archive).
ANSWER_PREVIEW_BYTES = 500
USER_AGENT = "leadscore-webhooks/1"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How the loop delivers: timeout per attempt, batch size, polling, and the retry policy."""

    timeout_seconds: float = 10.0
    batch: int = 50
    poll_seconds: float = 0.2
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays with the process that claimed it."""
        return self.timeout_seconds + LEASE_MARGIN_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        """The loop's configuration from the service settings (LEADSCORE_WEBHOOK_*)."""
        return cls(
            timeout_seconds=settings.webhook_timeout_seconds,
            batch=settings.webhook_batch,
            poll_seconds=settings.webhook_poll_seconds,
            policy=RetryPolicy(
                base_seconds=settings.webhook_backoff_base_seconds,
                factor=settings.webhook_backoff_factor,
                max_seconds=settings.webhook_backoff_max_seconds,
                jitter=settings.webhook_backoff_jitter,
                max_attempts=settings.webhook_max_attempts,
            ),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt went: the receiver's status code, or why there was none; when it ended; how long it took."""

    status_code: int | None
    error: str | None
    finished_at: dt.datetime
    duration_ms: float


def worker_id() -> str:
    """The name this process's leases carry: host, process id and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def new_client(config: DeliveryConfig) -> httpx.AsyncClient:
    """The HTTP client the loop sends with: the attempt's timeout, redirects not followed."""
    return httpx.AsyncClient(timeout=config.timeout_seconds, follow_redirects=False, headers={"User-Agent": USER_AGENT})


def signed_headers(delivery_id: str, secret: str, payload: str, now: dt.datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed at `now` (a retry hours later gets a fresh timestamp).

    The spec's receivers refuse timestamps more than five minutes off their clock, so each attempt is signed when it
    is sent, with the subscription's secret at that moment.
    """
    stamp = math.floor(now.timestamp())
    signature = Webhook(secret).sign(delivery_id, dt.datetime.fromtimestamp(stamp, dt.UTC), payload)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def send(client: httpx.AsyncClient, delivery: ClaimedDelivery, timeout_seconds: float) -> Outcome:
    """POST one delivery to its subscription's URL; never raises for what the receiver or the network does."""
    started = time.perf_counter()
    headers = signed_headers(delivery.id, delivery.secret, delivery.payload, dt.datetime.now(dt.UTC))
    status_code: int | None = None
    error: str | None = None
    try:
        # One deadline for the whole attempt: httpx's timeouts are per phase, and a receiver trickling its answer
        # a byte at a time would meet none of them.
        async with asyncio.timeout(timeout_seconds):
            request = client.build_request("POST", delivery.url, content=delivery.payload.encode(), headers=headers)
            response = await client.send(request, stream=True)
            try:
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = await _refusal(response)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        error = f"no answer within {timeout_seconds:g} s"
    except httpx.HTTPError as err:
        error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    duration_ms = (time.perf_counter() - started) * 1000
    return Outcome(status_code, error, dt.datetime.now(dt.UTC), duration_ms)


async def _refusal(response: httpx.Response) -> str:
    """Why a non-2xx answer failed the attempt, with the start of its body."""
    if response.is_redirect:
        where = response.headers.get("location", "?")
        return f"answered {response.status_code} (to {where}): redirects are not followed; subscribe the final URL"
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= ANSWER_PREVIEW_BYTES:
            break
    text = body[:ANSWER_PREVIEW_BYTES].decode("utf-8", "replace").strip()
    return f"answered {response.status_code}" + (f": {text}" if text else "")


def _record(
    engine: Engine, claimed: Sequence[ClaimedDelivery], outcomes: Sequence[Outcome], policy: RetryPolicy
) -> None:
    with engine.begin() as conn:
        for delivery, outcome in zip(claimed, outcomes, strict=True):
            record_attempt(
                conn, delivery.id, outcome.status_code, outcome.error, outcome.duration_ms, outcome.finished_at, policy
            )


async def deliver_due(
    engine: Engine, client: httpx.AsyncClient, config: DeliveryConfig, worker: str, *, now: dt.datetime | None = None
) -> int:
    """One pass: claim the due deliveries (a batch), send them at once, record every attempt; how many were sent."""
    when = now or dt.datetime.now(dt.UTC)
    claimed = await asyncio.to_thread(claim_due, engine, worker, config.batch, config.lease_seconds, when)
    if not claimed:
        return 0
    outcomes = await asyncio.gather(*(send(client, delivery, config.timeout_seconds) for delivery in claimed))
    # If this fails the attempts go unrecorded, and the deliveries are sent again when their leases end.
    await asyncio.to_thread(_record, engine, claimed, outcomes, config.policy)
    failed = sum(1 for outcome in outcomes if outcome.error is not None)
    if failed:
        log.info("webhooks: %d of %d deliveries failed this time and will be retried", failed, len(claimed))
    return len(claimed)


async def deliver_forever(engine: Engine, config: DeliveryConfig, *, worker: str | None = None) -> None:
    """Deliver while the service lives: a pass every poll interval, passes back to back while full batches wait."""
    worker = worker or worker_id()
    async with new_client(config) as client:
        while True:
            try:
                sent = await deliver_due(engine, client, config, worker)
            except Exception:
                log.exception("could not deliver webhooks; trying again in %.0f s", ERROR_PAUSE_SECONDS)
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if sent < config.batch:
                await asyncio.sleep(config.poll_seconds)
