"""The Python client: requests from the contract's tables, retries against a real local server, typed answers."""

from __future__ import annotations

import datetime as dt
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

from leadscore.client import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    BatchResponse,
    ItemResult,
    ItemsResponse,
    LeadscoreClient,
    LeadscoreConnectionError,
    LeadscoreHTTPError,
    LeadscoreInputError,
    LeadscoreRequestError,
    Retry,
    ScoreRequestBody,
    ScoreResponse,
    build_requests,
)
from serving.app import create_app
from serving.schemas import ScoreRequest
from serving.settings import Settings
from tests.factories import activities_frame, lead, leads_frame

# ---- requests from tables --------------------------------------------------------------------------------------


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two colleagues at acme (L1 qualified along the chain, L2 newer), and L3 alone at globex."""
    leads = leads_frame(
        lead("L1", account_id="acme", created_at="2025-01-06T10:00:00Z", mql_at="2025-01-20T09:00:00Z",
             sql_at="2025-02-03T15:30:00Z"),
        lead("L2", account_id="acme", created_at="2025-02-10T08:00:00Z", industry=None, employee_count=None,
             annual_revenue=float("nan")),
        lead("L3", account_id="globex", created_at="2025-01-08T12:00:00Z"),
    )  # fmt: skip
    activities = activities_frame(
        ("L1", "2025-01-07T10:00:00Z", "page_view"),
        ("L2", "2025-02-11T09:00:00Z", "demo_request"),
        ("L1", "2025-03-01T10:00:00Z", "pricing_page_view"),
        ("L3", "2025-01-09T10:00:00Z", "email_open"),
        ("L9", "2025-01-09T10:00:00Z", "email_open"),  # a lead outside the table: nobody's touch here
    )
    return leads, activities


def _by_lead(requests: list[ScoreRequestBody]) -> dict[str, ScoreRequestBody]:
    return {r["lead"]["lead_id"]: r for r in requests}


def test_a_request_holds_the_colleagues_at_the_account_and_their_touches() -> None:
    requests = _by_lead(build_requests(*_tables()))
    assert list(requests) == ["L1", "L2", "L3"]
    l1 = requests["L1"]
    assert [c["lead_id"] for c in l1["colleagues"]] == ["L2"]
    assert l1["activities"] == [
        {"occurred_at": "2025-01-07T10:00:00Z", "activity_type": "page_view"},
        {"occurred_at": "2025-03-01T10:00:00Z", "activity_type": "pricing_page_view"},
        {"occurred_at": "2025-02-11T09:00:00Z", "activity_type": "demo_request", "lead_id": "L2"},
    ]
    assert [c["lead_id"] for c in requests["L2"]["colleagues"]] == ["L1"]
    assert requests["L3"]["colleagues"] == []
    assert requests["L3"]["activities"] == [{"occurred_at": "2025-01-09T10:00:00Z", "activity_type": "email_open"}]
    assert "as_of" not in l1


def test_lifecycle_stamps_are_utc_text_and_missing_values_are_absent_never_nan() -> None:
    requests = _by_lead(build_requests(*_tables()))
    l1, l2 = requests["L1"]["lead"], requests["L2"]["lead"]
    assert l1["mql_at"] == "2025-01-20T09:00:00Z"
    assert l1["sql_at"] == "2025-02-03T15:30:00Z"
    assert "sal_at" not in l1 and "won_at" not in l1
    assert l1["employee_count"] == 250 and isinstance(l1["employee_count"], int)
    assert {"industry", "employee_count", "annual_revenue"}.isdisjoint(l2)
    assert l2["account_id"] == "acme"
    for request in requests.values():
        text = json.dumps(request, allow_nan=False)  # raises on NaN or infinity
        assert "NaN" not in text and "null" not in text
        ScoreRequest.model_validate(request)  # the service's own request model accepts it


def test_as_of_leaves_out_what_happened_at_or_after_it() -> None:
    requests = _by_lead(build_requests(*_tables(), as_of="2025-02-10T08:00:00Z"))
    l1 = requests["L1"]
    assert l1["as_of"] == "2025-02-10T08:00:00Z"
    assert l1["colleagues"] == []  # L2 was created at as_of: not yet known
    assert l1["activities"] == [{"occurred_at": "2025-01-07T10:00:00Z", "activity_type": "page_view"}]
    later = _by_lead(build_requests(*_tables(), as_of=dt.datetime(2025, 2, 12)))  # naive: UTC
    assert later["L1"]["as_of"] == "2025-02-12T00:00:00Z"
    assert [c["lead_id"] for c in later["L1"]["colleagues"]] == ["L2"]
    assert [a.get("lead_id") for a in later["L1"]["activities"]] == [None, "L2"]


def test_lead_ids_choose_whom_to_score_and_the_others_still_count_as_colleagues() -> None:
    requests = build_requests(*_tables(), lead_ids=["L2"])
    assert [r["lead"]["lead_id"] for r in requests] == ["L2"]
    assert [c["lead_id"] for c in requests[0]["colleagues"]] == ["L1"]
    with pytest.raises(ValueError, match="L7"):
        build_requests(*_tables(), lead_ids=["L7"])


def test_tables_as_read_from_csv_text_columns_and_naive_times_are_converted() -> None:
    leads = pd.DataFrame(
        {
            "lead_id": ["A1", "A2"],
            "account_id": ["x", None],
            "created_at": ["2025-01-06 10:00:00", "2025-01-07T10:00:00+02:00"],
            "employee_count": [120.0, float("nan")],
            "region": ["emea", None],
            "crm_tier": ["gold", None],
            "favourite_colour": ["blue", "red"],  # not in the contract: not sent
        }
    )
    activities = pd.DataFrame(
        {
            "lead_id": ["A1", "A2"],
            "occurred_at": ["2025-01-08T09:00:00.1234567Z", "2025-01-08T09:00:00Z"],
            "activity_type": ["Demo Request", "page_view"],
            "properties": ['{"page": "/pricing"}', None],
        }
    )
    requests = _by_lead(build_requests(leads, activities, custom=["crm_tier"]))
    a1, a2 = requests["A1"], requests["A2"]
    assert a1["lead"] == {"lead_id": "A1", "account_id": "x", "created_at": "2025-01-06T10:00:00Z",
                          "employee_count": 120, "region": "emea", "custom": {"crm_tier": "gold"}}  # fmt: skip
    assert a2["lead"] == {"lead_id": "A2", "created_at": "2025-01-07T08:00:00Z"}
    assert a2["colleagues"] == []  # no account: its own
    # Nanoseconds are rounded up to the microsecond, as the service would round the touch up to the second anyway.
    assert a1["activities"] == [
        {
            "occurred_at": "2025-01-08T09:00:00.123457Z",
            "activity_type": "Demo Request",
            "properties": {"page": "/pricing"},
        }
    ]


def test_impossible_numbers_and_missing_columns_are_refused_before_sending() -> None:
    leads, activities = _tables()
    leads.loc[0, "annual_revenue"] = float("inf")
    with pytest.raises(ValueError, match=r"leads\.annual_revenue row 0"):
        build_requests(leads, activities)
    with pytest.raises(ValueError, match="activity_type"):
        build_requests(leads, activities.drop(columns=["activity_type"]))


# ---- retries against a real local server -----------------------------------------------------------------------

ANSWER: dict[str, Any] = {
    "request_id": "0196f0c2a1b27c3d8e9f0a1b2c3d4e5f",
    "lead_id": "L1",
    "fit": {"probability": 0.31, "score": 88.0, "grade": "A"},
    "readiness": {"probability": 0.12, "score": 71.5, "stage": "MQL"},
    "lifecycle": {"stage": "mql", "since": "2025-05-20T10:00:00Z", "readiness_applies": True, "note": None},
    "route": {"queue": "sdr", "priority": 2, "sla_hours": 24.0, "segment": None},
    "reasons": {"fit": [{"group": "company_size", "impact": 0.4, "label": "company of 850 employees"}],
                "behaviour": [{"group": "demo_request", "impact": 1.2, "label": "requested a demo 2 days ago"}]},
    "model_version": "3",
    "thresholds_version": 1,
    "scored_at": "2025-06-03T09:00:00.123456Z",
}  # fmt: skip


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    wait: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


class Script:
    """What the server answers, in order (the last reply repeats), and what it was sent."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    def next(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _batch_answer(body: Any) -> dict[str, Any]:
    return {"request_id": "b", "scores": [{**ANSWER, "lead_id": r["lead"]["lead_id"]} for r in body["leads"]]}


def _items_answer(body: Any) -> dict[str, Any]:
    """As the service answers a per-item batch: leads whose id starts with "BAD" refused, the others scored."""
    results = []
    for i, request in enumerate(body["leads"]):
        lead_id = request["lead"]["lead_id"]
        if lead_id.startswith("BAD"):
            problem = {"loc": ["body", "leads", i, "lead", "created_at"], "msg": "Field required", "type": "missing"}
            results.append({"index": i, "lead_id": lead_id, "status": "refused", "score": None, "problems": [problem]})
        else:
            score = {**ANSWER, "lead_id": lead_id, "request_id": "items"}
            results.append({"index": i, "lead_id": lead_id, "status": "scored", "score": score, "problems": []})
    scored = sum(r["status"] == "scored" for r in results)
    return {"request_id": "items", "scored": scored, "refused": len(results) - scored, "results": results}


CANNED = {"batch": _batch_answer, "items": _items_answer}


class Player:
    """The server's handle in a test: `play` sets the replies and returns the script that records what came in."""

    def __init__(self) -> None:
        self.script = Script(Reply(200, ANSWER))

    def play(self, *replies: Reply) -> Script:
        self.script = Script(*replies)
        return self.script


@pytest.fixture
def server() -> Iterator[tuple[str, Player]]:
    """A plain HTTP server (http.server) on a free loopback port that answers as the test's script says."""
    player = Player()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = player.script.next(Seen(self.path, dict(self.headers), body))
            time.sleep(reply.wait)
            answer = CANNED[reply.body](body) if isinstance(reply.body, str) else reply.body
            content = json.dumps(answer).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", player
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _client(url: str, sleeps: list[float], **kwargs: Any) -> LeadscoreClient:
    retry = kwargs.pop("retry", Retry(attempts=4, backoff=0.01, max_backoff=2.0))
    return LeadscoreClient(url, api_key="k-1", retry=retry, sleep=sleeps.append, **kwargs)


REQUEST: ScoreRequestBody = {"lead": {"lead_id": "L1", "created_at": "2025-01-06T10:00:00Z"}, "activities": [],
                             "colleagues": []}  # fmt: skip


def test_two_503s_then_an_answer_is_three_tries_with_backoff(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(503, {"detail": "no model loaded yet"}), Reply(503, {"detail": "x"}), Reply(200, ANSWER))
    sleeps: list[float] = []
    with _client(url, sleeps) as client:
        answer = client.score(REQUEST)
    assert isinstance(answer, ScoreResponse)
    assert answer.route.queue == "sdr" and answer.fit.grade == "A" and answer.reasons.behaviour[0].impact == 1.2
    assert answer.scored_at == dt.datetime(2025, 6, 3, 9, 0, 0, 123456, tzinfo=dt.UTC)
    assert [s.path for s in script.seen] == ["/v1/score"] * 3
    assert all(s.headers["X-API-Key"] == "k-1" for s in script.seen)
    assert script.seen[0].body == REQUEST
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.01 and 0 <= sleeps[1] <= 0.02


@pytest.mark.parametrize("status", [429, 502, 504])
def test_busy_and_gateway_answers_are_retried(server: tuple[str, Player], status: int) -> None:
    url, player = server
    script = player.play(Reply(status, {"detail": "busy"}, {"Retry-After": "1"}), Reply(200, ANSWER))
    sleeps: list[float] = []
    with _client(url, sleeps) as client:
        assert client.score(REQUEST).lead_id == "L1"
    assert len(script.seen) == 2
    assert sleeps == [1.0]  # Retry-After, over the backoff's draw


def test_a_batch_422_counts_its_paths_in_the_requests_given(server: tuple[str, Player]) -> None:
    url, player = server
    detail = [{"loc": ["body", "leads", 1, "lead", "created_at"], "msg": "Field required", "type": "missing"}]
    player.play(Reply(200, "batch"), Reply(422, {"detail": detail}))
    with _client(url, [], batch_size=2) as client, pytest.raises(LeadscoreInputError) as raised:
        client.score_batch(_requests(4))
    [problem] = raised.value.problems
    assert problem.path == ("body", "leads", 3, "lead", "created_at") and problem.lead_id == "L3"
    assert [a.lead_id for a in raised.value.answered] == ["L0", "L1"]


def test_a_422_is_never_retried_and_names_each_field_and_its_lead(server: tuple[str, Player]) -> None:
    url, player = server
    detail = [
        {"loc": ["body", "leads", 1, "activities", 0, "occurred_at"], "msg": "Input should be a valid datetime",
         "type": "datetime_from_date_parsing"},
        {"loc": ["body", "leads", 0, "colleagues"], "msg": "at most 200 colleagues per lead", "type": "too_long"},
    ]  # fmt: skip
    script = player.play(Reply(422, {"detail": detail}))
    second: ScoreRequestBody = {**REQUEST, "lead": {"lead_id": "L2", "created_at": "2025-01-06T10:00:00Z"}}
    sleeps: list[float] = []
    with _client(url, sleeps) as client, pytest.raises(LeadscoreInputError) as raised:
        client.score_batch([REQUEST, second])
    assert len(script.seen) == 1 and sleeps == []
    problems = raised.value.problems
    assert [(p.path, p.lead_id) for p in problems] == [
        (("body", "leads", 1, "activities", 0, "occurred_at"), "L2"),
        (("body", "leads", 0, "colleagues"), "L1"),
    ]
    assert problems[0].message == "Input should be a valid datetime"
    assert "body.leads.1.activities.0.occurred_at: Input should be a valid datetime (lead L2)" in str(raised.value)
    assert raised.value.status_code == 422


@pytest.mark.parametrize("status", [400, 401, 403, 413, 500])
def test_other_refusals_are_not_retried(server: tuple[str, Player], status: int) -> None:
    url, player = server
    script = player.play(Reply(status, {"detail": "missing or invalid API key (header X-API-Key)"}))
    with _client(url, []) as client, pytest.raises(LeadscoreHTTPError) as raised:
        client.score(REQUEST)
    assert raised.value.status_code == status and "invalid API key" in str(raised.value)
    assert len(script.seen) == 1


def test_still_unavailable_after_the_last_try_raises_the_last_status(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(503, {"detail": "no model loaded yet"}))
    sleeps: list[float] = []
    with _client(url, sleeps, retry=Retry(attempts=3, backoff=0.01)) as client, pytest.raises(LeadscoreHTTPError) as e:
        client.score(REQUEST)
    assert e.value.status_code == 503 and e.value.detail == "no model loaded yet"
    assert len(script.seen) == 3 and len(sleeps) == 2


def test_a_timeout_is_retried(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, ANSWER, wait=1.0), Reply(200, ANSWER))
    with _client(url, [], timeout=0.2) as client:
        assert client.score(REQUEST).lead_id == "L1"
    assert len(script.seen) == 2


def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    sleeps: list[float] = []
    with (
        _client(f"http://127.0.0.1:{port}", sleeps) as client,
        pytest.raises(LeadscoreConnectionError, match="4 tries"),
    ):
        client.score(REQUEST)
    assert len(sleeps) == 3


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    retry = Retry(attempts=6, backoff=0.5, max_backoff=4.0)
    rng = random.Random(1)
    for n, cap in enumerate([0.5, 1.0, 2.0, 4.0, 4.0]):
        draws = [retry.delay(n, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap  # spread over the whole range, not a fixed wait
    assert retry.delay(0, rng, retry_after=30.0) == 4.0  # Retry-After is respected up to max_backoff
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)


# ---- batches -----------------------------------------------------------------------------------------------------


def _requests(n: int, touches: int = 0) -> list[ScoreRequestBody]:
    return [
        {
            "lead": {"lead_id": f"L{i}", "created_at": "2025-01-06T10:00:00Z"},
            "activities": [{"occurred_at": "2025-01-07T10:00:00Z", "activity_type": "page_view"}] * touches,
            "colleagues": [],
        }
        for i in range(n)
    ]


def test_batches_are_cut_at_the_batch_limit_and_answers_keep_request_order(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, "batch"))
    with _client(url, [], batch_size=2) as client:
        answers = client.score_batch(_requests(5))
    assert [a.lead_id for a in answers] == [f"L{i}" for i in range(5)]
    assert [len(s.body["leads"]) for s in script.seen] == [2, 2, 1]
    assert {s.path for s in script.seen} == {"/v1/score/batch"}


def test_a_failed_batch_keeps_the_answers_of_the_batches_before_it(server: tuple[str, Player]) -> None:
    url, player = server
    player.play(Reply(200, "batch"), Reply(401, {"detail": "missing or invalid API key (header X-API-Key)"}))
    with _client(url, [], batch_size=2) as client, pytest.raises(LeadscoreHTTPError) as raised:
        client.score_batch(_requests(5))
    assert [a.lead_id for a in raised.value.answered] == ["L0", "L1"]


def test_batches_stay_under_the_body_limit(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, "batch"))
    requests = _requests(6, touches=40)
    one = len(json.dumps(requests[0], separators=(",", ":")))
    limit = 3 * one + 20  # three requests and the batch's brackets, not four
    with _client(url, [], max_body_bytes=limit) as client:
        assert len(client.score_batch(requests)) == 6
    assert [len(s.body["leads"]) for s in script.seen] == [3, 3]
    assert all(int(s.headers["Content-Length"]) <= limit for s in script.seen)
    with _client(url, [], max_body_bytes=one) as client, pytest.raises(ValueError, match=r"'L0'.*body limit"):
        client.score_batch(requests)


def test_a_lead_that_cannot_be_sent_stops_the_batches_keeping_the_answers_before_it(
    server: tuple[str, Player],
) -> None:
    url, player = server
    script = player.play(Reply(200, "batch"))
    requests = _requests(5)
    requests[3]["lead"]["annual_revenue"] = float("nan")
    with _client(url, [], batch_size=2) as client, pytest.raises(LeadscoreRequestError, match=r"'L3'.*JSON") as raised:
        client.score_batch(requests)
    assert isinstance(raised.value, ValueError)  # as before: a request the client cannot send is a ValueError
    assert [a.lead_id for a in raised.value.answered] == ["L0", "L1"]  # the first batch was scored and logged
    assert [len(s.body["leads"]) for s in script.seen] == [2]


# ---- per-item batches --------------------------------------------------------------------------------------------


def _lead_ids(*names: str) -> list[ScoreRequestBody]:
    return [{"lead": {"lead_id": name, "created_at": "2025-01-06T10:00:00Z"}, "activities": [], "colleagues": []}
            for name in names]  # fmt: skip


def test_per_item_batches_answer_each_lead_in_request_order_counted_across_batches(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, "items"))
    with _client(url, [], batch_size=2) as client:
        results = client.score_items(_lead_ids("L0", "BAD1", "L2", "BAD3", "L4"))
    assert [s.path for s in script.seen] == ["/v1/score/batch/items"] * 3
    assert [[r["lead"]["lead_id"] for r in s.body["leads"]] for s in script.seen] == [["L0", "BAD1"], ["L2", "BAD3"],
                                                                                     ["L4"]]  # fmt: skip
    assert all(isinstance(r, ItemResult) for r in results)
    assert [(r.index, r.lead_id, r.status) for r in results] == [
        (0, "L0", "scored"), (1, "BAD1", "refused"), (2, "L2", "scored"), (3, "BAD3", "refused"), (4, "L4", "scored"),
    ]  # fmt: skip
    assert [r.score.lead_id for r in results if r.score is not None] == ["L0", "L2", "L4"]
    assert all(r.score is None for r in results if r.status == "refused")
    # The second batch's second lead is the fourth request: its index and path say so, not "leads.1".
    [problem] = results[3].problems
    assert problem.loc == ("body", "leads", 3, "lead", "created_at") and problem.type == "missing"
    assert str(problem) == "body.leads.3.lead.created_at: Field required"


def test_a_lead_that_cannot_be_sent_is_refused_alone_in_the_per_item_mode(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, "items"))
    requests = _requests(4, touches=40)
    one = len(json.dumps(requests[0], separators=(",", ":")))
    requests[1]["activities"] = requests[1]["activities"] * 3  # three times the touches: over the limit alone
    requests[2]["lead"]["employee_count"] = float("inf")  # type: ignore[typeddict-item]
    with _client(url, [], max_body_bytes=2 * one + 20) as client:
        results = client.score_items(requests)
    assert [(r.index, r.status) for r in results] == [(0, "scored"), (1, "refused"), (2, "refused"), (3, "scored")]
    assert [[r["lead"]["lead_id"] for r in s.body["leads"]] for s in script.seen] == [["L0", "L3"]]
    assert results[3].score is not None and results[3].score.lead_id == "L3"
    too_big, not_json = results[1].problems[0], results[2].problems[0]
    assert too_big.loc == ("body", "leads", 1) and too_big.type == "not_sent" and "body limit" in too_big.msg
    assert not_json.loc == ("body", "leads", 2) and "JSON" in not_json.msg


def test_a_failed_per_item_batch_keeps_the_results_of_the_batches_before_it(server: tuple[str, Player]) -> None:
    url, player = server
    player.play(Reply(200, "items"), Reply(503, {"detail": "the score could not be recorded"}, {"Retry-After": "5"}))
    sleeps: list[float] = []
    retry = Retry(attempts=2, backoff=0.01, max_backoff=8.0)
    with _client(url, sleeps, batch_size=2, retry=retry) as client, pytest.raises(LeadscoreHTTPError) as raised:
        client.score_items(_lead_ids("L0", "BAD1", "L2"))
    assert raised.value.status_code == 503
    assert sleeps == [5.0]  # Retry-After: 5 is waited out before the last try
    assert [(r.index, r.status) for r in raised.value.item_results] == [(0, "scored"), (1, "refused")]
    assert [a.lead_id for a in raised.value.answered] == ["L0"]


def test_a_whole_batch_refusal_in_the_per_item_mode_names_the_requests(server: tuple[str, Player]) -> None:
    url, player = server
    detail = [{"loc": ["body", "leads"], "msg": "at most 1 leads per batch, got 2", "type": "too_long"}]
    player.play(Reply(200, "items"), Reply(422, {"detail": detail}))
    with _client(url, [], batch_size=2) as client, pytest.raises(LeadscoreInputError) as raised:
        client.score_items(_lead_ids("L0", "L1", "L2", "L3"))
    assert [p.path for p in raised.value.problems] == [("body", "leads")]
    assert [r.index for r in raised.value.item_results] == [0, 1]


def test_score_tables_sends_the_tables_requests(server: tuple[str, Player]) -> None:
    url, player = server
    script = player.play(Reply(200, "batch"))
    with _client(url, []) as client:
        answers = client.score_tables(*_tables(), lead_ids=["L3", "L1"])
    assert [a.lead_id for a in answers] == ["L3", "L1"]
    assert script.seen[0].body == {"leads": build_requests(*_tables(), lead_ids=["L3", "L1"])}


# ---- the client stays in step with the service, and light ---------------------------------------------------------


def _shape(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """What a JSON schema accepts, without titles, descriptions or the names of the models behind it."""
    if "$ref" in schema:
        return _shape(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return ("anyOf", sorted((_shape(s, defs) for s in schema["anyOf"]), key=repr))
    if "enum" in schema or "const" in schema:
        return ("enum", sorted(schema.get("enum", [schema.get("const")])))
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        fields = schema.get("properties", {})
        return ("object", sorted((n, _shape(s, defs), n in required) for n, s in fields.items()))
    if kind == "array":
        return ("array", _shape(schema["items"], defs))
    return (kind, schema.get("format"))


@pytest.mark.parametrize("model", [ScoreResponse, BatchResponse, ItemsResponse, ItemResult])
def test_answers_match_the_services_openapi_schema(model: type[BaseModel]) -> None:
    openapi = create_app(Settings.model_construct()).openapi()
    components = openapi["components"]["schemas"]
    ours = model.model_json_schema()
    assert _shape(ours, ours.get("$defs", {})) == _shape(components[model.__name__], components)


def test_batch_and_body_limits_are_the_services_defaults() -> None:
    fields = Settings.model_fields
    assert fields["max_batch"].default == DEFAULT_MAX_BATCH
    assert fields["max_body_bytes"].default == DEFAULT_MAX_BODY_BYTES


def test_importing_the_client_loads_no_scoring_code() -> None:
    code = "import json, sys, leadscore.client; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)))
    assert loaded.isdisjoint({"pandas", "mlflow", "lightgbm", "fastapi", "sklearn", "serving", "training"})
