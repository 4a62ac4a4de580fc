"""Request and response models of the retrieval service's HTTP API (pydantic v2), shared with the client and worker.

The options themselves are :class:`~retrieval_service.types.RetrievalOptions` and
:class:`~retrieval_service.types.SynthesizeOptions`; the request models add the layout. This module
imports no engine and no web framework.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from retrieval_service.types import (
    DEFAULT_CANDIDATES,
    MAX_K,
    LayoutFields,
    MinArea,
    Mode,
    ReplyFormat,
    RetrievalOptions,
    Seed,
    SegmentId,
    StatusName,
    SynthesizeOptions,
    TopK,
)

#: Header of the admin key (``POST /admin/reload``).
API_KEY_HEADER = "X-API-Key"
#: Header of a client's deadline in seconds, capped by the server's limit (and the time left that the
#: service gives a worker: the worker stops its work by then).
TIMEOUT_HEADER = "X-SIMS-Timeout"
#: Request header with which the service says that its mirror of the worker admitted the request.
ADMITTED_HEADER = "X-SIMS-Admitted"
#: Response header in which a synthesis worker tells its slots and queue (``concurrency=2, queue=1``),
#: so that the service's mirror of the worker admits what the worker would.
SLOTS_HEADER = "X-SIMS-Slots"

# Fixed-length arrays are lists with a length, not tuples: OpenAPI 3.1 tools (and older
# clients) handle `items` + `minItems`/`maxItems` better than JSON Schema's `prefixItems`.
BBox = Annotated[list[int], Field(min_length=4, max_length=4)]
Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
RGB = Annotated[list[int], Field(min_length=3, max_length=3)]
LayoutFile = Annotated[bytes, Field(json_schema_extra={"format": "binary"}, description="PNG label map file.")]
InstancesFile = Annotated[
    bytes,
    Field(
        json_schema_extra={"format": "binary"},
        description="Optional instance map of the layout: a single-channel 8- or 16-bit greyscale PNG of the "
        "layout's size, one object id per pixel (0 = none). On a bank built with instances, each (thing class, "
        "instance id) is one component; on others it is ignored.",
    ),
]
_INSTANCES_HELP = (
    "Base64 of the layout's instance map (optional): a single-channel 8- or 16-bit greyscale PNG of the layout's "
    "size, one object id per pixel, 0 = none. On a bank built with instances (`GET /bank` `instances`), each "
    "(thing class, instance id) is one component, all its pixels; on a bank built without, it is ignored."
)
#: The layout of a JSON request (``POST /retrieve``, ``POST /synthesize``): a base64 PNG label map.
LayoutPng = Annotated[
    str,
    Field(
        min_length=1,
        description="Base64 (standard alphabet) of a single-channel PNG of class ids (255 = unlabelled) at the "
        "bank's resolution (see `layout_resize`, `layout_colors`, `dataset_ids` for other layouts).",
    ),
]
#: The instance map of a JSON request's layout, when it has one.
InstancesPng = Annotated[str | None, Field(min_length=1, description=_INSTANCES_HELP)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


#: A multipart field that may be left out: typed ``X | SkipJsonSchema[None]`` with this default, its
#: schema is X's alone, since a form can leave a field out but cannot send a null.
OMITTED = Field(None, json_schema_extra=_no_default)


# Requests


class RetrieveRequest(RetrievalOptions, LayoutFields):
    """JSON form of ``POST /retrieve``: the layout as a base64-encoded PNG label map."""

    #: Not a field: the service always retrieves with the default.
    candidates: ClassVar[int] = DEFAULT_CANDIDATES  # type: ignore[misc]
    layout_png: LayoutPng
    instances_png: InstancesPng = None


class RetrieveUpload(_Model):
    """Multipart form of ``POST /retrieve`` (documents the fields; parsed by the route)."""

    layout: LayoutFile
    instances: InstancesFile | SkipJsonSchema[None] = OMITTED
    k: TopK = 5
    mode: Mode = "fast"
    seed: Seed | SkipJsonSchema[None] = OMITTED
    exclude_images: str = Field("", description="Comma-separated bank image ids, e.g. `3,17`.")
    min_area: MinArea = 0
    choose_from: TopK | SkipJsonSchema[None] = OMITTED
    pins: str = Field("", description='JSON object of pins, e.g. `{"3": 1207}` (see the JSON form).')
    layout_resize: bool = False
    layout_colors: bool = False
    dataset_ids: bool = False


class SynthesizeRequest(SynthesizeOptions):
    """JSON form of ``POST /synthesize``: the layout as a base64-encoded PNG label map."""

    layout_png: LayoutPng
    instances_png: InstancesPng = None


class SynthesizeUpload(_Model):
    """Multipart form of ``POST /synthesize`` (documents the fields; parsed by the route)."""

    layout: LayoutFile
    instances: InstancesFile | SkipJsonSchema[None] = OMITTED
    k: TopK = 5
    seed: Seed = 0
    mode: Mode = "fast"
    coarse: bool = False
    extras: str = Field("", description="Comma-separated extras, e.g. `canvas,provenance,segments`.")
    format: ReplyFormat | SkipJsonSchema[None] = OMITTED
    pins: str = Field("", description='JSON object of pins, e.g. `{"3": 1207}` (see the JSON form).')
    exclude_images: str = Field("", description="Comma-separated bank image ids whose segments must not be used.")
    candidates: Annotated[int, Field(ge=0, le=MAX_K)] = 0
    timeout_s: Annotated[float, Field(gt=0)] | SkipJsonSchema[None] = OMITTED
    layout_resize: bool = False
    layout_colors: bool = False
    dataset_ids: bool = False


# Responses


class Candidate(_Model):
    """One retrieved bank segment."""

    segment_id: int
    image_id: int
    score: float = Field(..., description="mask_iou + context_iou, in [0, 2].")
    mask_iou: float
    context_iou: float
    image_name: str | None = Field(None, description="File name of the segment's source photo in the bank.")


class Component(_Model):
    """One connected component of the query layout and its candidates."""

    id: int = Field(..., description="Index of the component in the layout (class id, then raster order).")
    class_id: int
    class_name: str
    bbox: BBox = Field(..., description="[y0, x0, y1, x1), pixels.")
    area: int
    status: StatusName
    choice: int | None = Field(None, description="Index into `candidates` of the pick (seeded, or the best).")
    candidates: list[Candidate]


class RetrieveResponse(_Model):
    """Every component of a layout with its top-k candidates."""

    bank_version: str
    mode: Mode
    k: int
    height: int
    width: int
    components: list[Component]
    timings_ms: dict[str, float] = Field(default_factory=dict)


class SegmentMeta(_Model):
    """What the bank records about one segment."""

    segment_id: int
    image_id: int
    class_id: int
    class_name: str
    local_index: int
    bbox: BBox
    context_box: BBox
    area: int
    centroid: Annotated[list[float], Field(min_length=2, max_length=2, description="(y, x), pixel centres.")]
    source_file: str
    split: str
    bank_version: str


class ClassOut(_Model):
    id: int
    name: str
    color: RGB
    segments: int


class BankCounts(_Model):
    images: int
    segments: int
    dropped_segments: int


class BankGrids(_Model):
    fine_grid: Pair
    coarse_grids: list[Pair]


class BankInfo(_Model):
    """The bank version being served."""

    version: str
    parent_version: str | None
    created_at: str
    format_version: int
    resolution: Pair = Field(..., description="(height, width) every layout must have.")
    ignore_value: int
    min_area: int
    connectivity: int
    context_scale: float
    instances: Literal["none", "things"] = Field(
        "none", description="`things`: the bank cut thing classes per instance; query instance maps are honoured."
    )
    thing_classes: list[int] = Field(default_factory=list, description="The classes cut per instance.")
    classes: list[ClassOut]
    counts: BankCounts
    grids: BankGrids
    loaded_at: str
    available_versions: list[str]
    dataset_unlabelled_ids: dict[str, str] = Field(
        default_factory=dict,
        description="The source datasets' own unlabelled ids (decimal string -> dataset), which `dataset_ids=true` "
        "maps to 255; empty for banks built before they were recorded.",
    )


class ReloadResponse(_Model):
    """Outcome of ``POST /admin/reload``."""

    reloaded: bool = Field(..., description="False when the newest published version was already served.")
    previous_version: str
    version: str
    message: str
    seconds: float


class Liveness(_Model):
    status: Literal["ok"] = "ok"


class Readiness(_Model):
    ready: bool
    version: str | None = None
    message: str


class SynthesisSegment(_Model):
    """A bank segment painted on the canvas."""

    segment_id: int
    image_id: int
    component_id: int = Field(..., description="The layout component it fills (see `/retrieve`).")
    class_id: int
    class_name: str
    score: float
    rank: int = Field(..., description="Painting order, 0 = farthest (painted first).")


class UnfilledComponent(_Model):
    """A layout component that got no segment (its pixels stay missing on the canvas)."""

    component_id: int
    status: StatusName


class ComponentCandidate(_Model):
    """A bank segment that could fill a component, with its score."""

    segment_id: int
    image_id: int
    image_name: str | None = None
    score: float
    mask_iou: float
    context_iou: float


class SynthesisComponent(_Model):
    """One component of a synthesized layout: where it is, what fills it, and its alternatives."""

    index: int = Field(..., description="Its key in `pins` and its value - 1 in the `components` extra.")
    class_id: int
    bbox: BBox = Field(..., description="[y0, x0, y1, x1), pixels at the layout's own size.")
    area: int = Field(..., description="Pixels at the bank's resolution.")
    status: StatusName
    segment_id: int | None = Field(None, description="The bank segment painted for it; null if unfilled.")
    pinned: bool = False
    candidates: list[ComponentCandidate] = Field(default_factory=list, description="Top `candidates` matches.")


class SynthesizeResponse(_Model):
    """JSON form of a synthesis: the image and the requested extras as base64 PNGs."""

    bank_version: str
    seed: int
    k: int
    coarse: bool
    height: int
    width: int
    network_resolution: Pair = Field(
        ...,
        description="(height, width) the network ran at; the image comes at the layout's size, with the kept "
        "canvas pixels at full resolution.",
    )
    elision_band: float | None = Field(None, description="The elision band the canvas was made with.")
    elision_rate: float | None = Field(None, description="The elision rate the canvas was made with.")
    image_png: str | None = Field(None, description="Base64 RGB PNG at the layout's size (a part in multipart).")
    canvas_png: str | None = Field(None, description="Base64 RGB PNG of the canvas (black = missing).")
    provenance_png: str | None = Field(
        None,
        description="Base64 RGB PNG: each pixel holds `segment_id + 1` as 24 bits (R * 65536 + G * 256 + B); "
        "0 where the canvas shows no bank pixel.",
    )
    layout_png: str | None = Field(None, description="Base64 PNG label map the image was synthesized from.")
    components_png: str | None = Field(
        None, description="Base64 16-bit greyscale PNG: component index + 1 per pixel (0 = unlabelled/none)."
    )
    segments: list[SynthesisSegment] | None = None
    unfilled: list[UnfilledComponent] | None = None
    components: list[SynthesisComponent] | None = Field(
        None, description="Every component of the layout, in index order (the keys of `pins`)."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ErrorResponse(_Model):
    """Body of every error response."""

    error: str = Field(..., description="Machine-readable kind, e.g. `invalid_layout`, `payload_too_large`.")
    message: str = Field(..., description="What went wrong, for a person.")
    details: list[dict] | None = Field(None, description="Per-field problems of a request that failed validation.")


class ImageEntry(_Model):
    """One bank image."""

    image_id: int
    name: str = Field(..., description="Its source file, relative to the dataset root.")


class ImageList(_Model):
    """A page of the bank's images whose name matches the query."""

    total: int = Field(..., description="Images that match, over all pages.")
    images: list[ImageEntry]


class SegmentBatchRequest(_Model):
    """``POST /segments/batch``: the segments to read, in one request."""

    ids: list[SegmentId] = Field(..., max_length=4096)


class SegmentPixelsOut(SegmentMeta):
    """A segment's metadata and its RGBA crop (base64 PNG, alpha = mask)."""

    crop_png: str


class SegmentBatchResponse(_Model):
    """The requested segments, in request order."""

    bank_version: str
    segments: list[SegmentPixelsOut]
