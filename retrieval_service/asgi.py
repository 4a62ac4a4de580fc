"""The base of SIMS's pure ASGI middlewares (no FastAPI import: the synthesis worker's app uses it too)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """A middleware that acts on some HTTP requests and passes everything else through untouched.

    An HTTP request for which :meth:`applies` is true goes to :meth:`handle`; other requests, and
    every non-HTTP scope (lifespan, websockets), go straight to ``app``. Subclasses set their own
    state after ``super().__init__(app)``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def applies(self, scope: Scope) -> bool:
        """Whether this HTTP request is one the middleware acts on (default: all of them)."""
        return True

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer, or forward to ``self.app``, a request that :meth:`applies`."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope):
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)
