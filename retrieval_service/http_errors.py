"""HTTP errors of the SIMS services: one table from SIMS errors to statuses, and the handlers that use it.

Every error response, of the retrieval service and of the synthesis worker alike, is an
:class:`~retrieval_service.http_models.ErrorResponse`: ``{"error": kind, "message": text,
"details": [...] | null}``. A :class:`~memory_bank.errors.SimsError` gets its status and kind
from :data:`SIMS_ERROR_STATUS` (its own ``kind``, when it has one, names the case more
precisely); :class:`ApiError` is for what only the HTTP layer knows (authentication, media
types, missing segments); only a bug gives a 500. Both apps install the same handlers with
:func:`install_error_handlers`. This module imports no engine.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory_bank.errors import (
    BankBusyError,
    BankFormatError,
    BankNotFoundError,
    DatasetError,
    LayoutError,
    LayoutTooLargeError,
    OptionError,
    SimsError,
    TimedOutError,
    UnavailableError,
    UpstreamError,
)
from memory_bank.storage import storage_errors

log = logging.getLogger(__name__)

#: Seconds a client is told to wait after the bank's storage failed mid-request.
STORAGE_RETRY_AFTER = 5


class ApiError(Exception):
    """An error of the HTTP layer itself, answered with ``status`` and a JSON body of kind ``error``."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


#: Status and kind of each SIMS error, most specific first.
SIMS_ERROR_STATUS: tuple[tuple[type[SimsError], int, str], ...] = (
    (LayoutTooLargeError, 413, "layout_too_large"),
    (LayoutError, 422, "invalid_layout"),
    (OptionError, 422, "invalid_option"),
    (BankNotFoundError, 404, "bank_not_found"),
    (BankBusyError, 409, "bank_busy"),
    (DatasetError, 400, "dataset_error"),
    (BankFormatError, 503, "bank_unreadable"),
    (UnavailableError, 503, "unavailable"),
    (TimedOutError, 504, "timed_out"),
    (UpstreamError, 502, "upstream_failed"),
)

#: 5xx of an upstream passed on as they came ("not ready", "timed out"); its 4xx are the caller's and pass too.
_RELAYED_5XX = frozenset({503, 504})

_HTTP_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


#: ``<function f at 0x7f...>``: a repr's memory address, which tells a caller nothing and an attacker a little.
_OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def scrub(text: str) -> str:
    """``text`` without Python object addresses."""
    return _OBJECT_ADDRESS.sub("", text)


def error_body(error: str, message: str, details: list[dict] | None = None) -> dict:
    """The JSON body of an error response (messages scrubbed of object addresses)."""
    return {"error": error, "message": scrub(message), "details": details}


def sims_error_status(exc: SimsError) -> tuple[int, str]:
    """HTTP status and kind for a SIMS error."""
    status, kind = next(((s, k) for cls, s, k in SIMS_ERROR_STATUS if isinstance(exc, cls)), (400, "sims_error"))
    if isinstance(exc, UpstreamError) and exc.status is not None and (exc.status < 500 or exc.status in _RELAYED_5XX):
        status = exc.status
    return status, exc.kind or kind


def sims_error_headers(exc: SimsError) -> dict[str, str] | None:
    """Response headers for a SIMS error: ``Retry-After`` when it says when to try again."""
    if isinstance(exc, UnavailableError) and exc.retry_after is not None:
        return {"Retry-After": str(exc.retry_after)}
    return None


def _jsonable_details(errors: list[dict]) -> list[dict]:
    """Validation errors without the raw input (it may be a multi-megabyte upload) or exceptions."""
    out = []
    for e in errors:
        item = {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": scrub(str(e.get("msg", ""))),
            "type": str(e.get("type", "")),
        }
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every failure a JSON :class:`ErrorResponse` body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.error, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SimsError)
    async def _sims_error(request: Request, exc: SimsError) -> JSONResponse:
        status, kind = sims_error_status(exc)
        return JSONResponse(error_body(kind, str(exc)), status_code=status, headers=sims_error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _jsonable_details(list(exc.errors()))
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path", "header", "form"))
        message = f"{where}: {first['msg']}" if where else first["msg"]
        if len(details) > 1:
            message += f" (and {len(details) - 1} more problems)"
        return JSONResponse(error_body("invalid_request", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_KINDS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(kind, message), status_code=exc.status_code, headers=exc.headers)

    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        # The bank's files or objects could not be read (an object store or a disk failing
        # mid-request): the service is fine and the request may succeed again, so 503.
        log.warning("bank storage failed on %s %s: %r", request.method, request.url.path, exc)
        message = f"reading the bank failed ({type(exc).__name__}: {scrub(str(exc))}); retry later"
        return JSONResponse(
            error_body("storage_unavailable", message.replace("\n", " ")),
            status_code=503,
            headers={"Retry-After": str(STORAGE_RETRY_AFTER)},
        )

    for error in storage_errors():
        app.add_exception_handler(error, _storage_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log the traceback, answer without leaking internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"internal error ({type(exc).__name__}); see the service log"),
            status_code=500,
        )
