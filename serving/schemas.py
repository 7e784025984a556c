"""Request and response bodies of the score API: strict, typed, with examples for the OpenAPI docs."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Protocol, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema

from features.spec import ACTIVITY_TYPES, LEADS, LIFECYCLE_CHAIN
from features.validation import normalize_activity_type
from serving.policy import Grade, Queue, Stage

# The feature engine stores epoch seconds in 32 bits: stamps must fall between these years. Anything outside is a
# typo (0202 for 2020) or a placeholder (9999-12-31), never a real touch.
EARLIEST = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
MAX_TEXT = 256


def _utc(value: dt.datetime) -> dt.datetime:
    """Naive times are UTC; every time must lie between 1970 and 2100."""
    value = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"must lie between {EARLIEST.date()} and {LATEST.date()}")
    return value.astimezone(dt.UTC)


Timestamp = Annotated[dt.datetime, AfterValidator(_utc)]


class _UtcInstant:
    """A datetime that pydantic-core checks on its own: UTC offset 0, between EARLIEST and LATEST inclusive."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.datetime_schema(tz_constraint=0, ge=EARLIEST, le=LATEST)


# A Timestamp already in canonical form (UTC, within range): accepted as `_utc` accepts it, without a Python call.
UtcTimestamp = Annotated[dt.datetime, _UtcInstant]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
ActivityType = Literal[
    "page_view", "pricing_page_view", "email_open", "email_click", "form_submit", "content_download",
    "webinar_registered", "webinar_attended", "demo_request", "free_trial_signup", "meeting_booked", "unsubscribe",
]  # fmt: skip
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)
_ACTIVITY_TYPE_SET = frozenset(ACTIVITY_TYPES)


class Activity(BaseModel):
    """One touch of the lead (or of a colleague, named by lead_id)."""

    model_config = _STRICT

    occurred_at: Timestamp
    activity_type: ActivityType
    lead_id: Identifier | None = Field(default=None, description="A colleague's lead_id; default: the scored lead.")
    properties: dict[str, Any] | None = None

    @field_validator("activity_type", mode="before")
    @classmethod
    def _canonical_type(cls, value: object) -> object:
        # 'Demo Request' and 'demo-request' mean demo_request; anything else is refused with the accepted list.
        if isinstance(value, str) and value not in _ACTIVITY_TYPE_SET:
            canonical = normalize_activity_type(value)
            if canonical in ACTIVITY_TYPES:
                return canonical
        return value


class Lead(BaseModel):
    """A lead's profile and lifecycle, as the CRM holds it. Unknown category values are scored as unseen."""

    model_config = _STRICT

    lead_id: Identifier
    account_id: Identifier | None = Field(default=None, description="The company; default: the lead is its own.")
    created_at: Timestamp
    industry: Text | None = None
    employee_count: int | None = Field(default=None, ge=0, le=10_000_000)
    annual_revenue: float | None = Field(default=None, ge=0, le=1e13)
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
    custom: dict[Identifier, float | Text | None] = Field(
        default_factory=dict, description="Custom CRM attributes declared in the deployment's lead contract."
    )

    @field_validator("custom")
    @classmethod
    def _finite(cls, value: dict[str, float | str | None]) -> dict[str, float | str | None]:
        for key, item in value.items():
            if key in LEADS.names:  # record() puts custom attributes at top level: they must not replace a field
                raise ValueError(f"custom attribute {key!r} is a lead field: send it as lead.{key}, not in custom")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"custom attribute {key!r} must be a finite number")
        return value

    @model_validator(mode="after")
    def _lifecycle_in_order(self) -> Self:
        seen: list[tuple[str, dt.datetime]] = []
        for name in LIFECYCLE_CHAIN:
            stamp = getattr(self, name)
            if stamp is None:
                continue
            later = [earlier for earlier, at in seen if at > stamp]
            if later:
                raise ValueError(f"{name} is earlier than {', '.join(later)}: lifecycle stamps must not run backwards")
            seen.append((name, stamp))
        if self.recycled_at is not None and self.lost_at is None:
            raise ValueError("recycled_at needs lost_at: only a lost lead can be recycled")
        if self.requalified_at is not None and self.recycled_at is None:
            raise ValueError("requalified_at needs recycled_at: only a recycled lead can be requalified")
        return self

    def record(self) -> dict[str, Any]:
        """The lead as the feature engine reads it (contract column names; custom attributes at top level)."""
        values = self.model_dump(exclude={"custom"})
        values["account_id"] = self.account_id or self.lead_id
        values.update(self.custom)
        return values


EXAMPLE_REQUEST: dict[str, Any] = {
    "lead": {
        "lead_id": "L-1042",
        "account_id": "ACME",
        "created_at": "2025-05-02T09:15:00Z",
        "industry": "Software",
        "employee_count": 850,
        "annual_revenue": 120000000,
        "country": "US",
        "region": "North America",
        "job_title": "Director of IT",
        "seniority": "director",
        "department": "it",
        "email_domain": "acme.com",
        "source": "organic search",
        "channel": "inbound",
        "mql_at": "2025-05-20T10:00:00Z",
    },
    "activities": [
        {"occurred_at": "2025-05-02T09:15:00Z", "activity_type": "content_download"},
        {"occurred_at": "2025-05-28T14:02:00Z", "activity_type": "pricing_page_view"},
        {"occurred_at": "2025-06-01T08:30:00Z", "activity_type": "demo_request"},
        {"occurred_at": "2025-05-30T16:45:00Z", "activity_type": "webinar_attended", "lead_id": "L-1043"},
    ],
    "colleagues": [{"lead_id": "L-1043", "account_id": "ACME", "created_at": "2025-05-25T11:00:00Z"}],
    "as_of": "2025-06-03T09:00:00Z",
}


class ScoreRequest(BaseModel):
    """One lead to score, its recent touches and its colleagues at the same account (with their touches)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    lead: Lead
    activities: list[Activity] = Field(default_factory=list)
    colleagues: list[Lead] = Field(default_factory=list)
    as_of: Timestamp | None = Field(default=None, description="Score as of this time; default: now.")

    @model_validator(mode="after")
    def _touches_belong(self) -> Self:
        _check_touches(self.lead, self.colleagues, (a.lead_id for a in self.activities))
        return self


def _check_touches(lead: Lead, colleagues: Sequence[Lead], touch_lead_ids: Iterable[str | None]) -> None:
    known = {lead.lead_id, *(c.lead_id for c in colleagues)}
    if len(known) != 1 + len(colleagues):
        raise ValueError("colleagues must have distinct lead_ids, different from the lead's")
    for i, lead_id in enumerate(touch_lead_ids):
        if lead_id is not None and lead_id not in known:
            raise ValueError(f"activities[{i}].lead_id {lead_id!r} is neither the lead nor a colleague")


class BatchRequest(BaseModel):
    """Many leads in one call (the service's batch limit applies)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"leads": [EXAMPLE_REQUEST]}]})

    leads: list[ScoreRequest] = Field(min_length=1)


class Touch(Protocol):
    """What scoring reads of an activity."""

    @property
    def occurred_at(self) -> dt.datetime: ...
    @property
    def activity_type(self) -> str: ...
    @property
    def lead_id(self) -> str | None: ...


class LeadToScore(Protocol):
    """What scoring reads of a validated request, whether the reference model or its canonical twin holds it."""

    @property
    def lead(self) -> Lead: ...
    @property
    def activities(self) -> Sequence[Touch]: ...
    @property
    def colleagues(self) -> Sequence[Lead]: ...
    @property
    def as_of(self) -> dt.datetime | None: ...


# ---- canonical requests: the fast path -------------------------------------------------------------------------
# Most requests arrive in canonical form: times in UTC, activity types spelt as documented. These twins of the
# request models accept exactly such requests, to the same values, with every check of a touch done inside
# pydantic-core (the reference models call Python twice per touch: most of a batch's validation time). Whatever a
# twin refuses is handed to the reference models, which decide and word the answer, so what the API accepts and
# every 422 stay as they are.


class _CanonicalLead(Lead):
    created_at: UtcTimestamp
    mql_at: UtcTimestamp | None = None
    sal_at: UtcTimestamp | None = None
    sql_at: UtcTimestamp | None = None
    lost_at: UtcTimestamp | None = None
    recycled_at: UtcTimestamp | None = None
    requalified_at: UtcTimestamp | None = None
    won_at: UtcTimestamp | None = None


class _CanonicalActivity(BaseModel):
    model_config = _STRICT

    occurred_at: UtcTimestamp
    activity_type: ActivityType
    lead_id: Identifier | None = None
    properties: dict[str, Any] | None = None


class CanonicalScoreRequest(BaseModel):
    """A ScoreRequest already in canonical form (see above)."""

    model_config = ConfigDict(extra="forbid")

    lead: _CanonicalLead
    activities: list[_CanonicalActivity] = Field(default_factory=list)
    colleagues: list[_CanonicalLead] = Field(default_factory=list)
    as_of: UtcTimestamp | None = None

    @model_validator(mode="after")
    def _touches_belong(self) -> Self:
        _check_touches(self.lead, self.colleagues, (a.lead_id for a in self.activities))
        return self


class CanonicalBatchRequest(BaseModel):
    """A BatchRequest whose leads are all in canonical form."""

    model_config = ConfigDict(extra="forbid")

    leads: list[CanonicalScoreRequest] = Field(min_length=1)


_Canonical = TypeVar("_Canonical", CanonicalScoreRequest, CanonicalBatchRequest)


def parse_canonical(model: type[_Canonical], body: bytes) -> _Canonical | None:
    """The request in `body` if it is valid and canonical; None otherwise (the reference models then decide)."""
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


class FitScore(BaseModel):
    """ICP fit, the answer to "should we ever sell to them?"."""

    probability: float = Field(description="Calibrated probability that the lead is ever won.")
    score: float = Field(description="0-100: percentile of the probability among holdout leads.")
    grade: Grade


class ReadinessScore(BaseModel):
    """Readiness, the answer to "should someone call them now?"."""

    probability: float = Field(description="Calibrated probability of becoming sales-qualified within the horizon.")
    score: float
    stage: Stage


class Route(BaseModel):
    """Where the lead goes, how urgently, and how soon it must be worked."""

    queue: Queue
    priority: int = Field(description="1 = call first.")
    sla_hours: float | None = Field(description="Hours within which the queue must act; null: no SLA.")
    segment: str | None = Field(
        default=None, description="The thresholds segment whose cut-offs routed the lead; null: the default cut-offs."
    )


class ReasonOut(BaseModel):
    """One reason behind a score, with its signed impact on the model's log-odds."""

    group: str
    impact: float
    label: str


class Reasons(BaseModel):
    """Top reasons, split into fit (profile) and behaviour (touches, lifecycle, buying group)."""

    fit: list[ReasonOut]
    behaviour: list[ReasonOut]


class ScoreResponse(BaseModel):
    """A scored and routed lead."""

    request_id: str
    lead_id: str
    fit: FitScore
    readiness: ReadinessScore
    route: Route
    reasons: Reasons
    model_version: str
    thresholds_version: int
    scored_at: dt.datetime


class BatchResponse(BaseModel):
    """Scores in request order."""

    request_id: str
    scores: list[ScoreResponse]


class ModelInfo(BaseModel):
    """What is serving: version, provenance, holdout metrics, what it reads."""

    name: str
    alias: str
    version: str
    run_id: str | None
    trained_at: dt.datetime | None
    loaded_at: dt.datetime
    holdout_metrics: dict[str, dict[str, float | None]]
    features: dict[str, Any]
    thresholds_version: int


class Readiness(BaseModel):
    """Is the service ready to score, and what went wrong if not (or at the last reload)."""

    ready: bool
    model_version: str | None
    last_reload_error: str | None = None


class ReloadResult(BaseModel):
    """Outcome of a reload: the version now serving, and the error if the new model was refused."""

    reloaded: bool
    model_version: str
    previous_version: str
    error: str | None = None
