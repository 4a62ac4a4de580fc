"""Request body size limit, enforced while the body streams in (not after it is buffered)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval_service.http_errors import error_body


class BodyTooLarge(HTTPException):
    """The request body passed the limit (answered 413 by the HTTP error handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: at once from ``Content-Length`` when the
    client sends one, otherwise as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            # Raised where no handler caught it (e.g. while a form was being parsed).
            if started:
                raise
            await _reply(send, 413, "payload_too_large", e.detail)


async def _reply(send: Send, status: int, error: str, message: str) -> None:
    body = json.dumps(error_body(error, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
