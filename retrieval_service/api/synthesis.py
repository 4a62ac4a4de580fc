"""Where ``POST /synthesize`` sends its work: synthesis backends.

Dependencies point one way: ``synthesis`` uses this package, never the reverse. So the service
knows synthesis only through the small :class:`SynthesisBackend` protocol, and two kinds exist:

- :class:`HttpSynthesisBackend` forwards to synthesis workers (``sims worker``) at the
  comma-separated ``SIMS_SYNTHESIS_URL``, trying them in turn (round robin): a worker that refuses
  the connection or answers 503 passes the request on to the next; when none is up the answer is
  503 ``synthesis_unavailable``; a worker that does not answer within ``SIMS_SYNTHESIS_TIMEOUT``
  gives 504 ``synthesis_timeout``.
- a plugin named by ``SIMS_SYNTHESIS_BACKEND`` and loaded from the ``sims.synthesis_backends``
  entry point group: ``in_process`` (``synthesis.worker.backend:create_backend``) runs the
  pipeline inside the service on its own bank and engine, with no HTTP hop
  (``sims serve --with-worker``).

Either answers with a :class:`SynthesisReply` (the response body the worker made: a PNG, JSON or
multipart) or raises :class:`~retrieval_service.api.errors.ApiError`.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import httpx
import numpy as np
from PIL import Image

from retrieval_service.api.errors import ApiError
from retrieval_service.api.models import SynthesizeOptions, SynthesizeRequest
from retrieval_service.api.settings import Settings
from retrieval_service.api.state import BankHolder

log = logging.getLogger(__name__)

BACKEND_GROUP = "sims.synthesis_backends"
#: Response headers a worker sets that the service passes on.
RELAYED_HEADERS = ("x-sims-bank-version", "x-sims-seed", "server-timing")


@dataclass(frozen=True)
class SynthesisReply:
    """A finished synthesis response: body, media type and headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class SynthesisBackend(Protocol):
    """What the service needs from synthesis."""

    name: str

    async def start(self) -> None:
        """Called once in the service's lifespan, before requests."""
        ...

    async def synthesize(self, layout_png: bytes, options: SynthesizeOptions) -> SynthesisReply:
        """Synthesize a (validated) layout PNG; raises :class:`ApiError` on failure."""
        ...

    async def close(self) -> None:
        """Called once at shutdown."""
        ...


#: A plugin: ``factory(settings, holder)`` -> backend (``holder`` is the service's bank, if any).
BackendFactory = Callable[[Settings, BankHolder | None], SynthesisBackend]


def load_backend(settings: Settings, holder: BankHolder | None) -> SynthesisBackend | None:
    """The backend the settings ask for: a named plugin, the HTTP workers, or None."""
    if settings.synthesis_backend:
        found = {ep.name: ep for ep in entry_points(group=BACKEND_GROUP)}
        ep = found.get(settings.synthesis_backend)
        if ep is None:
            raise ValueError(
                f"no synthesis backend named {settings.synthesis_backend!r} is installed "
                f"(entry point group {BACKEND_GROUP}: {sorted(found) or 'empty'})"
            )
        factory: BackendFactory = ep.load()
        return factory(settings, holder)
    if settings.synthesis_urls:
        return HttpSynthesisBackend(settings.synthesis_urls, settings.synthesis_timeout)
    return None


class HttpSynthesisBackend:
    """Forwards to synthesis workers over HTTP (``POST {url}/synthesize``, JSON), in turn.

    Args:
        urls: worker base URLs.
        timeout: seconds a worker may take to answer (504 after); connecting gets at most 5 s.
        transport: an httpx transport to use instead of the network (tests).
    """

    name = "http"

    def __init__(self, urls: list[str], timeout: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not urls:
            raise ValueError("HttpSynthesisBackend needs at least one worker URL")
        self.urls = list(urls)
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._turn = itertools.count()

    async def start(self) -> None:
        timeout = httpx.Timeout(self.timeout, connect=min(5.0, self.timeout))
        self._client = httpx.AsyncClient(timeout=timeout, transport=self._transport)

    async def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.start()
        return self._client  # type: ignore[return-value]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def synthesize(self, layout_png: bytes, options: SynthesizeOptions) -> SynthesisReply:
        client = await self._ensure_client()
        body = SynthesizeRequest(
            **options.model_dump(), layout_png=base64.b64encode(layout_png).decode("ascii")
        ).model_dump_json()
        first = next(self._turn) % len(self.urls)
        down: list[str] = []
        for i in range(len(self.urls)):
            url = self.urls[(first + i) % len(self.urls)]
            try:
                r = await client.post(f"{url}/synthesize", content=body, headers={"content-type": "application/json"})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                down.append(f"{url}: {type(e).__name__}")
                continue
            except httpx.TimeoutException:
                raise ApiError(
                    504, "synthesis_timeout", f"the synthesis worker at {url} did not answer within {self.timeout:g} s"
                ) from None
            except httpx.TransportError as e:
                down.append(f"{url}: {type(e).__name__}: {e}")
                continue
            if r.status_code == 503:
                down.append(f"{url}: not ready ({_message(r)})")
                continue
            if r.is_success:
                headers = {k: v for k in RELAYED_HEADERS if (v := r.headers.get(k)) is not None}
                return SynthesisReply(r.content, r.headers.get("content-type", "application/octet-stream"), headers)
            if r.status_code < 500 or r.status_code == 504:
                raise ApiError(r.status_code, _kind(r), _message(r))
            raise ApiError(502, "synthesis_failed", f"the synthesis worker at {url} failed: {_message(r)}")
        log.warning("no synthesis worker is up: %s", "; ".join(down))
        raise ApiError(
            503,
            "synthesis_unavailable",
            f"no synthesis worker is up ({'; '.join(down)})",
            headers={"Retry-After": "1"},
        )


def _kind(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", "synthesis_error"))
    except ValueError:
        return "synthesis_error"


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text[:200]))
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


# Provenance maps as PNGs: bank segment ids up to 2**24 - 2 in the 24 bits of an RGB pixel.
MAX_PROVENANCE_ID = 2**24 - 2


def encode_provenance(provenance: np.ndarray) -> bytes:
    """An (H, W) int map of segment ids (-1 = none) as an RGB PNG holding ``id + 1`` in 24 bits."""
    p = np.asarray(provenance, np.int64)
    if p.ndim != 2 or (p.size and (p.min() < -1 or p.max() > MAX_PROVENANCE_ID)):
        raise ValueError(f"a provenance map is (H, W) ids in -1..{MAX_PROVENANCE_ID}, got {p.shape}")
    v = (p + 1).astype(np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def decode_provenance(png: bytes) -> np.ndarray:
    """Inverse of :func:`encode_provenance`: (H, W) int64 segment ids, -1 where none."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    return (rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]) - 1
