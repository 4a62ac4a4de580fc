"""What retrieval and synthesis requests and answers are, free of the engine and of the HTTP layer.

1. Modes and per-component statuses.
2. Results: :class:`Match`, :class:`ComponentResult`, :class:`RetrievalResult`, the engine's
   answers (the HTTP client rebuilds the same ones, :mod:`synthesis.remote`).
3. Options: :class:`RetrievalOptions`, one concept for the engine and ``POST /retrieve``, and
   :class:`SynthesizeOptions`, those of ``POST /synthesize``, the worker and ``sims synthesize``.
   Both are pydantic models: their fields, defaults and limits are the OpenAPI contract.
4. The synthesis backend contract: how the retrieval service hands ``/synthesize`` to a
   backend (workers over HTTP, or the in-process pipeline) without importing ``synthesis``.
5. What the service's and the worker's settings share: the synthesis deadline, thread counts
   and :func:`settings_env`.

This module imports no engine, FAISS, torch, numba or FastAPI, so an HTTP-only process (the
client, the synthesis worker) can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

if TYPE_CHECKING:
    import numpy as np

    from memory_bank import Bank
    from memory_bank.png import LayoutOptions

# 1. Modes and statuses

#: ``exact`` and ``fast`` score at the bank's grid, ``full`` on pixels at the working resolution.
Mode = Literal["exact", "fast", "full"]
#: The modes, in that order: what CLIs and checks list (a new mode is added to ``Mode`` only).
MODES: tuple[str, ...] = get_args(Mode)


class Status(StrEnum):
    """What happened to one query component."""

    OK = "ok"
    CLASS_NOT_IN_BANK = "class_not_in_bank"
    BELOW_MIN_AREA = "below_min_area"
    NO_CANDIDATES = "no_candidates"  # every segment of the class was excluded


#: The values of :class:`Status` as the HTTP models type them (an inline enum in the OpenAPI spec).
StatusName = Literal["ok", "class_not_in_bank", "below_min_area", "no_candidates"]


# 2. Results


@dataclass(frozen=True)
class Match:
    """One retrieved bank segment and its score."""

    segment_id: int
    image_id: int
    score: float
    mask_iou: float
    context_iou: float


@dataclass(frozen=True)
class ComponentResult:
    """The top-k of one query component; ``choice`` indexes the diversity pick in ``matches``."""

    component_id: int
    class_id: int
    bbox: tuple[int, int, int, int]
    area: int
    status: Status
    matches: tuple[Match, ...] = ()
    choice: int | None = None

    @property
    def chosen(self) -> Match | None:
        return None if self.choice is None else self.matches[self.choice]


@dataclass(frozen=True)
class RetrievalResult:
    """All components of one layout, in extraction order."""

    components: tuple[ComponentResult, ...]
    bank_version: str
    mode: Mode
    timings: dict[str, float] = field(default_factory=dict)
    scored: int = 0  # segments scored exactly, over all components
    #: Source file name of every bank image in ``matches`` (empty when the retriever has no bank).
    image_names: dict[int, str] = field(default_factory=dict)


# 3. Options

#: Most matches per component a request may ask for.
MAX_K = 100
#: Most image ids one request may exclude.
MAX_EXCLUDE = 10_000
#: Largest seed (numpy's generators take any non-negative integer; 64 bits is plenty).
MAX_SEED = 2**64 - 1
#: FAISS candidates per component in ``fast`` mode, unless an in-process caller asks for others.
DEFAULT_CANDIDATES = 512

#: Field types shared by the option models (limits here, descriptions with each field).
TopK = Annotated[int, Field(ge=1, le=MAX_K)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MinArea = Annotated[int, Field(ge=0, le=2**31 - 1)]
#: The largest image or segment id the API takes: ids are int64 in the index, and JSON numbers are
#: exact only to 2^53 (I-JSON, RFC 7493; JavaScript's safe integers), so a larger one is a 422.
MAX_ID = 2**53 - 1
#: A bank image id.
ImageId = Annotated[int, Field(ge=0, le=MAX_ID)]
#: A bank segment id.
SegmentId = Annotated[int, Field(ge=0, le=MAX_ID)]
Extra = Literal["canvas", "provenance", "segments", "layout", "components"]
#: Most pins one request may carry, and the largest component index a pin may name.
MAX_PINS = 1000
MAX_COMPONENT = 65_534
PinKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}$")]
Pins = Annotated[
    dict[PinKey, SegmentId],
    Field(
        max_length=MAX_PINS,
        description="Component index (decimal string, the order of the response's `components`) -> bank segment "
        "id. A pinned component is painted with that segment whatever the seed; the others are picked as usual. "
        "422 `invalid_pin` for an index out of range, `unknown_segment`, `pin_class_mismatch`.",
    ),
]
ReplyFormat = Literal["png", "json", "multipart"]

_MODE_HELP = (
    "`exact`: the true top-k at the bank's grid; `fast`: FAISS candidates re-ranked exactly at the grid; "
    "`full`: the true top-k scored on pixels at the working resolution (slower)."
)


class _Options(BaseModel):
    """Base of the option and HTTP models: unknown fields are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LayoutFields(_Options):
    """How a layout PNG is read (``POST /retrieve``, ``POST /synthesize``, the worker, ``sims synthesize``).

    Strict by default: each option accepts one kind of layout the strict reading refuses, and
    the refusal names the option. :func:`memory_bank.png.decode_layout` applies them.
    """

    layout_resize: bool = Field(
        False,
        description="Accept a layout of any size: it is resized to the bank's resolution (nearest neighbour); "
        "`/synthesize` answers at the layout's own size (image and canvas resized area/linear, provenance, "
        "components and layout nearest).",
    )
    layout_colors: bool = Field(
        False,
        description="Accept an RGB, RGBA or palette PNG drawn in the bank's class colours (`GET /bank`); black "
        "and fully transparent pixels are unlabelled. A colour not in the table is a 422 naming it.",
    )
    dataset_ids: bool = Field(
        False,
        description="Map the source datasets' own unlabelled ids, recorded in the bank's manifest "
        "(`GET /bank` `dataset_unlabelled_ids`, e.g. CamVid's 11), to 255.",
    )

    def layout_options(self) -> LayoutOptions:
        """These fields as the decoder's :class:`memory_bank.png.LayoutOptions`."""
        from memory_bank.png import LayoutOptions

        return LayoutOptions(resize=self.layout_resize, colors=self.layout_colors, dataset_ids=self.dataset_ids)


#: The names of :class:`LayoutFields`' fields.
LAYOUT_FIELDS = ("layout_resize", "layout_colors", "dataset_ids")


class RetrievalOptions(_Options):
    """Options of one retrieval, in-process (the engine) and over HTTP (``POST /retrieve``).

    ``candidates`` is for in-process callers only: the service always retrieves with
    :data:`DEFAULT_CANDIDATES`, so its request models do not have the field.
    """

    k: TopK = Field(5, description="Candidates returned per component, best first.")
    mode: Mode = Field("fast", description=_MODE_HELP)
    seed: Seed | None = Field(
        None, description="With a seed, `choice` is a reproducible random pick among the top-k; without, the best."
    )
    exclude_images: tuple[ImageId, ...] = Field(
        default_factory=tuple,
        max_length=MAX_EXCLUDE,
        description="Bank image ids whose segments must not be returned.",
    )
    min_area: MinArea = Field(
        0, description="Components smaller than this (pixels) get no candidates; never below the bank's minimum."
    )
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1, description="FAISS candidates per component in `fast` mode.")
    choose_from: TopK | None = Field(
        None, description="The seeded `choice` is among the first `choose_from` matches (default: all `k`)."
    )
    pins: Pins = Field(default_factory=dict)


class SynthesizeOptions(LayoutFields):
    """Options of one synthesis (``POST /synthesize``, the worker, ``sims synthesize``).

    ``k``, ``seed`` and ``mode`` go to retrieval as in :class:`RetrievalOptions`, except that
    every synthesis has a seed (it also draws the elision); ``extras`` and ``format`` shape an
    HTTP reply.
    """

    k: TopK = Field(5, description="Candidates per component the seed picks among (diversity).")
    seed: Seed = Field(0, description="Picks among the top-k and draws the elision; same seed, same image.")
    mode: Mode = Field("fast", description="Retrieval mode (see `/retrieve`).")
    coarse: bool = Field(
        False, description="The layout is coarse (gaps, rough outlines): densify it with the layout refiner first."
    )
    elision_band: float | None = Field(
        None,
        ge=0.0,
        le=0.25,
        description="Boundary elision band as a fraction of the layout's height: canvas pixels this close to a "
        "pasted segment's edge are elided, and the band outside objects is blacked out (the paper: 0.05; 0 keeps "
        "every retrieved pixel). Default: the worker's.",
    )
    elision_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of the pixels in the band inside segments that is elided (paper: 0.8)."
    )
    extras: list[Extra] = Field(
        default_factory=list,
        max_length=5,
        description="Also return: `canvas` (RGB PNG), `provenance` (segment ids per pixel, RGB PNG, see below), "
        "`segments` (the painted bank segments), `layout` (the layout synthesized from; the refined one if coarse), "
        "`components` (16-bit greyscale PNG: component index + 1 per pixel, 0 = none).",
    )
    pins: Pins = Field(default_factory=dict)
    exclude_images: tuple[ImageId, ...] = Field(
        default_factory=tuple,
        max_length=MAX_EXCLUDE,
        description="Bank image ids whose segments must not fill the canvas: the Studio sends the image a "
        "layout was taken from, so that the synthesis does not copy its own photo.",
    )
    candidates: int = Field(
        0, ge=0, le=MAX_K, description="List each component's top `candidates` matches in the JSON `components`."
    )
    format: ReplyFormat | None = Field(
        None,
        description="`png`: the image alone; `json`: base64 PNGs and metadata; `multipart`: multipart/mixed parts. "
        "Default: `png` without extras, `json` with.",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="The client's deadline in seconds (like the `X-SIMS-Timeout` header; the shorter wins), capped "
        "by the server's limit: a synthesis predicted to finish later is refused at once with 503 and "
        "`Retry-After`, one that runs late is a 504.",
    )

    @property
    def reply_format(self) -> ReplyFormat:
        """The format to answer in."""
        return self.format or ("json" if self.extras else "png")

    def deadline(self, limit: float) -> float:
        """Seconds this synthesis may take: the server's ``limit``, or ``timeout_s`` when shorter."""
        return limit if self.timeout_s is None else min(limit, self.timeout_s)


# 4. The synthesis backend contract


@dataclass(frozen=True)
class SynthesisReply:
    """A finished synthesis response: body, media type and headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class SynthesisBackend(Protocol):
    """What the retrieval service needs from synthesis.

    A backend may also have ``admit(timeout) -> Ticket`` (a
    :class:`~retrieval_service.admission.Ticket`, or the 503 ``synthesis_busy`` for a synthesis that
    would not finish within ``timeout`` seconds): ``/synthesize`` calls it before reading the upload,
    to shed load cheaply, and then passes the ticket on as ``synthesize(..., ticket=ticket)``. An
    older plugin may have ``check_capacity() -> None`` instead, raising the same 503.
    """

    name: str

    async def start(self) -> None:
        """Called once in the service's lifespan, before requests."""
        ...

    async def synthesize(
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None = None
    ) -> SynthesisReply:
        """Synthesize a (validated) layout PNG, with its instance map PNG if any; failures are
        :class:`~memory_bank.errors.SimsError`."""
        ...

    async def close(self) -> None:
        """Called once at shutdown."""
        ...


@runtime_checkable
class Retriever(Protocol):
    """Anything that retrieves bank segments for every component of a layout: the in-process
    :class:`~retrieval_service.engine.RetrievalEngine`, or :class:`~synthesis.remote.RemoteRetriever`
    over HTTP."""

    def retrieve(
        self, layout: np.ndarray, options: RetrievalOptions | None = None, instances: np.ndarray | None = None
    ) -> RetrievalResult:
        """Top-k matches per component of an (H, W) uint8 layout at the bank's resolution.

        ``instances``, the layout's (H, W) instance map, is used when the bank cuts per instance."""
        ...


class ServedBank(Protocol):
    """One bank version a service answers with, and its engine."""

    @property
    def bank(self) -> Bank: ...

    @property
    def engine(self) -> Retriever: ...

    @property
    def version(self) -> str: ...


class BankSource(Protocol):
    """The service's current bank (it changes on reload)."""

    def require(self) -> ServedBank:
        """The bank version served now; :class:`~memory_bank.errors.UnavailableError` while none is loaded."""
        ...


class BackendSettings(Protocol):
    """The service settings a synthesis backend reads."""

    @property
    def synthesis_weights(self) -> Path | None: ...

    @property
    def synthesis_timeout(self) -> float: ...

    @property
    def synthesis_cluster(self) -> str | None: ...

    @property
    def synthesis_max_in_flight(self) -> int: ...

    @property
    def bank(self) -> Path | str | None: ...


#: A plugin: ``factory(settings, bank)`` -> backend (``bank`` is the service's, None without one).
BackendFactory = Callable[[BackendSettings, BankSource | None], SynthesisBackend]


# 5. Settings shared by the service and the synthesis worker

#: Seconds a synthesis may take by default: the service's ``SIMS_SYNTHESIS_TIMEOUT`` and a
#: worker's ``SIMS_WORKER_TIMEOUT`` (504 after).
DEFAULT_SYNTHESIS_TIMEOUT = 60.0
#: A synthesis deadline in seconds.
SynthesisTimeout = Annotated[float, Field(gt=0.0)]
#: A thread count; 0 leaves it to what runs the threads (the CPU cores, torch's own default).
ThreadCount = Annotated[int, Field(ge=0)]


def settings_env(settings: BaseModel, prefix: str) -> dict[str, str]:
    """``settings`` as ``<prefix><NAME>`` environment variables (unset values are left out), the
    strings the settings read back: secrets in clear, booleans ``true``/``false``."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[prefix + name.upper()] = str(value)
    return env
