"""Request and response bodies of the score API: strict, typed, with examples for the OpenAPI docs."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, Self, TypeVar

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from features.spec import ACTIVITY_TYPES, LEADS, LIFECYCLE_CHAIN
from features.validation import normalize_activity_type
from serving.policy import Grade, Queue, Stage

log = logging.getLogger(__name__)

# The feature engine stores epoch seconds in 32 bits: stamps must fall between these years. Anything outside is a
# typo (0202 for 2020) or a placeholder (9999-12-31), never a real touch.
EARLIEST = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
MAX_TEXT = 256
# Bounds of a lead's size figures, shared by the reference model and its twin: beyond them a value is a typo.
MAX_EMPLOYEES = 10_000_000
MAX_REVENUE = 1e13


def _utc(value: dt.datetime) -> dt.datetime:
    """Naive times are UTC; every time must lie between 1970 and 2100."""
    value = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"must lie between {EARLIEST.date()} and {LATEST.date()}")
    return value.astimezone(dt.UTC)


Timestamp = Annotated[dt.datetime, AfterValidator(_utc)]


# Touch properties (Segment-style event details) may nest, but not without end: deeper is a bug or an attack.
MAX_PROPERTY_DEPTH = 10
# C0 control characters and DEL: never part of an id, and some databases cannot store them (PostgreSQL refuses NUL).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (U+0000 to U+001F, U+007F)")
    return value


def _depth_problem(value: object) -> str | None:
    """Why `value` (decoded JSON) nests too deeply, or None; iterative, so any depth is measured safely."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_PROPERTY_DEPTH:
                    return f"nested deeper than {MAX_PROPERTY_DEPTH} levels"
                stack.append((child, depth + 1))
    return None


def _shallow(value: dict[str, Any] | None) -> dict[str, Any] | None:
    problem = None if value is None else _depth_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_no_control_characters)]
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
    properties: Annotated[dict[str, Any] | None, AfterValidator(_shallow)] = Field(
        default=None, description=f"Details of the touch (JSON, nested at most {MAX_PROPERTY_DEPTH} levels)."
    )

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
    custom: dict[Identifier, float | Text | None] = Field(
        default_factory=dict, description="Custom CRM attributes declared in the deployment's lead contract."
    )

    @field_validator("custom")
    @classmethod
    def _finite(cls, value: dict[str, float | str | None]) -> dict[str, float | str | None]:
        for key, item in value.items():
            problem = _custom_problem(key, item)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _lifecycle_in_order(self) -> Self:
        problem = _lifecycle_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    def record(self) -> dict[str, Any]:
        """The lead as the feature engine reads it (contract column names; custom attributes at top level)."""
        return _record(self.model_dump(exclude={"custom"}), self.account_id or self.lead_id, self.custom)


def _record(values: dict[str, Any], account_id: str, custom: Mapping[str, object]) -> dict[str, Any]:
    values["account_id"] = account_id
    values.update(custom)
    return values


def _custom_problem(key: str, value: object) -> str | None:
    """Why a custom attribute cannot be scored, or None."""
    if key in LEADS.names:  # record() puts custom attributes at top level: they must not replace a field
        return f"custom attribute {key!r} is a lead field: send it as lead.{key}, not in custom"
    if isinstance(value, float) and not math.isfinite(value):
        return f"custom attribute {key!r} must be a finite number"
    return None


def _lifecycle_problem(person: Lead | CanonicalLead) -> str | None:
    """Why a person's lifecycle stamps are impossible (out of order, recycled but never lost, ...), or None."""
    seen: list[tuple[str, dt.datetime]] = []
    for name in LIFECYCLE_CHAIN:
        stamp = getattr(person, name)
        if stamp is None:
            continue
        later = [earlier for earlier, at in seen if at > stamp]
        if later:
            return f"{name} is earlier than {', '.join(later)}: lifecycle stamps must not run backwards"
        seen.append((name, stamp))
    if person.recycled_at is not None and person.lost_at is None:
        return "recycled_at needs lost_at: only a lost lead can be recycled"
    if person.requalified_at is not None and person.recycled_at is None:
        return "requalified_at needs recycled_at: only a recycled lead can be requalified"
    return None


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


def _people(lead: Person, colleagues: Sequence[Person]) -> set[str]:
    """The lead_ids a request's touches may name; raises if the colleagues are not distinct people."""
    known = {lead.lead_id, *(c.lead_id for c in colleagues)}
    if len(known) != 1 + len(colleagues):
        raise ValueError("colleagues must have distinct lead_ids, different from the lead's")
    return known


def _check_touches(lead: Person, colleagues: Sequence[Person], touch_lead_ids: Iterable[str | None]) -> None:
    known = _people(lead, colleagues)
    for i, lead_id in enumerate(touch_lead_ids):
        if lead_id is not None and lead_id not in known:
            raise ValueError(f"activities[{i}].lead_id {lead_id!r} is neither the lead nor a colleague")


class BatchRequest(BaseModel):
    """Many leads in one call (the service's batch limit applies)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"leads": [EXAMPLE_REQUEST]}]})

    leads: list[ScoreRequest] = Field(min_length=1)


class ItemsRequest(BaseModel):
    """Many leads, each answered or refused on its own: a malformed lead does not refuse the others."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"leads": [EXAMPLE_REQUEST]}]})

    leads: list[Any] = Field(
        min_length=1, description="Score requests (as for POST /v1/score); each is validated on its own."
    )


class Touch(Protocol):
    """What scoring reads of an activity."""

    @property
    def occurred_at(self) -> dt.datetime: ...
    @property
    def activity_type(self) -> str: ...
    @property
    def lead_id(self) -> str | None: ...
    @property
    def properties(self) -> Mapping[str, Any] | None: ...


class Person(Protocol):
    """What scoring and routing read of a lead or a colleague."""

    @property
    def lead_id(self) -> str: ...
    @property
    def employee_count(self) -> int | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def custom(self) -> Mapping[str, float | str | None]: ...
    def record(self) -> dict[str, Any]: ...


class LeadToScore(Protocol):
    """What scoring reads of a validated request, whether the reference model or its canonical twin holds it."""

    @property
    def lead(self) -> Person: ...
    @property
    def activities(self) -> Sequence[Touch]: ...
    @property
    def colleagues(self) -> Sequence[Person]: ...
    @property
    def as_of(self) -> dt.datetime | None: ...


# ---- canonical requests: the fast path -------------------------------------------------------------------------
# Most requests arrive in canonical form: times in UTC, activity types spelt as documented, no stray whitespace.
# These msgspec twins of the request models accept exactly such requests, to the same values, decoding a body about
# ten times faster than the reference models. Whatever a twin refuses is handed to the reference models, which decide
# and word the answer, so what the API accepts and every 422 stay as they are.

_TwinId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
_TwinText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_TwinStamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]
# msgspec rounds a seventh fractional digit of a second where pydantic cuts it off: such bodies go the reference way.
# (msgspec refuses the decimal comma that pydantic also accepts.) A scan for the literal "." comes first: cheaper.
_SEVEN_DIGITS = re.compile(rb"\.\d{7}")
_SUB_MICROSECOND = re.compile(rb":\d\d\.\d{7}")


def _sub_microsecond(body: bytes) -> bool:
    """Whether a time in `body` has a seventh fractional digit of a second."""
    return _SEVEN_DIGITS.search(body) is not None and _SUB_MICROSECOND.search(body) is not None


class CanonicalActivity(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Twin of Activity."""

    occurred_at: _TwinStamp
    activity_type: ActivityType
    lead_id: _TwinId | None = None
    properties: dict[str, Any] | None = None


class CanonicalLead(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Twin of Lead."""

    lead_id: _TwinId
    account_id: _TwinId | None = None
    created_at: _TwinStamp
    industry: _TwinText | None = None
    employee_count: Annotated[int, msgspec.Meta(ge=0, le=MAX_EMPLOYEES)] | None = None
    annual_revenue: Annotated[float, msgspec.Meta(ge=0, le=MAX_REVENUE)] | None = None
    country: _TwinText | None = None
    region: _TwinText | None = None
    job_title: _TwinText | None = None
    seniority: _TwinText | None = None
    department: _TwinText | None = None
    email_domain: _TwinText | None = None
    source: _TwinText | None = None
    channel: _TwinText | None = None
    mql_at: _TwinStamp | None = None
    sal_at: _TwinStamp | None = None
    sql_at: _TwinStamp | None = None
    lost_at: _TwinStamp | None = None
    recycled_at: _TwinStamp | None = None
    requalified_at: _TwinStamp | None = None
    won_at: _TwinStamp | None = None
    custom: dict[_TwinId, float | _TwinText | None] = msgspec.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The lead as the feature engine reads it, as `Lead.record` gives it."""
        values = msgspec.structs.asdict(self)
        del values["custom"]
        return _record(values, self.account_id or self.lead_id, self.custom)


class CanonicalScoreRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Twin of ScoreRequest."""

    lead: CanonicalLead
    activities: list[CanonicalActivity] = msgspec.field(default_factory=list)
    colleagues: list[CanonicalLead] = msgspec.field(default_factory=list)
    as_of: _TwinStamp | None = None


class CanonicalBatchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Twin of BatchRequest."""

    leads: Annotated[list[CanonicalScoreRequest], msgspec.Meta(min_length=1)]


_Canonical = TypeVar("_Canonical", CanonicalScoreRequest, CanonicalBatchRequest)
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def parse_canonical(model: type[_Canonical], body: bytes) -> _Canonical | None:
    """The request in `body` if it is valid and canonical; None otherwise (the reference models then decide)."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model)
    try:
        parsed: _Canonical = decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None  # RecursionError: nested deeper than any parser goes; the reference path refuses it in words
    requests = parsed.leads if isinstance(parsed, CanonicalBatchRequest) else [parsed]
    try:
        canonical = not _sub_microsecond(body) and all(_canonicalise(r) for r in requests)
    except Exception:
        # A twin that cannot tell must not answer for the API: the reference models decide, as for any doubt.
        log.exception("the canonical check failed on a request; handing it to the reference models")
        return None
    return parsed if canonical else None


def canonical_request(body: Mapping[str, Any]) -> CanonicalScoreRequest | None:
    """A request made of Python values (times as datetimes in UTC) as the twin, if valid and canonical; else None.

    For requests the service builds itself from its store (the rescore, score by id): nothing to parse, and the
    twin checks thousands of touches a second where the reference models check hundreds. None: the reference
    models decide, as for any doubt.
    """
    try:
        request = msgspec.convert(body, CanonicalScoreRequest)
    except msgspec.ValidationError:
        return None
    try:
        return request if _canonicalise(request) else None
    except Exception:
        log.exception("the canonical check failed on a stored history; handing it to the reference models")
        return None


# What pydantic's str_strip_whitespace strips (Rust's `trim`, the Unicode White_Space set). Python's own `strip()`
# also strips U+001C-U+001F, so it cannot stand in for it.
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)


class _NotCanonicalError(ValueError):
    """The reference models would refuse this value, or change it in a way the twin does not."""


def _text(value: str, *, identifier: bool = False) -> str:
    """`value` as the reference models keep it: stripped of white space; an identifier must keep a character."""
    if value[:1].isspace() or value[-1:].isspace():
        value = value.strip(_WHITE_SPACE)
        if (identifier and not value) or value[:1].isspace() or value[-1:].isspace():
            raise _NotCanonicalError(value)
    if identifier and _CONTROL.search(value):
        raise _NotCanonicalError(value)
    return value


def _stamp(value: dt.datetime | None) -> None:
    if value is not None and (value.tzinfo is not dt.UTC or not EARLIEST <= value <= LATEST):
        raise _NotCanonicalError(value)


def _canonicalise_person(person: CanonicalLead) -> None:
    """Normalise text as the reference Lead does (stripped) and check what it checks in Python."""
    for name, value in zip(person.__struct_fields__, msgspec.structs.astuple(person), strict=True):
        if isinstance(value, str):
            stripped = _text(value, identifier=name in ("lead_id", "account_id"))
            if stripped is not value:
                setattr(person, name, stripped)
        elif isinstance(value, dt.datetime):
            _stamp(value)
    if person.custom:
        custom = {
            _text(key, identifier=True): _text(v) if isinstance(v, str) else v for key, v in person.custom.items()
        }
        if len(custom) != len(person.custom) or any(_custom_problem(k, v) for k, v in custom.items()):
            raise _NotCanonicalError("custom")  # two keys that differ only in white space, or a refused value
        person.custom = custom
    if _lifecycle_problem(person) is not None:
        raise _NotCanonicalError("lifecycle")


def _canonicalise(request: CanonicalScoreRequest) -> bool:
    """Whether the reference ScoreRequest accepts `request` (normalised in place to the values it would hold)."""
    try:
        _stamp(request.as_of)
        for person in (request.lead, *request.colleagues):
            _canonicalise_person(person)
        known = _people(request.lead, request.colleagues)
    except ValueError:  # _NotCanonicalError, or colleagues that are not distinct people
        return False
    utc, earliest, latest = dt.UTC, EARLIEST, LATEST  # locals: this loop runs for every touch of every lead
    for touch in request.activities:
        at = touch.occurred_at
        if at.tzinfo is not utc or not earliest <= at <= latest:
            return False
        if touch.lead_id is not None:
            lead_id = touch.lead_id
            if lead_id[:1].isspace() or lead_id[-1:].isspace():
                lead_id = touch.lead_id = lead_id.strip(_WHITE_SPACE)
            if lead_id not in known:  # not the lead, not a colleague (or white space the reference keeps)
                return False
        if touch.properties:
            try:
                properties = {_text(key): value for key, value in touch.properties.items()}
            except ValueError:
                return False
            if len(properties) != len(touch.properties) or _depth_problem(properties) is not None:
                return False
            touch.properties = properties
    return True


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


LifecycleStage = Literal["lead", "mql", "sal", "sql", "lost", "recycled", "requalified", "won"]


class Lifecycle(BaseModel):
    """The lead's lifecycle stage at as_of (its latest lifecycle stamp before as_of), and whether readiness applies.

    Readiness is the chance that an open lead (lead, mql, sal, recycled) becomes an SQL: for a lead already an
    opportunity (sql, requalified), lost (and not recycled) or won it is not defined, and the policy's lifecycle
    routes decide where the lead goes.
    """

    stage: LifecycleStage
    since: dt.datetime | None = Field(description="When the lead reached the stage (its lifecycle stamp).")
    readiness_applies: bool = Field(description="false: readiness is null and the lifecycle stage routed the lead.")
    note: str | None = Field(
        default=None,
        description="Why readiness does not apply, e.g. 'won on 2025-06-01: readiness applies to open "
        "leads only'; null for open leads.",
    )


class Route(BaseModel):
    """Where the lead goes, how urgently, and how soon it must be worked."""

    queue: Queue = Field(
        description="sales, sdr, nurture, disqualify: open leads, by grade and readiness stage; owner (an open "
        "opportunity stays with its rep), customer (won: no sales hand-off), or nurture (lost, not recycled): by "
        "lifecycle stage (the policy's lifecycle_routes)."
    )
    priority: int = Field(description="1 = call first.")
    sla_hours: float | None = Field(description="Hours within which the queue must act; null: no SLA.")
    segment: str | None = Field(
        default=None,
        description="The thresholds segment whose cut-offs routed the lead; null: the default cut-offs, or a lead "
        "routed by its lifecycle stage.",
    )


class ReasonOut(BaseModel):
    """One reason behind a score, with its signed impact on the model's log-odds."""

    group: str
    impact: float
    label: str


class Reasons(BaseModel):
    """Top reasons, split into fit (profile) and behaviour (touches, buying group), with the lifecycle as context."""

    fit: list[ReasonOut]
    behaviour: list[ReasonOut] = Field(
        description="Reasons behind readiness; empty when readiness does not apply (lifecycle.readiness_applies false)."
    )
    context: list[ReasonOut] = Field(
        default_factory=list,
        description="Where the lead stands in the funnel and for how long: background to the reasons, not a merit;"
        " empty when readiness does not apply.",
    )


class ScoreResponse(BaseModel):
    """A scored and routed lead."""

    request_id: str
    lead_id: str
    fit: FitScore
    readiness: ReadinessScore | None = Field(
        description="null when readiness does not apply to the lead's lifecycle stage (see lifecycle)."
    )
    lifecycle: Lifecycle
    route: Route
    reasons: Reasons
    model_version: str
    thresholds_version: int
    scored_at: dt.datetime
    notes: list[str] = Field(
        default_factory=list,
        description="What the reader should know about this answer, e.g. touches that look automated and were ignored.",
    )


class BatchResponse(BaseModel):
    """Scores in request order."""

    request_id: str
    scores: list[ScoreResponse]


class ItemProblem(BaseModel):
    """Why a lead of a per-item batch was refused: where, what, and the kind of problem (as in a 422)."""

    loc: list[str | int]
    msg: str
    type: str


class ItemResult(BaseModel):
    """One lead of a per-item batch: its score, or why it was refused."""

    index: int = Field(description="Position of the lead in the request.")
    lead_id: str | None = Field(description="The lead's id, when the request named one.")
    status: Literal["scored", "refused"]
    score: ScoreResponse | None = None
    problems: list[ItemProblem] = Field(default_factory=list)


class ItemsResponse(BaseModel):
    """Every lead of a per-item batch in request order, scored ones under one request id."""

    request_id: str
    scored: int
    refused: int
    results: list[ItemResult]


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
    quality_warnings: list[str] = Field(
        default_factory=list,
        description="What training found wrong with the holdout evidence (too few positives to judge a model, a"
        " baseline ranking better); empty when it found nothing, or for a model logged before these checks.",
    )


class ScoreLogHealth(BaseModel):
    """How far the score log's database lags its journal, and what went wrong."""

    pending: int = Field(description="Scores journaled (durable) and not yet in the database.")
    oldest_pending_seconds: float | None = Field(description="Age of the oldest of them; null when none wait.")
    rejected: int = Field(description="Records the database refused as data, kept in rejected.jsonl by the journal.")
    last_write_error: str | None = Field(description="The database's last refusal while records wait; retried.")
    journal_error: str | None = Field(description="Why the journal cannot be written (scores are refused with 503).")


class Readiness(BaseModel):
    """Is the service ready to score, and if not why; details only for monitoring and admin keys."""

    ready: bool
    model_version: str | None = None
    last_reload_error: str | None = None
    thresholds_error: str | None = Field(
        default=None, description="Why the policy in force could not be read; scores use the last one read."
    )
    score_log: ScoreLogHealth | None = None


class ReloadResult(BaseModel):
    """Outcome of a reload: the version now serving, and the error if the new model was refused."""

    reloaded: bool
    model_version: str
    previous_version: str
    error: str | None = None
