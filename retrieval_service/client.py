"""A typed Python client of the retrieval service (httpx), with the service's own models (:mod:`.http_models`).

    with RetrievalClient("http://127.0.0.1:8000") as client:
        result = client.retrieve(layout, k=5, seed=0)  # layout: (H, W) uint8 label map
        rgba = client.segment_rgba(result.components[0].candidates[0].segment_id, version=result.bank_version)

Errors come back as :class:`ServiceError` carrying the service's status, kind and message. A 429
or 503 with ``Retry-After`` (a full synthesis queue, a rate limit, a bank still loading) is asked
again after that many seconds, at most ``retries`` times and never after a wait longer than
``max_retry_wait``: then its error is raised like any other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import httpx
import numpy as np
from pydantic import BaseModel

from memory_bank.png import decode_rgba_png, encode_instances_png, encode_layout_png
from retrieval_service.http_models import (
    API_KEY_HEADER,
    BankInfo,
    Readiness,
    ReloadResponse,
    RetrieveResponse,
    SegmentBatchResponse,
    SegmentMeta,
    SynthesizeResponse,
)
from retrieval_service.types import LAYOUT_FIELDS, Extra, Mode, SynthesizeOptions

M = TypeVar("M", bound=BaseModel)
#: Statuses whose ``Retry-After`` the client honours.
RETRY_STATUSES = (429, 503)


class SynthesisParameters(TypedDict, total=False):
    """Keyword options of :meth:`RetrievalClient.synthesize` and :meth:`~RetrievalClient.synthesize_png`.

    Those of :class:`~retrieval_service.types.SynthesizeOptions`, with its defaults where one is left out
    (``k`` 5, ``seed`` 0, ``mode`` fast, not ``coarse``; ``elision_band`` and ``elision_rate`` None, the
    worker's default elision; ``timeout_s`` the request's deadline on the server), ``timeout``, which
    overrides the client's for this request (synthesis takes longer than retrieval), and ``instances``,
    the layout's instance map ((H, W) ids or PNG bytes).
    """

    k: int
    seed: int
    mode: Mode
    coarse: bool
    elision_band: float | None
    elision_rate: float | None
    pins: dict[str, int]
    candidates: int
    timeout_s: float | None
    layout_resize: bool
    layout_colors: bool
    dataset_ids: bool
    timeout: float | None
    instances: np.ndarray | bytes | None


class ServiceError(Exception):
    """The service answered with an error status."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class RetrievalClient:
    """Synchronous client of one retrieval service.

    Args:
        base_url: e.g. ``http://retrieval:8000``.
        api_key: sent as ``X-API-Key`` with every request (needed by :meth:`reload`, and by the
            route classes the service has keys for: ``synthesize``, ``full``, ``segments``).
        timeout: seconds per request.
        http: an ``httpx.Client`` to use instead of a new one (e.g. FastAPI's ``TestClient``);
            its base URL is then used and it is not closed by :meth:`close`.
        retries: times a 429 or 503 with ``Retry-After`` is asked again (0: never).
        max_retry_wait: the longest ``Retry-After`` waited for, in seconds; a longer one is raised at once.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        retries: int = 2,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._owns = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = {API_KEY_HEADER: api_key} if api_key else {}

    def close(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # Retrieval
    def retrieve(
        self,
        layout: np.ndarray | bytes,
        *,
        k: int = 5,
        mode: Mode = "fast",
        seed: int | None = None,
        exclude_images: Sequence[int] = (),
        min_area: int = 0,
        choose_from: int | None = None,
        pins: dict[str, int] | None = None,
        instances: np.ndarray | bytes | None = None,
    ) -> RetrieveResponse:
        """Top-k candidates for every component of ``layout`` (an (H, W) uint8 label map or PNG bytes).

        ``choose_from`` and ``pins`` are those of :class:`~retrieval_service.types.RetrievalOptions`;
        ``instances`` is the layout's instance map ((H, W) ids in 0..65535 or PNG bytes).
        """
        png = layout if isinstance(layout, bytes) else encode_layout_png(layout)
        data: dict[str, Any] = {"k": str(k), "mode": mode, "min_area": str(min_area)}
        if seed is not None:
            data["seed"] = str(seed)
        if len(exclude_images):
            data["exclude_images"] = ",".join(str(int(i)) for i in exclude_images)
        if choose_from is not None:
            data["choose_from"] = str(choose_from)
        if pins:
            data["pins"] = json.dumps({str(c): int(s) for c, s in pins.items()})
        files = {"layout": ("layout.png", png, "image/png"), **_instances_file(instances)}
        r = self._send("POST", "/retrieve", files=files, data=data)
        return self._parse(r, RetrieveResponse)

    # Synthesis
    def synthesize(
        self, layout: np.ndarray | bytes, *, extras: Sequence[Extra] = (), **parameters: Unpack[SynthesisParameters]
    ) -> SynthesizeResponse:
        """A photo for ``layout`` (JSON form: ``image_png`` and the ``extras`` as base64 PNGs).

        ``parameters`` are those of :class:`SynthesisParameters`.
        """
        r = self._post_synthesize(layout, parameters, extras, "json")
        return self._parse(r, SynthesizeResponse)

    def synthesize_png(self, layout: np.ndarray | bytes, **parameters: Unpack[SynthesisParameters]) -> bytes:
        """A photo for ``layout`` as PNG bytes; ``parameters`` as for :meth:`synthesize`."""
        r = self._post_synthesize(layout, parameters, (), "png")
        self._check(r)
        return r.content

    def _post_synthesize(
        self,
        layout: np.ndarray | bytes,
        parameters: SynthesisParameters,
        extras: Sequence[str],
        reply_format: str,
    ) -> httpx.Response:
        png = layout if isinstance(layout, bytes) else encode_layout_png(layout)
        given = dict(parameters)
        timeout = given.pop("timeout", None)
        instances = given.pop("instances", None)
        # Not validated here: the service answers bad values with its 422. Unset ones take its defaults.
        o = SynthesizeOptions.model_construct(**given)
        data = {"k": str(o.k), "seed": str(o.seed), "mode": o.mode, "coarse": "true" if o.coarse else "false"}
        for name in ("elision_band", "elision_rate"):
            if (value := getattr(o, name)) is not None:
                data[name] = repr(float(value))
        for name in LAYOUT_FIELDS:
            if getattr(o, name):
                data[name] = "true"
        if o.pins:
            data["pins"] = json.dumps({str(c): int(s) for c, s in o.pins.items()})
        if o.candidates:
            data["candidates"] = str(o.candidates)
        if o.timeout_s is not None:
            data["timeout_s"] = repr(float(o.timeout_s))
        data |= {"extras": ",".join(extras), "format": reply_format}
        files = {"layout": ("layout.png", png, "image/png"), **_instances_file(instances)}
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return self._send("POST", "/synthesize", files=files, data=data, **extra)

    # Segments
    def segment_png(self, segment_id: int, *, version: str | None = None) -> bytes:
        """The RGBA PNG crop of a segment (alpha = mask)."""
        r = self._send("GET", f"/segments/{int(segment_id)}", params=_version(version))
        self._check(r)
        return r.content

    def segment_rgba(self, segment_id: int, *, version: str | None = None) -> np.ndarray:
        """The crop of a segment as an (h, w, 4) uint8 array; alpha is 255 on the mask."""
        return decode_rgba_png(self.segment_png(segment_id, version=version))

    def segments(self, segment_ids: Sequence[int], *, version: str | None = None) -> SegmentBatchResponse:
        """Many segments' metadata and RGBA crops in one request (``POST /segments/batch``)."""
        body = {"ids": [int(i) for i in segment_ids]}
        return self._parse(
            self._send("POST", "/segments/batch", json=body, params=_version(version)), SegmentBatchResponse
        )

    def segment_meta(self, segment_id: int, *, version: str | None = None) -> SegmentMeta:
        """A segment's row of the bank's segment table."""
        r = self._send("GET", f"/segments/{int(segment_id)}/meta", params=_version(version))
        return self._parse(r, SegmentMeta)

    # Service
    def bank(self) -> BankInfo:
        """The bank version served, its classes, counts and grids."""
        return self._parse(self._send("GET", "/bank"), BankInfo)

    def reload(self) -> ReloadResponse:
        """Ask the service to serve the bank's newest published version (needs the API key)."""
        return self._parse(self._send("POST", "/admin/reload"), ReloadResponse)

    def live(self) -> bool:
        """True if the service answers ``/livez``."""
        try:
            return self._http.get("/livez").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> Readiness:
        """``/readyz``: whether a bank is loaded (never raises on 503)."""
        r = self._http.get("/readyz")
        if r.status_code not in (200, 503):
            self._check(r)
        return Readiness.model_validate_json(r.content)

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        r = self._send("GET", "/metrics")
        self._check(r)
        return r.text

    # Helpers
    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, asked again after its ``Retry-After`` on 429 and 503 (at most ``retries`` times)."""
        if self._headers:
            kwargs["headers"] = {**self._headers, **kwargs.get("headers", {})}
        for _ in range(self.retries):
            r = self._http.request(method, url, **kwargs)
            wait = retry_after_seconds(r) if r.status_code in RETRY_STATUSES else None
            if wait is None or wait > self.max_retry_wait:
                return r
            r.close()
            time.sleep(wait)
        return self._http.request(method, url, **kwargs)

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.is_success:
            return
        try:
            body = r.json()
            error, message = str(body.get("error", "error")), str(body.get("message", r.text))
        except ValueError:
            error, message = "error", r.text[:200]
        raise ServiceError(r.status_code, error, message)

    def _parse(self, r: httpx.Response, model: type[M]) -> M:
        self._check(r)
        return model.model_validate_json(r.content)


def retry_after_seconds(r: httpx.Response) -> float | None:
    """The seconds of a response's ``Retry-After`` (None when absent, or an HTTP date: not waited for)."""
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _version(version: str | None) -> dict[str, str]:
    return {"version": version} if version else {}


def _instances_file(instances: np.ndarray | bytes | None) -> dict[str, tuple[str, bytes, str]]:
    """The multipart file field ``instances`` of an instance map, if there is one."""
    if instances is None:
        return {}
    png = instances if isinstance(instances, bytes) else encode_instances_png(instances)
    return {"instances": ("instances.png", png, "image/png")}
