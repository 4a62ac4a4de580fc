"""Admission limits of the service: expensive work, request body size and read time, and a per-client rate limit.

The rate limit and the admission of expensive work (:class:`AdmissionMiddleware`) answer before
any of the request is read, the body limits while the body streams in (not after it is
buffered). Connection-level limits (concurrency, idle and header timeouts) belong to the HTTP
server: see :mod:`retrieval_service.api.server`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_bank.errors import SimsError
from retrieval_service.admission import Ticket
from retrieval_service.asgi import HttpMiddleware
from retrieval_service.http_errors import ApiError, error_body, sims_error_headers, sims_error_status

#: Paths the rate limit never counts: probes and scrapes must get through a busy service.
RATE_LIMIT_EXEMPT = frozenset({"/livez", "/readyz", "/metrics"})


#: The answers of these limits, documented on every operation they apply to (see :func:`document_limits`).
_LIMIT_RESPONSES = {
    "429": "Over the per-client rate limit (only when SIMS_RATE_LIMIT is set); `Retry-After` says when to retry.",
}
_BODY_LIMIT_RESPONSES = {
    "408": "The request body stopped arriving (nothing for SIMS_BODY_TIMEOUT seconds).",
    "413": "Body larger than the limit (SIMS_MAX_UPLOAD_BYTES).",
}


def document_limits(openapi: dict[str, Any], error_schema: dict[str, Any]) -> dict[str, Any]:
    """Add the limits' answers (429 everywhere it can happen, 408/413 where a body is read) to a spec.

    The middleware answers these itself, outside any route, so FastAPI cannot see them; a route's
    own description of the same status is kept.
    """
    for path, operations in openapi.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            limits = {} if path in RATE_LIMIT_EXEMPT else dict(_LIMIT_RESPONSES)
            if "requestBody" in operation:
                limits |= _BODY_LIMIT_RESPONSES
            for status, text in limits.items():
                responses.setdefault(
                    status, {"description": text, "content": {"application/json": {"schema": error_schema}}}
                )
    return openapi


#: Decides on a request from its head alone: a ticket (held until the request ends), None (let it
#: through without one), or an :class:`ApiError` / :class:`~memory_bank.errors.SimsError` to answer.
Gate = Callable[[Scope], Ticket | None]


class AdmissionMiddleware(HttpMiddleware):
    """Admits or refuses the expensive ``POST`` routes from the request head, before any of the body
    is read, parsed or decoded: the queue state first, and only then (inside, in
    :class:`BodyLimitsMiddleware`) ``Content-Length``.

    ``gates`` maps a path to its :data:`Gate`. A refusal is answered here, outside the router and the
    dependencies, so it costs little CPU; an admitted request carries its ticket to the route as
    ``request.state.admission``, and the ticket is dropped when the request ends (a job that
    claimed it releases it when the job ends). A 503 refusal (busy) is held ``hold`` seconds
    before it is sent, its body unread (``SIMS_REFUSAL_HOLD``).
    """

    def __init__(self, app: ASGIApp, gates: Mapping[str, Gate], hold: float = 0.0) -> None:
        super().__init__(app)
        self.gates = dict(gates)
        self.hold = hold

    def applies(self, scope: Scope) -> bool:
        return scope["method"] == "POST" and scope["path"] in self.gates

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            ticket = self.gates[scope["path"]](scope)
        except ApiError as e:
            await _reply(send, e.status, e.error, e.message, e.headers)
            return
        except SimsError as e:
            status, kind = sims_error_status(e)
            if status == 503 and self.hold > 0:
                # Decided already, and waiting costs no CPU: a client that retries at once, without
                # honouring Retry-After, cannot spin the event loop and starve the admitted work.
                await asyncio.sleep(self.hold)
            await _reply(send, status, kind, str(e), sims_error_headers(e))
            return
        if ticket is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["admission"] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.drop()


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in an ASGI scope, if sent."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class BodyTooLarge(HTTPException):
    """The request body passed the limit (answered 413 by the HTTP error handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyTimedOut(HTTPException):
    """The client stopped sending its body (answered 408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive: nothing received for {seconds:g} s")


class BodyLimitsMiddleware(HttpMiddleware):
    """Refuses bodies over ``max_bytes`` with 413: at once from ``Content-Length`` when the
    client sends one, otherwise as soon as the streamed body passes the limit. A body whose next
    chunk takes more than ``chunk_timeout`` seconds is answered 408 (a slow client holds no slot
    for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, chunk_timeout: float = 30.0) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.chunk_timeout = chunk_timeout

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "bad_request", "Content-Length is not an integer")
                return
            if size > self.max_bytes:
                await _reply(send, 413, "payload_too_large", BodyTooLarge(self.max_bytes).detail)
                return
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # e.g. waiting for http.disconnect while streaming a response: no deadline
                return await receive()
            with anyio.move_on_after(self.chunk_timeout) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise BodyTimedOut(self.chunk_timeout)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimedOut) as e:
            # Raised where no handler caught it (e.g. while a form was being parsed).
            if started:
                raise
            kind = "payload_too_large" if isinstance(e, BodyTooLarge) else "request_timeout"
            await _reply(send, e.status_code, kind, e.detail)


class RateLimitMiddleware(HttpMiddleware):
    """A per-client rate limit (client = the peer address, as uvicorn's proxy headers set it):
    above any of ``rate``'s limits a request is answered 429 with ``Retry-After``.

    ``rate`` is in the ``limits`` notation (``"20/second;600/minute"``); the moving window counts
    the last full window, so a burst cannot double the rate at a window edge. Counters live in
    ``storage_uri`` (``memory://``: per process).
    """

    def __init__(self, app: ASGIApp, rate: str, storage_uri: str = "memory://") -> None:
        super().__init__(app)
        self.items: list[RateLimitItem] = parse_many(rate)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def applies(self, scope: Scope) -> bool:
        return scope["path"] not in RATE_LIMIT_EXEMPT

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = (scope.get("client") or ("unknown", 0))[0]
        for item in self.items:
            if not self.limiter.hit(item, "sims", client):
                reset = self.limiter.get_window_stats(item, "sims", client).reset_time
                retry_after = max(1, math.ceil(reset - time.time()))
                message = f"rate limit of {item} per client exceeded; retry in {retry_after} s"
                await _reply(send, 429, "rate_limited", message, {"retry-after": str(retry_after)})
                return
        await self.app(scope, receive, send)


async def _reply(send: Send, status: int, error: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(error, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
