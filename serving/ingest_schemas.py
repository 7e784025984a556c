"""Request and response bodies of the ingest API: leads, touches and Segment messages written to the lead timeline."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from serving.schemas import (
    MAX_EMPLOYEES,
    MAX_PROPERTY_DEPTH,
    MAX_REVENUE,
    Activity,
    Identifier,
    Lead,
    Text,
    Timestamp,
    _custom_problem,
    _shallow,
)
from timeline.ingest import SegmentMessage, TouchIn

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)
Properties = Annotated[dict[str, Any] | None, AfterValidator(_shallow)]


class LeadFields(BaseModel):
    """A lead's fields to create or change: only the fields sent change; null clears a profile field.

    created_at is required to create a lead and never changes afterwards. Lifecycle stamps only move forward (as the
    contract has them): a stamp cannot be cleared or moved earlier. Custom attributes merge (null removes one).
    """

    model_config = _STRICT

    account_id: Identifier | None = Field(default=None, description="The company; null: the lead is its own.")
    created_at: Timestamp | None = None
    industry: Text | None = None
    employee_count: int | None = Field(default=None, ge=0, le=MAX_EMPLOYEES)
    annual_revenue: float | None = Field(default=None, ge=0, le=MAX_REVENUE)
    country: Text | None = None
    region: Text | None = None
    job_title: Text | None = None
    seniority: Text | None = None
    department: Text | None = None
    email_domain: Text | None = None
    source: Text | None = None
    channel: Text | None = None
    mql_at: Timestamp | None = None
    sal_at: Timestamp | None = None
    sql_at: Timestamp | None = None
    lost_at: Timestamp | None = None
    recycled_at: Timestamp | None = None
    requalified_at: Timestamp | None = None
    won_at: Timestamp | None = None
    custom: dict[Identifier, float | Text | None] | None = Field(
        default=None, description="Custom CRM attributes, merged into the stored ones (a null value removes one)."
    )

    @field_validator("custom")
    @classmethod
    def _finite(cls, value: dict[str, float | str | None] | None) -> dict[str, float | str | None] | None:
        for key, item in (value or {}).items():
            problem = _custom_problem(key, item)
            if problem is not None:
                raise ValueError(problem)
        return value

    def changes(self) -> dict[str, Any]:
        """The fields the request sent, with their values (null included: it clears)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class BulkLead(LeadFields):
    """One lead of a bulk write: its id and the fields to create or change."""

    lead_id: Identifier

    def changes(self) -> dict[str, Any]:
        """The fields to write, without the id."""
        return {name: getattr(self, name) for name in self.model_fields_set if name != "lead_id"}


class BulkLeadsRequest(BaseModel):
    """Many leads written at once: all or nothing (LEADSCORE_MAX_INGEST_BATCH at most)."""

    model_config = ConfigDict(extra="forbid")

    leads: list[BulkLead] = Field(min_length=1)


class FieldChange(BaseModel):
    """A field's value before and after the change (before null: the lead was new, or the field empty)."""

    before: JsonValue
    after: JsonValue


class LeadWritten(BaseModel):
    """The stored lead after the write, and what changed."""

    created: bool
    lead: Lead = Field(description="The lead as stored (the score API's lead object).")
    changed: dict[str, FieldChange]


class BulkLeadsWritten(BaseModel):
    """Each lead of a bulk write, in request order."""

    created: int
    updated: int
    unchanged: int
    leads: list[LeadWritten]


class ActivityIn(Activity):
    """A touch to store: a stored lead's (lead_id), or an anonymous visitor's (anonymous_id alone)."""

    lead_id: Identifier | None = Field(default=None, description="A stored lead; or send anonymous_id.")
    anonymous_id: Identifier | None = Field(
        default=None, description="An anonymous visitor's id: the touch joins the lead that id is identified as."
    )
    activity_id: Identifier | None = Field(
        default=None, description="The touch's id at the source: the same id twice is stored once."
    )

    @model_validator(mode="after")
    def _someone(self) -> Self:
        if self.lead_id is None and self.anonymous_id is None:
            raise ValueError("a touch needs lead_id (a stored lead) or anonymous_id (an anonymous visitor)")
        return self

    def touch(self) -> TouchIn:
        """The touch as the timeline stores it."""
        return TouchIn(
            occurred_at=self.occurred_at,
            activity_type=self.activity_type,
            lead_id=self.lead_id,
            anonymous_id=self.anonymous_id,
            properties=self.properties,
            activity_id=self.activity_id,
        )


class ActivitiesRequest(BaseModel):
    """A batch of touches (LEADSCORE_MAX_INGEST_BATCH at most); the same touch twice is stored once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"activities": [
            {"lead_id": "L-1042", "occurred_at": "2025-06-01T08:30:00Z", "activity_type": "demo_request",
             "activity_id": "evt-81723"},
            {"anonymous_id": "a7f3-cookie", "occurred_at": "2025-06-01T08:29:00Z", "activity_type": "pricing_page_view",
             "properties": {"path": "/pricing"}},
        ]}]},
    )  # fmt: skip

    activities: list[ActivityIn] = Field(min_length=1)


class ActivitiesAdded(BaseModel):
    """How many touches were new, how many were stored already (not an error), and whose."""

    stored: int
    duplicates: int
    lead_ids: list[str] = Field(description="Leads that got new touches (queued for a rescore).")


SegmentType = Literal["identify", "track", "page", "screen", "group", "alias"]


class _SegmentFields(BaseModel):
    """The Segment spec's common and per-call fields the service reads; other fields (integrations, ...) are ignored."""

    # Segment libraries send more than the service reads (integrations, version, channel, writeKey): ignored.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_strip_whitespace=True)

    user_id: Identifier | None = Field(default=None, alias="userId")
    anonymous_id: Identifier | None = Field(default=None, alias="anonymousId")
    event: Text | None = Field(default=None, description="track: the event's name, looked up in the event map.")
    name: Text | None = Field(default=None, description="page: the page's name.")
    properties: Properties = Field(
        default=None, description=f"track and page: the touch's details (nested at most {MAX_PROPERTY_DEPTH} levels)."
    )
    traits: Properties = Field(default=None, description="identify and group: mapped through the event map's traits.")
    context: Properties = None
    timestamp: Timestamp | None = None
    original_timestamp: Timestamp | None = Field(default=None, alias="originalTimestamp")
    sent_at: Timestamp | None = Field(default=None, alias="sentAt")
    received_at: Timestamp | None = Field(default=None, alias="receivedAt")
    message_id: Identifier | None = Field(
        default=None, alias="messageId", description="The message's id: the same message twice is stored once."
    )
    group_id: Identifier | None = Field(default=None, alias="groupId")
    previous_id: Identifier | None = Field(default=None, alias="previousId")

    def message(self, kind: SegmentType, sent_at: dt.datetime | None = None) -> SegmentMessage:
        """The message as the timeline applies it (its time: timestamp, else originalTimestamp, sentAt, receivedAt)."""
        when = self.timestamp or self.original_timestamp or self.sent_at or sent_at or self.received_at
        return SegmentMessage(
            type=kind,
            user_id=self.user_id,
            anonymous_id=self.anonymous_id,
            event=self.event,
            name=self.name,
            properties=self.properties,
            traits=self.traits,
            context=self.context,
            timestamp=when,
            message_id=self.message_id,
            group_id=self.group_id,
            previous_id=self.previous_id,
        )


class SegmentMessageIn(_SegmentFields):
    """One Segment message: identify, track, page (screen), group or alias."""

    type: SegmentType


EXAMPLE_EVENTS: dict[str, Any] = {
    "batch": [
        {"type": "page", "anonymousId": "a7f3-cookie", "name": "Pricing", "properties": {"path": "/pricing"},
         "timestamp": "2025-06-01T08:29:00Z", "messageId": "msg-1"},
        {"type": "identify", "userId": "L-1042", "anonymousId": "a7f3-cookie",
         "traits": {"email": "dana@acme.com", "title": "Director of IT", "company": {"industry": "software"}},
         "timestamp": "2025-06-01T08:30:00Z", "messageId": "msg-2"},
        {"type": "track", "userId": "L-1042", "event": "Demo Requested", "timestamp": "2025-06-01T08:31:00Z",
         "messageId": "msg-3"},
        {"type": "group", "userId": "L-1042", "groupId": "ACME", "traits": {"employees": 850}},
    ]
}  # fmt: skip


class EventsRequest(_SegmentFields):
    """A Segment message, or a batch of them ({"batch": [...]}) as Segment's HTTP API sends it."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_EVENTS]})

    type: SegmentType | None = Field(default=None, description="A single message's type; absent for a batch.")
    batch: list[SegmentMessageIn] | None = Field(default=None, description="Messages, applied in order.")

    @model_validator(mode="after")
    def _one_or_batch(self) -> Self:
        if (self.batch is None) == (self.type is None):
            raise ValueError("send one message (with its type) or a batch of them (batch: [...]), not both or neither")
        return self

    def messages(self) -> list[SegmentMessage]:
        """The messages, in order; a batch's sentAt is the time of those that carry none of their own."""
        if self.batch is None:
            assert self.type is not None  # checked by the validator
            return [self.message(self.type)]
        return [item.message(item.type, self.sent_at) for item in self.batch]


class UnmappedCount(BaseModel):
    """An event the map sends nowhere, and how often this request sent it (ignored, not stored)."""

    kind: Literal["track", "page"]
    name: str
    count: int


class EventsApplied(BaseModel):
    """What the messages did."""

    messages: int
    leads_changed: list[str]
    touches_stored: int
    duplicates: int
    identified: int = Field(description="Anonymous touches that joined a lead's history.")
    unmapped: list[UnmappedCount] = Field(description="Events the map sends nowhere (unknown: ignore), counted.")


class UnmappedEvent(BaseModel):
    """An event name the map sends nowhere: how often it came, first and last."""

    kind: Literal["track", "page"]
    name: str
    count: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


class UnmappedEvents(BaseModel):
    """Every event the map sent nowhere so far, most frequent first, and what the map does with such events."""

    unknown: Literal["ignore", "refuse"]
    events: list[UnmappedEvent]


class StoredTouchOut(BaseModel):
    """A stored touch, as the lead's timeline shows it."""

    occurred_at: dt.datetime
    activity_type: str
    properties: dict[str, JsonValue] | None = None
    activity_id: str | None = Field(default=None, description="The sender's id of the touch, when it gave one.")
    anonymous_id: str | None = Field(default=None, description="The visitor id it came under before identify.")
    received_at: dt.datetime


class HistoricScoreOut(BaseModel):
    """One rescore of the lead: when, why, and what it said."""

    scored_at: dt.datetime
    cause: str = Field(description="What queued it: touch, profile, lifecycle, colleague, identify, sweep, ...")
    fit_score: float
    grade: str
    readiness_probability: float | None
    readiness_score: float | None
    stage: str | None
    queue: str
    model_version: str
    thresholds_version: int


class LeadTimeline(BaseModel):
    """A stored lead: profile, account, identities, latest touches, current score with reasons, score history."""

    lead: Lead = Field(description="The lead as stored (the score API's lead object).")
    updated_at: dt.datetime
    account_traits: dict[str, JsonValue] | None = Field(description="The account's traits, from Segment group calls.")
    anonymous_ids: list[str] = Field(description="Visitor ids identified as this lead.")
    touch_count: int = Field(description="Every stored touch of the lead; `touches` holds the latest of them.")
    touches: list[StoredTouchOut]
    score: dict[str, JsonValue] | None = Field(
        description="The latest rescore's answer, as POST /v1/score gives it (reasons included); null until scored."
    )
    scored_at: dt.datetime | None
    rescore_pending: bool = Field(description="A change is queued and the score above does not reflect it yet.")
    score_history: list[HistoricScoreOut] = Field(description="Rescores, newest first.")


class LeadErased(BaseModel):
    """What an erasure deleted (the erasure itself is recorded with these counts only, no personal data)."""

    lead_id: str
    deleted: dict[str, int] = Field(description="Rows deleted, by table.")
    colleagues_requeued: int = Field(description="Colleagues queued for a rescore (their buying group changed).")
