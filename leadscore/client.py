"""A small typed client of the score API: requests built from the contract's tables, retries, typed answers.

```python
from leadscore.client import LeadscoreClient, build_requests

with LeadscoreClient("https://leadscore.example.com", api_key="...") as client:
    for answer in client.score_tables(leads, activities):  # all or nothing: one invalid lead refuses its batch
        print(answer.lead_id, answer.route.queue, answer.fit.grade)
    for result in client.score_items(build_requests(leads, activities)):  # each lead scored or refused on its own
        print(result.index, result.lead_id, result.score.route.queue if result.score else result.problems)
```

It imports no scoring code (no MLflow, LightGBM or FastAPI): pandas is imported only when tables are converted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NotRequired, Required, Self, TypedDict, TypeVar, cast

import httpx
from pydantic import BaseModel, ConfigDict

from features.spec import LEADS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BODY_BYTES",
    "BatchResponse",
    "FieldProblem",
    "FitScore",
    "ItemProblem",
    "ItemResult",
    "ItemsResponse",
    "LeadscoreClient",
    "LeadscoreConnectionError",
    "LeadscoreError",
    "LeadscoreHTTPError",
    "LeadscoreInputError",
    "LeadscoreRequestError",
    "ReadinessScore",
    "Reason",
    "Reasons",
    "Retry",
    "Route",
    "ScoreRequestBody",
    "ScoreResponse",
    "build_requests",
]

# The service's own defaults (LEADSCORE_MAX_BATCH, LEADSCORE_MAX_BODY_BYTES); a test holds them to serving.settings.
# A service configured otherwise is matched with the client's batch_size and max_body_bytes.
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_BODY_BYTES = 16_000_000
API_KEY_HEADER = "X-API-Key"
SCORE_PATH = "/v1/score"
BATCH_PATH = "/v1/score/batch"
ITEMS_PATH = "/v1/score/batch/items"
# Statuses worth another try: the service (or a proxy before it) is busy, restarting or has no model loaded yet.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# `{"leads":[` + `]}` around the comma-separated requests of a batch body.
_BATCH_OVERHEAD = len(b'{"leads":[]}')

# ---- requests ------------------------------------------------------------------------------------------------------


class LeadBody(TypedDict, total=False):
    """A lead (or a colleague) as the score API takes it: the contract's leads columns, times as ISO 8601 text."""

    lead_id: Required[str]
    account_id: str
    created_at: str
    industry: str
    employee_count: int
    annual_revenue: float
    country: str
    region: str
    job_title: str
    seniority: str
    department: str
    email_domain: str
    source: str
    channel: str
    mql_at: str
    sal_at: str
    sql_at: str
    lost_at: str
    recycled_at: str
    requalified_at: str
    won_at: str
    custom: dict[str, float | str]


class ActivityBody(TypedDict):
    """One touch; `lead_id` names a colleague (absent: the scored lead's own touch)."""

    occurred_at: str
    activity_type: str
    lead_id: NotRequired[str]
    properties: NotRequired[dict[str, Any]]


class ScoreRequestBody(TypedDict):
    """The body of POST /v1/score, and one entry of a batch's `leads`."""

    lead: LeadBody
    activities: list[ActivityBody]
    colleagues: list[LeadBody]
    as_of: NotRequired[str]


# ---- answers: the service's ScoreResponse, BatchResponse and ItemsResponse (serving/schemas.py); a test holds them to
# its OpenAPI document ------------------------------------------------------------------------------------------------

Grade = Literal["A", "B", "C", "D"]
Stage = Literal["nurture", "MQL", "SQL"]
Queue = Literal["sales", "sdr", "nurture", "disqualify", "owner", "customer"]
LifecycleStage = Literal["lead", "mql", "sal", "sql", "lost", "recycled", "requalified", "won"]
# Fields the service adds later are ignored, so an older client keeps reading a newer service's answers.
_ANSWER = ConfigDict(frozen=True, extra="ignore")


class FitScore(BaseModel):
    """ICP fit, the answer to "should we ever sell to them?"."""

    model_config = _ANSWER

    probability: float
    score: float
    grade: Grade


class ReadinessScore(BaseModel):
    """Readiness, the answer to "should someone call them now?"."""

    model_config = _ANSWER

    probability: float
    score: float
    stage: Stage


class Lifecycle(BaseModel):
    """The lead's lifecycle stage at as_of; readiness applies to open leads only (lead, mql, sal, recycled)."""

    model_config = _ANSWER

    stage: LifecycleStage
    since: dt.datetime | None
    readiness_applies: bool
    note: str | None = None


class Route(BaseModel):
    """Where the lead goes, how urgently (1 = call first), and within how many hours (None: no SLA)."""

    model_config = _ANSWER

    queue: Queue
    priority: int
    sla_hours: float | None
    segment: str | None = None


class Reason(BaseModel):
    """One reason behind a score, with its signed impact on the model's log-odds and a sentence."""

    model_config = _ANSWER

    group: str
    impact: float
    label: str


class Reasons(BaseModel):
    """Top reasons: fit (profile) and behaviour (touches, buying group), with the lifecycle as context."""

    model_config = _ANSWER

    fit: list[Reason]
    behaviour: list[Reason]
    context: list[Reason] = []  # where the lead stands in the funnel; none from an older service


class ScoreResponse(BaseModel):
    """A scored and routed lead."""

    model_config = _ANSWER

    request_id: str
    lead_id: str
    fit: FitScore
    readiness: ReadinessScore | None  # None: readiness does not apply to the lead's lifecycle stage
    lifecycle: Lifecycle
    route: Route
    reasons: Reasons
    model_version: str
    thresholds_version: int
    scored_at: dt.datetime
    notes: list[str] = []  # e.g. touches that look automated and were ignored; none from an older service


class BatchResponse(BaseModel):
    """A batch's scores, in request order, under one request id."""

    model_config = _ANSWER

    request_id: str
    scores: list[ScoreResponse]


class ItemProblem(BaseModel):
    """Why a lead of a per-item batch was refused: the field's path (as in a 422), what is wrong, the kind."""

    model_config = _ANSWER

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.loc))}: {self.msg}"


class ItemResult(BaseModel):
    """One lead of a per-item batch: its answer (`status` "scored", `score`) or why it was refused (`problems`).

    From `LeadscoreClient.score_items`, `index` and each problem's path count in the requests given to it (the
    client's batches are its own affair): `("body", "leads", 1003, "lead", "created_at")` is the 1004th request.
    """

    model_config = _ANSWER

    index: int
    lead_id: str | None
    status: Literal["scored", "refused"]
    score: ScoreResponse | None = None
    problems: list[ItemProblem] = []


class ItemsResponse(BaseModel):
    """A per-item batch's answer: every lead in request order, the scored ones under one request id."""

    model_config = _ANSWER

    request_id: str
    scored: int
    refused: int
    results: list[ItemResult]


# ---- errors --------------------------------------------------------------------------------------------------------


class LeadscoreError(Exception):
    """Anything the client could not get scored.

    Raised by `score_batch` (or `score_tables`) or `score_items`, it carries in `answered` the answers of the batches
    sent before the failure, in request order: the service scored and logged those.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.answered: list[ScoreResponse] = []
        # Raised by `score_items`: the per-item results of the batches answered before the failure, in request order.
        self.item_results: list[ItemResult] = []


class LeadscoreConnectionError(LeadscoreError):
    """The service could not be reached (or did not answer in time) on any of the tries."""


class LeadscoreRequestError(LeadscoreError, ValueError):
    """A request the client cannot send (over the body limit, or not JSON: a NaN, an object JSON cannot hold).

    Raised before it is sent, by `score` and `score_batch`; the batches before it were sent (see `answered`).
    `score_items` refuses such a lead on its own instead, as the service refuses an invalid one.
    """


class LeadscoreHTTPError(LeadscoreError):
    """The service refused the request (401, 403, 413, ...) or was still unavailable after the last try."""

    def __init__(self, status_code: int, detail: object, message: str | None = None) -> None:
        super().__init__(message or f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem of a refused request: the field's path, what is wrong, and whose lead.

    The path is the service's, except that a batch's `("body", "leads", i, ...)` counts `i` in the requests given to
    `score_batch`, not in the batch the client sent.
    """

    path: tuple[str | int, ...]
    message: str
    type: str
    lead_id: str | None

    def __str__(self) -> str:
        who = f" (lead {self.lead_id})" if self.lead_id is not None else ""
        return f"{'.'.join(map(str, self.path))}: {self.message}{who}"


class LeadscoreInputError(LeadscoreHTTPError):
    """A 422: the request breaks the contract. Never retried; `problems` names every field the service refused."""

    def __init__(self, detail: object, problems: list[FieldProblem]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(422, detail, f"the service refused the request (HTTP 422):\n{lines}")
        self.problems = problems


# ---- retries -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently to try again on connection errors, timeouts, 429 and 502/503/504.

    The wait before retry n (n = 0, 1, ...) is drawn uniformly from 0 to min(max_backoff, backoff * 2**n) ("full
    jitter"), so that many clients refused together do not come back together. A Retry-After header in seconds is
    respected, up to max_backoff. Input errors (4xx) are never retried.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    def delay(self, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        wait = rng.uniform(0, min(self.max_backoff, self.backoff * 2**retry))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


# ---- the client ----------------------------------------------------------------------------------------------------

_Answer = TypeVar("_Answer", ScoreResponse, BatchResponse, ItemsResponse)


@dataclass(slots=True)
class _Batch:
    """One batch body, and for each lead in it its position among the requests given and its id."""

    body: bytes
    indexes: list[int]
    lead_ids: list[str | None]


class LeadscoreClient:
    """Scores leads on a leadscore service: one, many (in batches within the service's limits), or whole tables.

    `timeout` is seconds per try (connect, read, write) or an `httpx.Timeout`. Pass `http` to use an `httpx.Client`
    of your own instead (a proxy, TLS settings, a test client): its base URL and timeout apply, and `close` leaves it
    open. `batch_size` and `max_body_bytes` must not exceed the service's LEADSCORE_MAX_BATCH and
    LEADSCORE_MAX_BODY_BYTES (the defaults are the service's defaults). `sleep` waits between tries.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retry: Retry | None = None,
        batch_size: int = DEFAULT_MAX_BATCH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.retry = retry or Retry()
        self.batch_size = batch_size
        self.max_body_bytes = max_body_bytes
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key is not None:
            self._headers[API_KEY_HEADER] = api_key
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._sleep = sleep
        self._rng = random.Random()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (unless the httpx client was given)."""
        if self._own_http:
            self._http.close()

    def score(self, request: ScoreRequestBody) -> ScoreResponse:
        """Score and route one lead (POST /v1/score)."""
        lead_id = _lead_id(request)
        body = self._encoded(request, lead_id, overhead=0)
        return self._post(SCORE_PATH, body, ScoreResponse, [0], [lead_id])

    def score_batch(self, requests: Iterable[ScoreRequestBody]) -> list[ScoreResponse]:
        """Score many leads (POST /v1/score/batch), sent in batches within the service's limits; answers in order.

        Each batch is all or nothing: one invalid lead refuses its batch with a LeadscoreInputError (use
        `score_items` to have the valid leads scored anyway).
        """
        answers: list[ScoreResponse] = []
        try:
            for batch in self._batches(requests):
                answers.extend(self._post(BATCH_PATH, batch.body, BatchResponse, batch.indexes, batch.lead_ids).scores)
        except LeadscoreError as err:
            err.answered = answers
            raise
        return answers

    def score_items(self, requests: Iterable[ScoreRequestBody]) -> list[ItemResult]:
        """Score many leads, each answered or refused on its own (POST /v1/score/batch/items); results in order.

        Sent in batches as `score_batch` sends them. A lead the service refuses (or that the client cannot send: over
        the body limit, or not JSON) is a result with status "refused" and its problems; the others are scored. Each
        result's `index`, and its problems' paths, count in `requests`. Errors that concern a whole batch (a key, the
        service unavailable after the last try) raise as in `score_batch`, with `item_results` and `answered` holding
        what the batches before it got.
        """
        results: list[ItemResult] = []

        def refuse(index: int, lead_id: str | None, why: str, kind: str) -> None:
            problem = ItemProblem(loc=("body", "leads", index), msg=why, type=kind)
            results.append(ItemResult(index=index, lead_id=lead_id, status="refused", problems=[problem]))

        try:
            for batch in self._batches(requests, refuse=refuse):
                answer = self._post(ITEMS_PATH, batch.body, ItemsResponse, batch.indexes, batch.lead_ids)
                results.extend(_rebased(answer, batch))
        except LeadscoreError as err:
            results.sort(key=lambda result: result.index)
            err.item_results = results
            err.answered = [result.score for result in results if result.score is not None]
            raise
        results.sort(key=lambda result: result.index)  # leads refused before sending were added out of turn
        return results

    def score_tables(
        self,
        leads: pd.DataFrame,
        activities: pd.DataFrame,
        *,
        as_of: dt.datetime | str | None = None,
        lead_ids: Iterable[str] | None = None,
        custom: Sequence[str] = (),
    ) -> list[ScoreResponse]:
        """Score the leads of the contract's two tables (or only `lead_ids`); see `build_requests`."""
        return self.score_batch(build_requests(leads, activities, as_of=as_of, lead_ids=lead_ids, custom=custom))

    def _encoded(self, request: ScoreRequestBody, lead_id: str | None, *, overhead: int = _BATCH_OVERHEAD) -> bytes:
        """One request as JSON within the body limit (with `overhead` bytes around it), or LeadscoreRequestError."""
        try:
            part = _encode(request)
        except (TypeError, ValueError) as err:  # NaN or infinity, or an object JSON cannot hold
            raise LeadscoreRequestError(f"the request of lead {lead_id!r} cannot be sent as JSON: {err}") from None
        if overhead + len(part) > self.max_body_bytes:
            raise LeadscoreRequestError(
                f"the request of lead {lead_id!r} takes {len(part):,} bytes, over the service's body limit of "
                f"{self.max_body_bytes:,} (LEADSCORE_MAX_BODY_BYTES; the client's max_body_bytes): send fewer "
                "touches or colleagues, or raise the limit"
            )
        return part

    def _batches(
        self,
        requests: Iterable[ScoreRequestBody],
        refuse: Callable[[int, str | None, str, str], None] | None = None,
    ) -> Iterator[_Batch]:
        """Batches of at most `batch_size` leads and `max_body_bytes` bytes, in request order.

        A lead that cannot be sent raises LeadscoreRequestError, or with `refuse` is handed to it (index, lead id,
        why, kind) and left out.
        """
        indexes: list[int] = []
        lead_ids: list[str | None] = []
        parts: list[bytes] = []
        size = _BATCH_OVERHEAD
        for index, request in enumerate(requests):
            lead_id = _lead_id(request)
            try:
                part = self._encoded(request, lead_id)
            except LeadscoreRequestError as why:
                if refuse is None:
                    raise
                refuse(index, lead_id, str(why), "not_sent")
                continue
            if parts and (len(parts) >= self.batch_size or size + 1 + len(part) > self.max_body_bytes):
                yield _Batch(_batch_body(parts), indexes, lead_ids)
                indexes, lead_ids, parts, size = [], [], [], _BATCH_OVERHEAD
            size += len(part) + (1 if parts else 0)
            parts.append(part)
            indexes.append(index)
            lead_ids.append(lead_id)
        if parts:
            yield _Batch(_batch_body(parts), indexes, lead_ids)

    def _post(
        self, path: str, body: bytes, answer: type[_Answer], indexes: Sequence[int], lead_ids: Sequence[str | None]
    ) -> _Answer:
        """POST `body`, trying again on connection errors, timeouts, 429 and 502/503/504; parse the answer.

        `indexes` and `lead_ids` say which request (among those given) and whose lead each lead of the body is.
        """
        retry = self.retry
        for attempt in range(retry.attempts):
            last = attempt == retry.attempts - 1
            try:
                response = self._http.post(path, content=body, headers=self._headers)
            except httpx.TransportError as err:  # connection refused or reset, timeouts, broken responses
                if last:
                    raise LeadscoreConnectionError(
                        f"POST {path}: no answer after {retry.attempts} tries: {err!r}"
                    ) from err
                wait = retry.delay(attempt, self._rng)
                log.warning("POST %s failed (%r); trying again in %.2f s", path, err, wait)
                self._sleep(wait)
                continue
            if response.is_success:
                return answer.model_validate_json(response.content)
            if response.status_code == 422:
                detail = _detail(response)
                raise LeadscoreInputError(detail, _problems(detail, indexes, lead_ids))
            if response.status_code not in RETRY_STATUSES or last:
                raise LeadscoreHTTPError(response.status_code, _detail(response))
            wait = retry.delay(attempt, self._rng, _retry_after(response))
            log.warning("POST %s answered %d; trying again in %.2f s", path, response.status_code, wait)
            self._sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")


def _encode(request: ScoreRequestBody) -> bytes:
    """Strict JSON: a NaN or an infinity raises here instead of reaching the service as invalid JSON."""
    return json.dumps(request, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()


def _batch_body(parts: list[bytes]) -> bytes:
    return b'{"leads":[' + b",".join(parts) + b"]}"


def _detail(response: httpx.Response) -> object:
    try:
        payload = response.json()
    except ValueError:
        return response.text
    return payload.get("detail", payload) if isinstance(payload, dict) else payload


def _problems(detail: object, indexes: Sequence[int], lead_ids: Sequence[str | None]) -> list[FieldProblem]:
    """The fields a 422 names, each with the lead it concerns; a batch's `leads.<i>` becomes the request's index."""
    alone = lead_ids[0] if len(lead_ids) == 1 else None
    if not isinstance(detail, list):
        return [FieldProblem((), str(detail), "", alone)]
    problems = []
    for item in detail:
        entry = item if isinstance(item, Mapping) else {"msg": str(item)}
        sent = tuple(p if isinstance(p, int) else str(p) for p in entry.get("loc", ()))
        lead_id = alone
        if _in_batch(sent) and 0 <= int(sent[2]) < len(lead_ids):
            lead_id = lead_ids[int(sent[2])]
        path = _rebased_path(sent, indexes)
        problems.append(FieldProblem(path, str(entry.get("msg", "")), str(entry.get("type", "")), lead_id))
    return problems


def _in_batch(path: tuple[str | int, ...]) -> bool:
    return len(path) > 2 and path[:2] == ("body", "leads") and isinstance(path[2], int)


def _rebased_path(path: tuple[str | int, ...], indexes: Sequence[int]) -> tuple[str | int, ...]:
    """A path into a batch body as a path into the requests given: `leads.<i>` of the body is `leads.<index>`."""
    if _in_batch(path) and 0 <= int(path[2]) < len(indexes):
        return (*path[:2], indexes[int(path[2])], *path[3:])
    return path


def _rebased(answer: ItemsResponse, batch: _Batch) -> list[ItemResult]:
    """A per-item answer's results, their indexes and problems' paths counted in the requests given."""
    results = []
    for result in answer.results:
        if not 0 <= result.index < len(batch.indexes):
            raise LeadscoreError(
                f"POST {ITEMS_PATH} answered for lead index {result.index} of a batch of {len(batch.indexes)}"
            )
        problems = [p.model_copy(update={"loc": _rebased_path(p.loc, batch.indexes)}) for p in result.problems]
        results.append(result.model_copy(update={"index": batch.indexes[result.index], "problems": problems}))
    return results


def _lead_id(request: object) -> str | None:
    """The lead id a request names, if it names one (a malformed request is the service's to refuse)."""
    lead = request.get("lead") if isinstance(request, Mapping) else None
    lead_id = lead.get("lead_id") if isinstance(lead, Mapping) else None
    return lead_id if isinstance(lead_id, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back on the backoff


# ---- requests from the contract's tables ---------------------------------------------------------------------------

_LEAD_REQUIRED = ("lead_id",)
_ACTIVITY_REQUIRED = ("lead_id", "occurred_at", "activity_type")


@dataclass(slots=True)
class _Person:
    lead: LeadBody
    account: str
    created: dt.datetime | None
    touches: list[tuple[dt.datetime | None, ActivityBody]] = field(default_factory=list)


def build_requests(
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    as_of: dt.datetime | str | None = None,
    lead_ids: Iterable[str] | None = None,
    custom: Sequence[str] = (),
) -> list[ScoreRequestBody]:
    """Score requests for the leads of the contract's two tables (`features.spec`: leads and activities).

    Each lead's request holds its profile and lifecycle stamps, its touches, its colleagues (the other leads of its
    `account_id`) and their touches, which name the colleague. Missing values (None, NaN, NaT) become absent fields;
    times are sent in UTC (naive times are taken as UTC). With `as_of`, only what happened before it is sent
    (touches, and colleagues created by then): the service would not count the rest. `lead_ids` limits the requests
    to those leads (the others still count as colleagues); `custom` names leads columns sent as custom attributes.
    Columns outside the contract are not sent.
    """
    import pandas as pd

    _require(leads, "leads", _LEAD_REQUIRED)
    _require(activities, "activities", _ACTIVITY_REQUIRED)
    cutoff = None if as_of is None else _as_of(as_of)
    people = _people(pd, leads, custom)
    _attach_touches(pd, activities, people)
    wanted = list(people) if lead_ids is None else list(dict.fromkeys(lead_ids))
    unknown = [lead_id for lead_id in wanted if lead_id not in people]
    if unknown:
        raise ValueError(f"lead_ids not in the leads table: {', '.join(map(repr, unknown[:5]))}")
    by_account: dict[str, list[str]] = {}
    for lead_id, person in people.items():
        by_account.setdefault(person.account, []).append(lead_id)
    return [_request(people, by_account, lead_id, cutoff) for lead_id in wanted]


def _request(
    people: dict[str, _Person], by_account: dict[str, list[str]], lead_id: str, cutoff: dt.datetime | None
) -> ScoreRequestBody:
    person = people[lead_id]
    colleagues = [
        people[other]
        for other in by_account[person.account]
        if other != lead_id and (cutoff is None or _before(people[other].created, cutoff))
    ]
    activities = [touch for at, touch in person.touches if cutoff is None or _before(at, cutoff)]
    for colleague in colleagues:
        named = colleague.lead["lead_id"]
        activities += [
            {**touch, "lead_id": named} for at, touch in colleague.touches if cutoff is None or _before(at, cutoff)
        ]
    request: ScoreRequestBody = {
        "lead": person.lead,
        "activities": activities,
        "colleagues": [c.lead for c in colleagues],
    }
    if cutoff is not None:
        request["as_of"] = _iso(cutoff)
    return request


def _before(at: dt.datetime | None, cutoff: dt.datetime) -> bool:
    # A missing time is sent as missing (the service then says what is wrong) rather than dropped without a word.
    return at is None or at < cutoff


def _require(frame: pd.DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the {table} table has no column {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})"
        )


def _as_of(value: dt.datetime | str) -> dt.datetime:
    at = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    # A plain datetime (a pandas Timestamp's nanoseconds dropped: the service rounds as_of down to the second anyway).
    at = dt.datetime.combine(at.date(), at.timetz())
    at = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC)


def _iso(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _people(pd: Any, leads: pd.DataFrame, custom: Sequence[str]) -> dict[str, _Person]:
    """Every lead of the table as a request's lead body, keyed by lead_id, with its account and creation time."""
    missing_custom = [c for c in custom if c not in leads.columns]
    if missing_custom:
        raise ValueError(f"custom attributes missing from the leads table: {', '.join(missing_custom)}")
    clash = [c for c in custom if c in LEADS.names]
    if clash:
        raise ValueError(f"{', '.join(clash)}: contract columns are sent as lead fields, not as custom attributes")
    times = {
        name: _times(pd, leads[name], "leads", name)
        for name in LEADS.names
        if name in leads.columns and LEADS.column(name).dtype == "datetime"
    }
    columns = {
        name: [None if at is None else _iso(at) for at in times[name]]
        if name in times
        else _values(leads[name], "leads", name, LEADS.column(name).dtype)
        for name in LEADS.names
        if name in leads.columns
    }
    extra = {name: _values(leads[name], "leads", name, None) for name in custom}
    created = times.get("created_at")
    people: dict[str, _Person] = {}
    for i in range(len(leads)):
        body = {name: values[i] for name, values in columns.items() if values[i] is not None}
        attributes = {name: values[i] for name, values in extra.items() if values[i] is not None}
        if attributes:
            body["custom"] = attributes
        lead_id = body.get("lead_id")
        if not isinstance(lead_id, str):
            raise ValueError(f"leads row {i}: lead_id is missing")
        if lead_id in people:
            raise ValueError(f"leads: lead_id {lead_id!r} appears more than once")
        account = body.get("account_id")
        people[lead_id] = _Person(
            lead=cast(LeadBody, body),
            # A lead without an account is its own account, as the service takes it.
            account=account if isinstance(account, str) else f"\0{lead_id}",
            created=None if created is None else created[i],
        )
    return people


def _attach_touches(pd: Any, activities: pd.DataFrame, people: dict[str, _Person]) -> None:
    """Each touch of a lead in `people`, as (time, body), in table order; touches of other leads are not sent."""
    owners = _values(activities["lead_id"], "activities", "lead_id", "string")
    times = _times(pd, activities["occurred_at"], "activities", "occurred_at")
    kinds = _values(activities["activity_type"], "activities", "activity_type", "category")
    properties = activities["properties"].tolist() if "properties" in activities.columns else None
    for i, owner in enumerate(owners):
        person = people.get(owner) if isinstance(owner, str) else None
        if person is None:
            continue
        touch: dict[str, Any] = {}
        at = times[i]
        if at is not None:
            touch["occurred_at"] = _iso(at)
        if kinds[i] is not None:
            touch["activity_type"] = kinds[i]
        if properties is not None:
            details = _properties(pd, properties[i], i)
            if details is not None:
                touch["properties"] = details
        person.touches.append((at, cast(ActivityBody, touch)))


def _properties(pd: Any, value: object, row: int) -> dict[str, Any] | None:
    if isinstance(value, Mapping):
        return dict(value)
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            parsed = json.loads(value)
        except ValueError as err:
            raise ValueError(f"activities row {row}: properties is not JSON ({err})") from err
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"activities row {row}: properties must be a JSON object, got {value!r}")


def _times(pd: Any, series: pd.Series, table: str, name: str) -> list[dt.datetime | None]:
    """A time column in UTC (naive times taken as UTC), rounded up to the microsecond; None where missing."""
    try:
        text = not pd.api.types.is_datetime64_any_dtype(series)
        stamps = pd.to_datetime(series, utc=True, format="ISO8601" if text else None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{table}.{name}: not ISO 8601 times ({err})") from err
    # The service keeps microseconds and rounds touch times up to the second: rounding up first changes nothing.
    stamps = stamps.dt.ceil("us")
    return [None if pd.isna(at) else at.to_pydatetime() for at in stamps]


def _values(series: pd.Series, table: str, name: str, dtype: str | None) -> list[Any]:
    """A column as JSON values of its declared dtype (None where missing); a non-finite number raises."""
    missing = series.isna().tolist()
    values = series.astype(object).tolist()
    out: list[Any] = []
    for i, (value, absent) in enumerate(zip(values, missing, strict=True)):
        if absent:
            out.append(None)
        elif dtype in ("int", "float") or (dtype is None and _is_number(value)):
            out.append(_number(value, dtype, table, name, i))
        else:
            out.append(str(value))
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, dtype: str | None, table: str, name: str, row: int) -> int | float:
    try:
        number = float(cast(Any, value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{table}.{name} row {row}: {value!r} is not a number") from err
    if not math.isfinite(number):
        raise ValueError(f"{table}.{name} row {row}: {value!r} is not a finite number")
    if dtype == "int" and number.is_integer():
        return int(number)
    return number
