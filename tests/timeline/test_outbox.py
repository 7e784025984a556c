"""The webhook outbox on SQLite and PostgreSQL: which events a rescore queues, retries, dead letters, replay, leases."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.postgres import fresh_database
from timeline import outbox
from timeline.engine import make_engine
from timeline.outbox import RetryPolicy
from timeline.schema import webhook_attempts
from timeline.scores import ScoreState

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
ALL = list(outbox.EVENT_TYPES)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty store on each database the service runs on."""
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        try:
            yield made
        finally:
            made.dispose()
        return
    with fresh_database() as name:
        made = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        try:
            yield made
        finally:
            made.dispose()


def _state(queue: str = "nurture", grade: str = "B", readiness: float | None = 40.0, fit: float = 60.0) -> ScoreState:
    return ScoreState(
        fit_score=fit,
        grade=grade,
        readiness_probability=None if readiness is None else readiness / 1000,
        readiness_score=readiness,
        stage=None if readiness is None else ("SQL" if readiness >= 70 else "nurture"),
        queue=queue,
        model_version="3",
        thresholds_version=2,
        response={"route": {"queue": queue, "priority": 2, "sla_hours": 24.0}, "reasons": {"fit": [], "behaviour": []}},
    )


def _subscribe(engine: Engine, events: list[str] = ALL, min_change: float = 10.0) -> outbox.Subscription:
    with engine.begin() as conn:
        return outbox.create_subscription(conn, "https://crm.example/hooks", events, min_change, "CRM", now=T0)


def _emit(engine: Engine, before: ScoreState | None, after: ScoreState, lead: str = "L1") -> list[outbox.Delivery]:
    with engine.begin() as conn:
        count = outbox.emit_score_events(conn, lead, before, after, now=T0)
        subscriptions = outbox.list_subscriptions(conn)
        queued = [d for s in subscriptions for d in outbox.deliveries(conn, s.id, limit=1000)]
    assert count == len([d for d in queued if d.lead_id == lead and d.created_at == T0])
    return queued


def _events(queued: list[outbox.Delivery], subscription: outbox.Subscription) -> list[str]:
    return sorted(d.event_type for d in queued if d.subscription_id == subscription.id)


def test_a_subscription_is_created_with_an_id_and_a_standard_webhooks_secret(engine: Engine) -> None:
    created = _subscribe(engine)
    assert created.id.startswith("wh_") and created.secret.startswith("whsec_")
    assert len(base64.b64decode(created.secret.removeprefix("whsec_"))) == 24
    with engine.begin() as conn:
        assert outbox.get_subscription(conn, created.id) == created
        later = T0 + dt.timedelta(seconds=1)
        other = outbox.create_subscription(conn, "http://10.0.0.5:8080/in", ["lead.routed"], 0, None, now=later)
        assert other.id != created.id and other.secret != created.secret
        assert [s.id for s in outbox.list_subscriptions(conn)] == [created.id, other.id]


@pytest.mark.parametrize(
    ("field", "kwargs", "says"),
    [
        ("url", {"url": "ftp://crm.example/hooks"}, "http:// or https://"),
        ("url", {"url": "https:///no-host"}, "with a host"),
        ("url", {"url": "https://crm.example:99999/x"}, "not a URL"),
        ("events", {"events": ["lead.created"]}, "lead.routed, lead.score_changed, lead.grade_changed"),
        ("events", {"events": []}, "at least one"),
        ("min_score_change", {"min_score_change": 150.0}, "between 0 and 100"),
        ("min_score_change", {"min_score_change": float("nan")}, "between 0 and 100"),
    ],
)
def test_bad_subscriptions_are_refused_naming_the_field(
    engine: Engine, field: str, kwargs: dict[str, Any], says: str
) -> None:
    values: dict[str, Any] = {"url": "https://crm.example/h", "events": ALL, "min_score_change": 5.0, **kwargs}
    with engine.begin() as conn, pytest.raises(outbox.SubscriptionError) as refused:
        outbox.create_subscription(conn, values["url"], values["events"], values["min_score_change"], None)
    assert refused.value.field == field and says in str(refused.value)
    with engine.begin() as conn:
        assert outbox.list_subscriptions(conn) == []


def test_update_rotate_and_delete(engine: Engine) -> None:
    created = _subscribe(engine)
    later = T0 + dt.timedelta(hours=1)
    with engine.begin() as conn:
        changed = outbox.update_subscription(
            conn, created.id, url="https://crm.example/v2", events=["lead.routed"], active=False, min_score_change=3,
            now=later,
        )  # fmt: skip
        assert changed is not None
        assert (changed.url, changed.events, changed.active, changed.min_score_change) == (
            "https://crm.example/v2", ("lead.routed",), False, 3.0,
        )  # fmt: skip
        assert changed.secret == created.secret and changed.updated_at == later and changed.created_at == T0
        rotated = outbox.update_subscription(conn, created.id, rotate_secret=True, now=later)
        assert rotated is not None and rotated.secret != created.secret and rotated.url == "https://crm.example/v2"
        assert outbox.get_subscription(conn, created.id) == rotated
        assert outbox.update_subscription(conn, "wh_missing", active=True) is None
    _emit_to_active(engine)
    with engine.begin() as conn:
        delivery = outbox.queue_test_event(conn, created.id, now=T0)
        assert delivery is not None
        outbox.record_attempt(conn, delivery.id, 500, None, 3.0, T0, RetryPolicy())
        assert outbox.delete_subscription(conn, created.id)
        assert not outbox.delete_subscription(conn, created.id)
        assert outbox.get_delivery(conn, delivery.id) is None
        assert conn.execute(select(func.count()).select_from(webhook_attempts)).scalar() == 0


def _emit_to_active(engine: Engine) -> None:
    with engine.begin() as conn:
        assert outbox.emit_score_events(conn, "L9", None, _state(), now=T0) == 0  # the only subscription is inactive


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # A first score routes the lead: lead.routed only (no score or grade to change from).
        (None, _state(), ["lead.routed"]),
        (_state(queue="nurture"), _state(queue="sales"), ["lead.routed"]),
        (_state(readiness=40.0), _state(readiness=55.0), ["lead.score_changed"]),
        (_state(readiness=40.0), _state(readiness=49.9), []),  # below the subscription's 10 points
        (_state(readiness=50.0), _state(readiness=40.0), ["lead.score_changed"]),  # down counts too
        (_state(grade="B"), _state(grade="A"), ["lead.grade_changed"]),
        # No readiness on either side (an opportunity): the fit score is the score.
        (_state(readiness=None, fit=60.0), _state(readiness=None, fit=75.0), ["lead.score_changed"]),
        (_state(readiness=None, fit=60.0), _state(readiness=None, fit=65.0), []),
        # Readiness stops applying (became an opportunity): fit compared, and the queue changed.
        (_state(queue="sales", readiness=90.0, fit=70.0), _state(queue="owner", readiness=None, fit=70.0),
         ["lead.routed"]),
        (_state(), _state(), []),
        (_state(queue="sdr", grade="C", readiness=20.0), _state(queue="sales", grade="A", readiness=80.0),
         ["lead.grade_changed", "lead.routed", "lead.score_changed"]),
    ],
)  # fmt: skip
def test_which_events_a_rescore_queues(
    engine: Engine, before: ScoreState | None, after: ScoreState, expected: list[str]
) -> None:
    everything = _subscribe(engine, ALL, min_change=10.0)
    routed_only = _subscribe(engine, ["lead.routed"], min_change=0.0)
    queued = _emit(engine, before, after)
    assert _events(queued, everything) == expected
    assert _events(queued, routed_only) == [e for e in expected if e == "lead.routed"]


def test_min_score_change_is_per_subscription_and_zero_means_any_change(engine: Engine) -> None:
    strict = _subscribe(engine, ["lead.score_changed"], min_change=20.0)
    any_change = _subscribe(engine, ["lead.score_changed"], min_change=0.0)
    queued = _emit(engine, _state(readiness=40.0), _state(readiness=40.5))
    assert (_events(queued, strict), _events(queued, any_change)) == ([], ["lead.score_changed"])
    queued = _emit(engine, _state(readiness=40.0), _state(readiness=60.0), lead="L2")
    assert _events(queued, strict) == ["lead.score_changed"]
    # No change at all fires nothing, not even for "any change".
    queued = _emit(engine, _state(readiness=40.0), _state(readiness=40.0), lead="L3")
    assert [d for d in queued if d.lead_id == "L3"] == []


def test_inactive_subscriptions_get_nothing_and_their_queued_deliveries_wait(engine: Engine) -> None:
    subscription = _subscribe(engine)
    _emit(engine, None, _state())
    with engine.begin() as conn:
        outbox.update_subscription(conn, subscription.id, active=False)
        assert outbox.emit_score_events(conn, "L2", None, _state(), now=T0) == 0
    assert outbox.claim_due(engine, "w1", 10, 60, T0) == []  # paused, not lost
    with engine.begin() as conn:
        outbox.update_subscription(conn, subscription.id, active=True)
    claimed = outbox.claim_due(engine, "w1", 10, 60, T0)
    assert [c.subscription_id for c in claimed] == [subscription.id]


def test_the_payload_says_what_changed(engine: Engine) -> None:
    _subscribe(engine)
    before, after = _state(queue="sdr", grade="C", readiness=20.0), _state(queue="sales", grade="A", readiness=80.0)
    queued = {d.event_type: d for d in _emit(engine, before, after)}
    routed = json.loads(queued["lead.routed"].payload)
    assert routed["type"] == "lead.routed" and routed["timestamp"] == "2026-03-02T09:00:00Z"
    data = routed["data"]
    assert (data["lead_id"], data["queue"], data["previous_queue"]) == ("L1", "sales", "sdr")
    assert (data["grade"], data["previous_grade"]) == ("A", "C")
    assert data["readiness"] == {"probability": 0.08, "score": 80.0, "stage": "SQL"}
    assert data["fit"] == {"score": 60.0, "grade": "A"}
    assert data["route"] == after.response["route"] and data["reasons"] == after.response["reasons"]
    assert (data["model_version"], data["thresholds_version"]) == ("3", 2)
    assert json.loads(queued["lead.score_changed"].payload)["data"]["score_change"] == pytest.approx(60.0)
    (first_score,) = [d for d in _emit(engine, None, _state(), lead="L2") if d.lead_id == "L2"]
    first = json.loads(first_score.payload)
    assert first["data"]["previous_queue"] is None and first["data"]["previous_grade"] is None
    assert all(d.id.startswith("msg_") and d.status == "pending" and d.next_attempt_at == T0 for d in queued.values())


def test_backoff_doubles_with_jitter_up_to_the_cap_and_the_delivery_dies_after_n(engine: Engine) -> None:
    subscription = _subscribe(engine)
    _emit(engine, None, _state())
    policy = RetryPolicy(base_seconds=5.0, factor=2.0, max_seconds=30.0, jitter=0.2, max_attempts=6)
    now = T0
    waits = []
    for attempt in range(1, 7):
        claimed = outbox.claim_due(engine, "w1", 10, 60, now)
        assert len(claimed) == 1 and claimed[0].attempts == attempt - 1
        assert outbox.claim_due(engine, "w1", 10, 60, now) == []  # leased: not handed out twice
        with engine.begin() as conn:
            status = outbox.record_attempt(conn, claimed[0].id, 503, None, 12.5, now, policy, rng=random.Random(7))
            delivery = outbox.get_delivery(conn, claimed[0].id)
        assert delivery is not None
        if attempt < 6:
            assert status == "pending" and delivery.next_attempt_at is not None
            wait = (delivery.next_attempt_at - now).total_seconds()
            nominal = min(30.0, 5.0 * 2 ** (attempt - 1))
            assert nominal * 0.8 <= wait <= nominal
            waits.append(wait)
            # Not due before its time.
            assert outbox.claim_due(engine, "w1", 10, 60, now + dt.timedelta(seconds=wait * 0.99)) == []
            now = delivery.next_attempt_at
        else:
            assert status == "dead" and delivery.status == "dead" and delivery.next_attempt_at is None
    assert waits[1] > waits[0] * 1.5 and waits[-1] <= 30.0
    assert outbox.claim_due(engine, "w1", 10, 60, now + dt.timedelta(days=1)) == []
    with engine.begin() as conn:
        (logged,) = outbox.deliveries(conn, subscription.id, status="dead")
    assert [a.status_code for a in logged.log] == [503] * 6 and logged.log[0].duration_ms == 12.5


def test_a_2xx_delivers_and_errors_are_logged(engine: Engine) -> None:
    subscription = _subscribe(engine)
    _emit(engine, None, _state())
    (claimed,) = outbox.claim_due(engine, "w1", 10, 60, T0)
    with engine.begin() as conn:
        assert outbox.record_attempt(conn, claimed.id, None, "timed out after 10 s", 10_000, T0, RetryPolicy()) == (
            "pending"
        )
    later = T0 + dt.timedelta(minutes=5)
    (again,) = outbox.claim_due(engine, "w1", 10, 60, later)
    with engine.begin() as conn:
        assert outbox.record_attempt(conn, again.id, 204, None, 8.0, later, RetryPolicy()) == "delivered"
        (delivered,) = outbox.deliveries(conn, subscription.id)
    assert delivered.status == "delivered" and delivered.delivered_at == later and delivered.attempts == 2
    assert [(a.status_code, a.error) for a in delivered.log] == [(None, "timed out after 10 s"), (204, None)]
    assert outbox.claim_due(engine, "w1", 10, 60, later + dt.timedelta(days=1)) == []


def test_replay_sends_a_dead_delivery_again_and_keeps_its_log(engine: Engine) -> None:
    subscription = _subscribe(engine)
    _emit(engine, None, _state())
    policy = RetryPolicy(max_attempts=1)
    (claimed,) = outbox.claim_due(engine, "w1", 10, 60, T0)
    with engine.begin() as conn:
        assert outbox.record_attempt(conn, claimed.id, 500, None, 1.0, T0, policy) == "dead"
        with pytest.raises(outbox.ReplayError):
            outbox.replay(conn, outbox.queue_test_event(conn, subscription.id, now=T0).id, T0)  # type: ignore[union-attr]
    later = T0 + dt.timedelta(hours=2)
    with engine.begin() as conn:
        replayed = outbox.replay(conn, claimed.id, later)
        assert outbox.replay(conn, "msg_missing", later) is None
    assert replayed is not None and replayed.status == "pending" and replayed.next_attempt_at == later
    assert len(replayed.log) == 1
    due = outbox.claim_due(engine, "w2", 10, 60, later)
    assert claimed.id in [c.id for c in due]
    with engine.begin() as conn:
        assert outbox.record_attempt(conn, claimed.id, 200, None, 1.0, later, policy) == "delivered"
        delivered = outbox.get_delivery(conn, claimed.id)
        assert delivered is not None and [a.status_code for a in delivered.log] == [500, 200]
        # A delivered one may be replayed too (the receiver lost it): same id, same body.
        again = outbox.replay(conn, claimed.id, later)
    assert again is not None and again.status == "pending" and again.payload == delivered.payload


def test_the_log_pages_newest_first_and_filters_by_status(engine: Engine) -> None:
    subscription = _subscribe(engine, ["lead.routed"])
    for i in range(5):
        with engine.begin() as conn:
            outbox.emit_score_events(conn, f"L{i}", None, _state(), now=T0 + dt.timedelta(seconds=i))
    with engine.begin() as conn:
        first = outbox.deliveries(conn, subscription.id, limit=2)
        second = outbox.deliveries(conn, subscription.id, limit=2, before=first[-1].id)
        rest = outbox.deliveries(conn, subscription.id, limit=10, before=second[-1].id)
        assert [d.lead_id for d in first + second + rest] == ["L4", "L3", "L2", "L1", "L0"]
        assert outbox.deliveries(conn, subscription.id, status="delivered") == []
        assert len(outbox.deliveries(conn, subscription.id, status="pending")) == 5


def test_two_concurrent_claimers_never_get_the_same_delivery(engine: Engine) -> None:
    _subscribe(engine, ["lead.routed"])
    leads = 60
    with engine.begin() as conn:
        for i in range(leads):
            outbox.emit_score_events(conn, f"L{i}", None, _state(), now=T0)
    claims: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def claimer(worker: str) -> None:
        try:
            start.wait()
            while batch := outbox.claim_due(engine, worker, 3, 60, T0):
                claims[worker].extend(c.id for c in batch)
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=claimer, args=(worker,)) for worker in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    both = claims["a"] + claims["b"]
    assert len(both) == len(set(both)) == leads
    # Once the leases end, the deliveries nobody recorded are handed out again (a worker died holding them).
    assert len(outbox.claim_due(engine, "c", 100, 60, T0 + dt.timedelta(seconds=61))) == leads
