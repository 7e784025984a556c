"""Writes to the lead timeline, on SQLite and PostgreSQL: leads, touches stored once, Segment messages, rescores."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from features.spec import ACTIVITY_TYPES
from tests.postgres import fresh_database
from timeline.engine import make_engine, stored_time
from timeline.event_map import EventMap, EventMapError, load_event_map
from timeline.ingest import (
    CONFLICT,
    INVALID,
    NOT_FOUND,
    IngestError,
    SegmentMessage,
    TouchIn,
    TouchLimits,
    add_touches,
    apply_events,
    rescore_backlog,
    touch_key,
    trait_changes,
    unmapped,
    upsert_lead,
    upsert_leads,
)
from timeline.schema import accounts, identities, leads, rescore_queue, touches

NOW = dt.datetime(2025, 6, 10, 12, 0, tzinfo=dt.UTC)
CREATED = dt.datetime(2025, 5, 1, 9, 0, tzinfo=dt.UTC)


def at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2025, 6, day, hour, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty store on a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        store = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        yield store
        store.dispose()
        return
    with fresh_database() as name:
        store = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        yield store
        store.dispose()


def create(engine: Engine, lead_id: str, **fields: Any) -> None:
    with engine.begin() as conn:
        upsert_lead(conn, lead_id, {"created_at": CREATED, **fields}, now=NOW)


def stored_lead(engine: Engine, lead_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(leads).where(leads.c.lead_id == lead_id)).one()
    return dict(row._mapping)


def queued(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {row.lead_id: row.cause for row in conn.execute(select(rescore_queue))}


def clear_queue(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(rescore_queue.delete())


def stored_touches(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(touches).order_by(touches.c.occurred_at))]


def refused(engine: Engine, work: Any) -> IngestError:
    """Run `work(conn)` in a transaction that must be refused; the transaction rolls back."""
    with pytest.raises(IngestError) as caught, engine.begin() as conn:
        work(conn)
    return caught.value


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# ---- leads -------------------------------------------------------------------------------------------------------


def test_a_lead_is_created_then_changed_only_where_a_field_is_given(engine: Engine) -> None:
    with engine.begin() as conn:
        first = upsert_lead(
            conn, "L1", {"created_at": CREATED, "industry": "software", "employee_count": 120, "country": "DE"}, now=NOW
        )
    assert first.created and set(first.changed) == {"created_at", "industry", "employee_count", "country"}
    with engine.begin() as conn:
        second = upsert_lead(conn, "L1", {"industry": "retail", "country": None}, now=NOW)
    assert not second.created
    assert second.changed == {"industry": ("software", "retail"), "country": ("DE", None)}
    row = stored_lead(engine, "L1")
    assert (row["industry"], row["employee_count"], row["country"]) == ("retail", 120, None)
    assert second.lead["industry"] == "retail" and "country" not in second.lead


def test_an_unchanged_write_changes_and_queues_nothing(engine: Engine) -> None:
    create(engine, "L1", industry="software")
    clear_queue(engine)
    with engine.begin() as conn:
        change = upsert_lead(conn, "L1", {"industry": "software", "created_at": CREATED}, now=NOW)
    assert change.changed == {} and queued(engine) == {}


def test_custom_attributes_merge_and_a_null_removes_one(engine: Engine) -> None:
    create(engine, "L1", custom={"plan": "pro", "seats": 5})
    with engine.begin() as conn:
        upsert_lead(conn, "L1", {"custom": {"seats": 8, "plan": None, "region_code": "eu"}}, now=NOW)
    assert json.loads(stored_lead(engine, "L1")["custom"]) == {"seats": 8, "region_code": "eu"}


def test_creating_needs_created_at(engine: Engine) -> None:
    error = refused(engine, lambda conn: upsert_lead(conn, "L1", {"industry": "software"}, now=NOW))
    assert error.status == INVALID and error.problems[0].loc == ("created_at",)
    assert count(engine, leads) == 0


def test_created_at_of_a_stored_lead_cannot_change(engine: Engine) -> None:
    create(engine, "L1")
    error = refused(engine, lambda conn: upsert_lead(conn, "L1", {"created_at": at(1)}, now=NOW))
    assert error.status == CONFLICT and error.problems[0].loc == ("created_at",)
    assert "2025-05-01T09:00:00Z" in error.problems[0].msg


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"mql_at": None}, "mql_at", "cannot be cleared"),
        ({"mql_at": at(1)}, "mql_at", "earlier than the stored 2025-06-02T12:00:00Z"),
        ({"sql_at": at(1)}, "sql_at", "earlier than mql_at 2025-06-02T12:00:00Z (stored)"),
        ({"recycled_at": at(5)}, "recycled_at", "recycled_at needs lost_at"),
    ],
)
def test_lifecycle_stamps_only_move_forward(engine: Engine, change: dict[str, Any], field: str, words: str) -> None:
    create(engine, "L1", mql_at=at(2))
    error = refused(engine, lambda conn: upsert_lead(conn, "L1", change, now=NOW))
    assert error.status == CONFLICT
    assert [p.loc for p in error.problems] == [(field,)] and words in error.problems[0].msg, error
    assert stored_time(stored_lead(engine, "L1")["mql_at"]) == at(2)


def test_a_stamp_may_move_later_and_the_next_stage_follows(engine: Engine) -> None:
    create(engine, "L1", mql_at=at(2))
    clear_queue(engine)
    with engine.begin() as conn:
        change = upsert_lead(conn, "L1", {"mql_at": at(3), "sql_at": at(4)}, now=NOW)
    assert set(change.changed) == {"mql_at", "sql_at"}
    assert queued(engine) == {"L1": "lifecycle"}


def test_a_new_lead_with_stamps_out_of_order_is_invalid(engine: Engine) -> None:
    error = refused(engine, lambda conn: upsert_lead(conn, "L1", {"created_at": at(5), "mql_at": at(2)}, now=NOW))
    assert error.status == INVALID and error.problems[0].loc == ("mql_at",)
    assert "earlier than created_at" in error.problems[0].msg


def test_a_profile_change_queues_the_lead_and_its_colleagues(engine: Engine) -> None:
    create(engine, "L1", account_id="ACME")
    create(engine, "L2", account_id="ACME")
    create(engine, "L3", account_id="INITECH")
    clear_queue(engine)
    with engine.begin() as conn:
        upsert_lead(conn, "L1", {"job_title": "CTO"}, now=NOW)
    assert queued(engine) == {"L1": "profile", "L2": "colleague"}
    clear_queue(engine)
    with engine.begin() as conn:  # moves to another buying group: both groups change
        upsert_lead(conn, "L1", {"account_id": "INITECH"}, now=NOW)
    assert queued(engine) == {"L1": "profile", "L2": "colleague", "L3": "colleague"}


def test_bulk_is_all_or_nothing_and_names_the_item(engine: Engine) -> None:
    items: list[tuple[str, dict[str, Any]]] = [
        ("L1", {"created_at": CREATED}), ("L2", {"created_at": CREATED}), ("L3", {"industry": "retail"}),
    ]  # fmt: skip
    error = refused(engine, lambda conn: upsert_leads(conn, items, now=NOW))
    assert error.problems[0].loc == ("leads", 2, "created_at")
    assert count(engine, leads) == 0 and count(engine, rescore_queue) == 0
    with engine.begin() as conn:
        done = upsert_leads(conn, items[:2], now=NOW)
    assert [c.created for c in done] == [True, True]


# ---- touches -----------------------------------------------------------------------------------------------------


def test_the_same_touch_is_stored_once_by_id_or_by_content(engine: Engine) -> None:
    create(engine, "L1")
    by_id = TouchIn(at(1), "demo_request", lead_id="L1", activity_id="evt-1")
    by_content = TouchIn(at(2), "pricing_page_view", lead_id="L1", properties={"b": 1, "a": [1, 2]})
    same_content = TouchIn(at(2), "pricing_page_view", lead_id="L1", properties={"a": [1, 2], "b": 1})
    with engine.begin() as conn:
        first = add_touches(conn, [by_id, by_content, same_content], now=NOW)
    assert (first.stored, first.duplicates, first.lead_ids) == (2, 1, ("L1",))
    again = TouchIn(at(3), "email_open", lead_id="L1", activity_id="evt-1")  # the id decides, not the content
    with engine.begin() as conn:
        second = add_touches(conn, [by_id, again, by_content], now=NOW)
    assert (second.stored, second.duplicates, second.lead_ids) == (0, 3, ())
    assert len(stored_touches(engine)) == 2


def test_the_content_digest_reads_the_time_in_utc(engine: Engine) -> None:
    utc = TouchIn(at(1, 10), "email_open", lead_id="L1")
    berlin = TouchIn(at(1, 10).astimezone(dt.timezone(dt.timedelta(hours=2))), "email_open", lead_id="L1")
    later = TouchIn(at(1, 11), "email_open", lead_id="L1")
    assert touch_key(utc) == touch_key(berlin) != touch_key(later)
    assert touch_key(TouchIn(at(1), "email_open", lead_id="L1", activity_id="x")) == "id:x"


def test_touches_queue_their_leads_and_the_colleagues(engine: Engine) -> None:
    create(engine, "L1", account_id="ACME")
    create(engine, "L2", account_id="ACME")
    create(engine, "L3")
    clear_queue(engine)
    with engine.begin() as conn:
        add_touches(conn, [TouchIn(at(1), "demo_request", lead_id="L1")], now=NOW)
    assert queued(engine) == {"L1": "touch", "L2": "colleague"}


def test_a_touch_of_an_unknown_lead_is_refused_naming_its_index(engine: Engine) -> None:
    create(engine, "L1")
    batch = [TouchIn(at(1), "email_open", lead_id="L1"), TouchIn(at(1), "email_open", lead_id="nobody")]
    error = refused(engine, lambda conn: add_touches(conn, batch, now=NOW))
    assert error.status == NOT_FOUND and error.problems[0].loc == ("activities", 1, "lead_id")
    assert "'nobody' is not stored" in error.problems[0].msg
    assert count(engine, touches) == 0


@pytest.mark.parametrize(
    ("touch", "field", "words"),
    [
        (TouchIn(NOW + dt.timedelta(days=2), "email_open", lead_id="L1"), "occurred_at", "more than 1 days ahead"),
        (TouchIn(dt.datetime(1969, 12, 31, tzinfo=dt.UTC), "email_open", lead_id="L1"), "occurred_at", "before 1970"),
        (TouchIn(at(1), "telepathy", lead_id="L1"), "activity_type", "not an activity type"),
        (TouchIn(at(1), "email_open", lead_id="L1", properties={"body": "x" * 200}), "properties", "at most 100"),
        (TouchIn(at(1), "email_open"), "lead_id", "needs lead_id"),
    ],
)
def test_bad_touches_are_refused_and_nothing_is_stored(engine: Engine, touch: TouchIn, field: str, words: str) -> None:
    create(engine, "L1")
    clear_queue(engine)
    good = TouchIn(at(1), "demo_request", lead_id="L1")
    limits = TouchLimits(max_property_bytes=100)
    error = refused(engine, lambda conn: add_touches(conn, [good, good, touch], now=NOW, limits=limits))
    assert error.status == INVALID
    assert error.problems[0].loc == ("activities", 2, field) and words in error.problems[0].msg, error
    assert count(engine, touches) == 0 and queued(engine) == {}


def test_an_anonymous_touch_waits_for_its_lead(engine: Engine) -> None:
    with engine.begin() as conn:
        added = add_touches(conn, [TouchIn(at(1), "pricing_page_view", anonymous_id="cookie-1")], now=NOW)
    assert added.stored == 1 and added.lead_ids == ()
    assert [t["lead_id"] for t in stored_touches(engine)] == [None]
    assert count(engine, rescore_queue) == 0


def test_every_activity_type_can_be_stored(engine: Engine) -> None:
    create(engine, "L1")
    batch = [TouchIn(at(1), kind, lead_id="L1") for kind in ACTIVITY_TYPES]
    with engine.begin() as conn:
        assert add_touches(conn, batch, now=NOW).stored == len(ACTIVITY_TYPES)


def test_large_batches_go_in_several_statements(engine: Engine) -> None:
    create(engine, "L1")
    batch = [TouchIn(at(1) - dt.timedelta(seconds=i), "page_view", lead_id="L1") for i in range(1234)]
    with engine.begin() as conn:
        assert add_touches(conn, batch, now=NOW).stored == 1234
    with engine.begin() as conn:
        assert add_touches(conn, batch, now=NOW).duplicates == 1234


# ---- Segment -----------------------------------------------------------------------------------------------------


def events(engine: Engine, *messages: SegmentMessage, event_map: EventMap | None = None) -> Any:
    with engine.begin() as conn:
        return apply_events(conn, messages, event_map or load_event_map(), now=NOW)


def test_anonymous_page_views_join_the_lead_when_identified(engine: Engine) -> None:
    applied = events(
        engine,
        SegmentMessage("page", anonymous_id="c1", name="Pricing", timestamp=at(1), message_id="m1"),
        SegmentMessage("page", anonymous_id="c1", properties={"path": "/blog/post"}, timestamp=at(2), message_id="m2"),
    )
    assert applied.touches_stored == 2
    assert [(t["activity_type"], t["lead_id"]) for t in stored_touches(engine)] == [
        ("pricing_page_view", None), ("page_view", None),
    ]  # fmt: skip
    identified = events(
        engine,
        SegmentMessage(
            "identify", user_id="L1", anonymous_id="c1", timestamp=at(3),
            traits={"email": "Dana@Acme.com", "title": "CTO", "company": {"industry": "software"}, "employees": "850"},
        ),
    )  # fmt: skip
    assert identified.identified == 2
    assert {t["lead_id"] for t in stored_touches(engine)} == {"L1"}
    row = stored_lead(engine, "L1")
    assert (row["email_domain"], row["job_title"], row["industry"], row["employee_count"]) == (
        "acme.com", "CTO", "software", 850,
    )  # fmt: skip
    assert "Dana" not in json.dumps({k: str(v) for k, v in row.items()})  # the address is never stored
    assert stored_time(row["created_at"]) == at(3)
    # Later touches under the same cookie are the lead's at once.
    events(engine, SegmentMessage("track", anonymous_id="c1", event="Demo Requested", timestamp=at(4)))
    assert stored_touches(engine)[-1]["lead_id"] == "L1"
    assert queued(engine)["L1"] in ("touch", "identify")


def test_identify_never_moves_a_stored_leads_created_at(engine: Engine) -> None:
    create(engine, "L1")
    later = SegmentMessage("identify", user_id="L1", traits={"createdAt": "2025-05-03T00:00:00Z", "title": "CFO"})
    events(engine, later)
    row = stored_lead(engine, "L1")
    assert stored_time(row["created_at"]) == CREATED and row["job_title"] == "CFO"


def test_a_batch_is_applied_in_order(engine: Engine) -> None:
    events(
        engine,
        SegmentMessage("page", anonymous_id="c1", timestamp=at(1)),
        SegmentMessage("identify", user_id="L1", anonymous_id="c1", timestamp=at(1, 13)),
        SegmentMessage("track", user_id="L1", event="Trial Started", timestamp=at(2), message_id="m3"),
    )
    assert [(t["activity_type"], t["lead_id"]) for t in stored_touches(engine)] == [
        ("page_view", "L1"), ("free_trial_signup", "L1"),
    ]  # fmt: skip


def test_group_sets_the_account_and_its_traits(engine: Engine) -> None:
    create(engine, "L1")
    create(engine, "L2", account_id="ACME")
    clear_queue(engine)
    traits = {"industry": "retail", "employees": 40}
    events(engine, SegmentMessage("group", user_id="L1", group_id="ACME", traits=traits))
    row = stored_lead(engine, "L1")
    assert (row["account_id"], row["industry"], row["employee_count"]) == ("ACME", "retail", 40)
    with engine.connect() as conn:
        traits = conn.execute(select(accounts.c.traits).where(accounts.c.account_id == "ACME")).scalar_one()
    assert json.loads(traits) == {"industry": "retail", "employee_count": 40}
    assert queued(engine) == {"L1": "profile", "L2": "colleague"}


def test_alias_links_an_anonymous_id_and_refuses_to_merge_two_leads(engine: Engine) -> None:
    create(engine, "L1")
    create(engine, "L2")
    events(engine, SegmentMessage("track", anonymous_id="c9", event="Email Opened", timestamp=at(1)))
    applied = events(engine, SegmentMessage("alias", previous_id="c9", user_id="L1"))
    assert applied.identified == 1 and stored_touches(engine)[0]["lead_id"] == "L1"
    with pytest.raises(IngestError) as caught:
        events(engine, SegmentMessage("alias", previous_id="L2", user_id="L1"))
    assert caught.value.status == CONFLICT and caught.value.problems[0].loc == ("batch", 0, "previousId")
    assert "merge two stored leads" in caught.value.problems[0].msg
    with pytest.raises(IngestError) as again:  # an anonymous id is one lead's, not a second one's
        events(engine, SegmentMessage("identify", user_id="L2", anonymous_id="c9"))
    assert again.value.status == CONFLICT and "already identified as lead 'L1'" in again.value.problems[0].msg
    with engine.connect() as conn:
        assert conn.execute(select(identities.c.lead_id).where(identities.c.anonymous_id == "c9")).scalar() == "L1"


def test_unknown_events_are_counted_or_refused_as_the_map_says(engine: Engine) -> None:
    create(engine, "L1")
    applied = events(
        engine,
        SegmentMessage("track", user_id="L1", event="Button Clicked", timestamp=at(1)),
        SegmentMessage("track", user_id="L1", event="Button Clicked", timestamp=at(2)),
        SegmentMessage("track", user_id="L1", event="Demo Requested", timestamp=at(3)),
    )
    assert applied.unmapped == {("track", "Button Clicked"): 2} and applied.touches_stored == 1
    events(engine, SegmentMessage("track", user_id="L1", event="Button Clicked", timestamp=at(4)))
    with engine.connect() as conn:
        assert [(u.kind, u.name, u.count) for u in unmapped(conn)] == [("track", "Button Clicked", 3)]
    strict = load_event_map().model_copy(update={"unknown": "refuse"})
    with pytest.raises(IngestError) as caught:
        events(
            engine,
            SegmentMessage("track", user_id="L1", event="Demo Requested", timestamp=at(5)),
            SegmentMessage("track", user_id="L1", event="Button Clicked", timestamp=at(5)),
            event_map=strict,
        )
    assert caught.value.status == INVALID and caught.value.problems[0].loc == ("batch", 1, "event")
    assert "'Button Clicked' is not in the event map" in caught.value.problems[0].msg
    assert len(stored_touches(engine)) == 1  # the demo request of the refused batch is not stored


def test_a_track_of_an_unknown_user_is_refused(engine: Engine) -> None:
    with pytest.raises(IngestError) as caught:
        events(engine, SegmentMessage("track", user_id="ghost", event="Demo Requested", timestamp=at(1)))
    assert caught.value.status == NOT_FOUND and caught.value.problems[0].loc == ("batch", 0, "userId")


def test_a_bad_trait_is_named() -> None:
    event_map = load_event_map()
    with pytest.raises(IngestError) as caught:
        trait_changes({"company": {"employee_count": "many"}}, event_map, ("traits",))
    assert caught.value.problems[0].loc == ("traits", "company", "employee_count")


# ---- the backlog and the event map -------------------------------------------------------------------------------


def test_the_backlog_counts_due_rescores(engine: Engine) -> None:
    create(engine, "L1")
    create(engine, "L2")
    with engine.connect() as conn:
        assert rescore_backlog(conn, dt.datetime.now(dt.UTC)) == 2
        assert rescore_backlog(conn, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == 0


def test_the_event_map_refuses_activity_types_the_contract_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("track:\n  Demo Requested: demo_request\n  Coffee Chat: coffee\n")
    with pytest.raises(EventMapError, match="'Coffee Chat' maps to 'coffee'"):
        load_event_map(path)
    path.write_text("page:\n  rules:\n    - path: /pricing\n      activity_type: pricing\n")
    with pytest.raises(EventMapError, match=r"page.rules.0.activity_type"):
        load_event_map(path)
    path.write_text("traits:\n  email: email_address\n")
    with pytest.raises(EventMapError, match="'email' maps to 'email_address'"):
        load_event_map(path)
    with pytest.raises(EventMapError, match="cannot read"):
        load_event_map(tmp_path / "missing.yaml")


def test_the_shipped_map_covers_the_documented_events() -> None:
    event_map = load_event_map()
    assert event_map.track_type("Demo Requested") == "demo_request"
    assert event_map.page.activity_type(None, "/en/pricing?plan=pro") == "pricing_page_view"
    assert event_map.page.activity_type("Home", "/") == "page_view"
    assert event_map.traits["email"] == "email_domain"
