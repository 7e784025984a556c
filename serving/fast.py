"""The fast path of the score routes: valid, canonical requests answered in plain ASGI, the rest handed to FastAPI.

A CRM sends thousands of well-formed requests for every malformed one. For those, FastAPI's middleware, routing,
dependencies and pydantic models cost more than scoring itself. The fast path answers a request only when it is
authorised, declares a JSON body within the size limit, and that body is valid and canonical (its msgspec twin
accepts it and the service's limits hold); it then scores exactly as the documented endpoint does. Anything else,
including every refusal, goes to the FastAPI app unchanged (the body replayed as read), so that the same 401, 413,
422 and 503 are answered in the same order with the same words, and the OpenAPI document stays the truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.schemas import CanonicalBatchRequest, CanonicalScoreRequest, parse_canonical
from serving.score_log import ScoreLogUnavailableError
from serving.scoring import batch_problems, contract_of, limit_problems, log_and_count, score_many, score_one
from serving.service import gc_paused
from serving.state import ServiceState

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
BATCH_PATH = "/v1/score/batch"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_INTERNAL_ERROR = b'{"detail":"internal error"}'
# How long a client should wait before trying again when scores cannot be recorded (a full disk, a failing database).
RETRY_AFTER_SECONDS = 5

Answer = Callable[[ServiceState, bytes], Awaitable[bytes | None]]


async def _single(state: ServiceState, raw: bytes) -> bytes | None:
    model = state.holder.current
    if model.export is not None:
        return None  # an export model's leads: its own route reads them
    body = parse_canonical(CanonicalScoreRequest, raw)
    if body is None or limit_problems(body, state.settings, ["body"], contract_of(model)):
        return None
    return await score_one(state, body, raw)


async def _batch(state: ServiceState, raw: bytes) -> bytes | None:
    model = state.holder.current
    if model.export is not None:
        return None
    with gc_paused():
        # The parsed batch dies with the call, before collection resumes: what survives the pause is what the
        # next collection walks.
        body = parse_canonical(CanonicalBatchRequest, raw)
        if body is None or batch_problems(body.leads, state.settings, contract_of(model)):
            return None
        inputs = [msgspec.json.encode(r).decode() for r in body.leads]  # the reference models' normal form, logged
        content, scored = score_many(state, model, body.leads)
    await log_and_count(state, scored, inputs)
    return content


ANSWERS: dict[str, Answer] = {SCORE_PATH: _single, BATCH_PATH: _batch}


def _headers(scope: Scope) -> tuple[bytes, bytes | None, bytes | None]:
    """(content type, API key, content length) as sent; uvicorn gives header names in lower case."""
    content_type, key, length = b"", None, None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"x-api-key":
            key = value
        elif name == b"content-length":
            length = value
    return content_type, key, length


def _json(content_type: bytes) -> bool:
    """The body is declared JSON the way FastAPI reads it (the common spellings; others go to FastAPI)."""
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


async def _read_body(receive: Receive, expected: int) -> tuple[list[bytes], bool] | None:
    """The body's chunks and whether more is to come (never past `expected` bytes); None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: nobody to answer
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > expected:
            return chunks, more


def _replay(chunks: list[bytes], more: bool, receive: Receive) -> Receive:
    """`receive` that first hands over the body already read, so the FastAPI app reads the request as it came."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": more}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def answer(state: ServiceState, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a POST to a score route: on the fast path when it can, otherwise by `app` (the FastAPI app)."""
    start = time.perf_counter()
    path: str = scope["path"]
    content_type, key, length = _headers(scope)
    settings = state.settings
    if (
        length is None  # chunked: the FastAPI app checks the size as the body streams in
        or not length.isdigit()
        or int(length) > settings.max_body_bytes
        or not _json(content_type)
        or not state.holder.ready
        or not state.may_score(None if key is None else key.decode("latin-1") or None)
    ):
        state.metrics.count_fast_path(answered=False)
        await app(scope, receive, send)
        return
    read = await _read_body(receive, int(length))
    if read is None:
        return
    chunks, more = read
    try:
        content = None if more else await ANSWERS[path](state, b"".join(chunks))
    except ScoreLogUnavailableError as err:
        # Scored, but not recorded durably: not acknowledged. The client may send it again once the log recovers.
        await _send(send, 503, unavailable_body(err), retry_after=RETRY_AFTER_SECONDS)
        state.metrics.count_request(path, 503, time.perf_counter() - start)
        return
    except Exception:
        # What a user sends cannot get here (it would have been refused above): this is our fault, logged as such.
        log.exception("unexpected error on POST %s", path)
        await _send(send, 500, _INTERNAL_ERROR)
        state.metrics.count_request(path, 500, time.perf_counter() - start)
        return
    state.metrics.count_fast_path(answered=content is not None)
    if content is None:
        await app(scope, _replay(chunks, more, receive), send)
        return
    await _send(send, 200, content)
    state.metrics.count_request(path, 200, time.perf_counter() - start)


def unavailable_body(err: ScoreLogUnavailableError) -> bytes:
    """The 503 answer of a score that could not be recorded."""
    return msgspec.json.encode({"detail": f"the score could not be recorded, so it is not given: {err}"})


async def _send(send: Send, status: int, content: bytes, *, retry_after: int | None = None) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
