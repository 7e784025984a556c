"""/v1/webhooks: subscriptions that tell a CRM when a lead is routed or its score or grade changes (admin keys)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Connection

from serving.state import AdminAuth, ServiceState, StateDep
from timeline import outbox

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=[AdminAuth])
_T = TypeVar("_T")

Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
SubscriptionId = Annotated[str, Path(max_length=40, description="The subscription's id (wh_...).")]
DeliveryId = Annotated[str, Path(max_length=40, description="The delivery's id (msg_...), its webhook-id header.")]
MinScoreChange = Annotated[
    float,
    Field(
        ge=0,
        le=outbox.SCORE_RANGE,
        description="Points (0-100) the score must move for lead.score_changed: readiness when the lead has it "
        "before and after, else fit. 0: any change.",
    ),
]
EVENTS_DOC = (
    "Any of lead.routed (the lead's queue changed, or it was scored for the first time), lead.score_changed (by at "
    "least min_score_change), lead.grade_changed."
)
DEFAULT_MIN_SCORE_CHANGE = 10.0


def _valid_url(value: str) -> str:
    try:
        return outbox.check_url(value)
    except outbox.SubscriptionError as err:
        raise ValueError(str(err)) from None


def _valid_events(value: list[str]) -> list[str]:
    try:
        return list(outbox.check_events(value))
    except outbox.SubscriptionError as err:
        raise ValueError(str(err)) from None


class SubscriptionIn(BaseModel):
    """A new subscription: where to POST which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="http(s) URL that takes the POSTs; it must answer 2xx within the service's webhook timeout "
        "(LEADSCORE_WEBHOOK_TIMEOUT_SECONDS, 10 s by default), redirects are not followed.",
        max_length=outbox.MAX_URL_LENGTH,
    )
    events: list[str] = Field(description=EVENTS_DOC, max_length=len(outbox.EVENT_TYPES) * 4)
    min_score_change: MinScoreChange = DEFAULT_MIN_SCORE_CHANGE
    description: Description | None = None
    active: bool = True

    _url = field_validator("url")(_valid_url)
    _events = field_validator("events")(_valid_events)


class SubscriptionPatch(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=outbox.MAX_URL_LENGTH)
    events: list[str] | None = Field(default=None, description=EVENTS_DOC, max_length=len(outbox.EVENT_TYPES) * 4)
    min_score_change: MinScoreChange | None = None
    description: Description | None = None
    active: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _valid_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _valid_events(value)


class SubscriptionOut(BaseModel):
    """A subscription, without its secret (shown only when created or rotated)."""

    id: str
    url: str
    events: list[str]
    min_score_change: float
    active: bool
    description: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, subscription: outbox.Subscription) -> SubscriptionOut:
        """The API shape of a stored subscription."""
        return cls(
            id=subscription.id,
            url=subscription.url,
            events=list(subscription.events),
            min_score_change=subscription.min_score_change,
            active=subscription.active,
            description=subscription.description,
            created_at=subscription.created_at,
            updated_at=subscription.updated_at,
        )


class SubscriptionWithSecret(SubscriptionOut):
    """A subscription with its signing secret: keep it now, it is not shown again (a rotation makes a new one)."""

    secret: str = Field(description="whsec_...: verify each webhook with it (Standard Webhooks).")

    @classmethod
    def of(cls, subscription: outbox.Subscription) -> SubscriptionWithSecret:
        """The API shape, secret included."""
        return cls(**SubscriptionOut.of(subscription).model_dump(), secret=subscription.secret)


class Subscriptions(BaseModel):
    """Every subscription, oldest first."""

    subscriptions: list[SubscriptionOut]


class AttemptOut(BaseModel):
    """One attempt: when, the receiver's status code (null: no answer), why it failed, how long it took."""

    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    """One event for one subscription, its state and every attempt (oldest first)."""

    id: str = Field(description="The webhook-id header: the same on every attempt and replay.")
    event_type: str
    lead_id: str | None
    status: Literal["pending", "delivered", "dead"]
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    retries_spent: int = Field(description="Failed attempts since it was queued or last replayed.")
    payload: dict[str, Any]
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, delivery: outbox.Delivery) -> DeliveryOut:
        """The API shape of a delivery and its log."""
        return cls(
            id=delivery.id,
            event_type=delivery.event_type,
            lead_id=delivery.lead_id,
            status=delivery.status,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at,
            delivered_at=delivery.delivered_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            retries_spent=delivery.attempts - (1 if delivery.status == outbox.DELIVERED else 0),
            payload=json.loads(delivery.payload),
            attempts=[
                AttemptOut(
                    attempted_at=a.attempted_at, status_code=a.status_code, error=a.error, duration_ms=a.duration_ms
                )
                for a in delivery.log
            ],
        )


class Deliveries(BaseModel):
    """A page of the delivery log, newest first; `next_before` continues it (null: no more)."""

    deliveries: list[DeliveryOut]
    next_before: str | None


async def _in_transaction(state: ServiceState, work: Callable[[Connection], _T]) -> _T:
    """Run `work` in one transaction on the service store, off the event loop."""

    def run() -> _T:
        with state.score_log.engine.begin() as conn:
            return work(conn)

    return await asyncio.to_thread(run)


def _not_found(subscription_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"there is no webhook subscription {subscription_id!r}")


@router.post("", summary="Subscribe a URL to lead events", status_code=status.HTTP_201_CREATED)
async def create(body: SubscriptionIn, state: StateDep) -> SubscriptionWithSecret:
    """Store the subscription; the answer holds its signing secret, shown this once."""
    created = await _in_transaction(
        state,
        lambda conn: outbox.create_subscription(
            conn, body.url, body.events, body.min_score_change, body.description, active=body.active
        ),
    )
    log.info("webhook subscription %s created for %s (%s)", created.id, created.url, ", ".join(created.events))
    return SubscriptionWithSecret.of(created)


@router.get("", summary="Every webhook subscription")
async def list_all(state: StateDep) -> Subscriptions:
    """Every subscription, oldest first, without secrets."""
    found = await _in_transaction(state, outbox.list_subscriptions)
    return Subscriptions(subscriptions=[SubscriptionOut.of(s) for s in found])


@router.get("/{subscription_id}", summary="One webhook subscription")
async def get_one(subscription_id: SubscriptionId, state: StateDep) -> SubscriptionOut:
    """The subscription, without its secret."""
    found = await _in_transaction(state, lambda conn: outbox.get_subscription(conn, subscription_id))
    if found is None:
        raise _not_found(subscription_id)
    return SubscriptionOut.of(found)


@router.patch("/{subscription_id}", summary="Change a webhook subscription")
async def change(subscription_id: SubscriptionId, body: SubscriptionPatch, state: StateDep) -> SubscriptionOut:
    """Change the fields given. A deactivated subscription's queued deliveries wait until it is active again."""
    changed = await _in_transaction(
        state,
        lambda conn: outbox.update_subscription(
            conn, subscription_id, url=body.url, events=body.events, active=body.active,
            min_score_change=body.min_score_change, description=body.description,
        ),
    )  # fmt: skip
    if changed is None:
        raise _not_found(subscription_id)
    return SubscriptionOut.of(changed)


@router.delete("/{subscription_id}", summary="Delete a webhook subscription", status_code=status.HTTP_204_NO_CONTENT)
async def remove(subscription_id: SubscriptionId, state: StateDep) -> Response:
    """Delete the subscription, its queued deliveries and their log."""
    if not await _in_transaction(state, lambda conn: outbox.delete_subscription(conn, subscription_id)):
        raise _not_found(subscription_id)
    log.info("webhook subscription %s deleted", subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{subscription_id}/rotate-secret", summary="Give a subscription a new signing secret")
async def rotate(subscription_id: SubscriptionId, state: StateDep) -> SubscriptionWithSecret:
    """A new secret signs every attempt from now on (queued deliveries included); the old one stops at once."""
    rotated = await _in_transaction(
        state, lambda conn: outbox.update_subscription(conn, subscription_id, rotate_secret=True)
    )
    if rotated is None:
        raise _not_found(subscription_id)
    log.info("webhook subscription %s has a new secret", subscription_id)
    return SubscriptionWithSecret.of(rotated)


@router.get("/{subscription_id}/deliveries", summary="The delivery log of a subscription")
async def delivery_log(
    subscription_id: SubscriptionId,
    state: StateDep,
    status_filter: Annotated[
        Literal["pending", "delivered", "dead"] | None, Query(alias="status", description="Only deliveries in it.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        str | None, Query(max_length=40, description="Continue after this delivery id (a page's next_before).")
    ] = None,
) -> Deliveries:
    """Deliveries newest first, each with its attempts: when, status code, error, duration."""

    def read(conn: Connection) -> list[outbox.Delivery] | None:
        if outbox.get_subscription(conn, subscription_id) is None:
            return None
        return outbox.deliveries(conn, subscription_id, status=status_filter, limit=limit, before=before)

    found = await _in_transaction(state, read)
    if found is None:
        raise _not_found(subscription_id)
    return Deliveries(
        deliveries=[DeliveryOut.of(d) for d in found], next_before=found[-1].id if len(found) == limit else None
    )


@router.post("/{subscription_id}/deliveries/{delivery_id}/replay", summary="Send a delivery again")
async def replay(subscription_id: SubscriptionId, delivery_id: DeliveryId, state: StateDep) -> DeliveryOut:
    """Queue a dead or delivered delivery again, same id and body; its earlier attempts stay in the log."""

    def run(conn: Connection) -> outbox.Delivery | None:
        found = outbox.get_delivery(conn, delivery_id, with_log=False)
        if found is None or found.subscription_id != subscription_id:
            return None
        return outbox.replay(conn, delivery_id, dt.datetime.now(dt.UTC))

    try:
        replayed = await _in_transaction(state, run)
    except outbox.ReplayError as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    if replayed is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"subscription {subscription_id!r} has no delivery {delivery_id!r}"
        )
    log.info("webhook delivery %s replayed", delivery_id)
    return DeliveryOut.of(replayed)


@router.post("/{subscription_id}/test", summary="Send a test event", status_code=status.HTTP_202_ACCEPTED)
async def test_event(subscription_id: SubscriptionId, state: StateDep) -> DeliveryOut:
    """Queue a `webhook.test` event to the subscription's URL; follow it in the delivery log."""

    def run(conn: Connection) -> outbox.Delivery | None:
        found = outbox.get_subscription(conn, subscription_id)
        if found is None:
            return None
        if not found.active:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"subscription {subscription_id!r} is inactive: activate it (PATCH active: true) to send to it",
            )
        return outbox.queue_test_event(conn, subscription_id)

    queued = await _in_transaction(state, run)
    if queued is None:
        raise _not_found(subscription_id)
    return DeliveryOut.of(queued)
