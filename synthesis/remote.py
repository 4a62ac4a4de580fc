"""The retrieval service as the canvas builder's retriever and segment source, over HTTP.

:class:`RemoteRetriever` and :class:`RemoteSegments` make a
:class:`~retrieval_service.client.RetrievalClient` satisfy the
:class:`~synthesis.canvas.protocols.Retriever` and
:class:`~synthesis.canvas.protocols.SegmentSource` protocols, turning the API's models back into
the engine's result types, so that a canvas built over HTTP is the canvas built in-process (same
layout, seed and bank version: same pixels; a test holds them equal).

Segment ids name a bank *version*. A retrieval pins the version it was answered from for the
calling thread, and the segment reads that follow in that thread ask for that version, so a
reload of the service between the two never mixes versions. Segments are fetched once and kept in
a small LRU cache keyed by (version, id). When the segment source shares its pin with the
retriever (:func:`remote_builder`), its first read after a retrieval fetches all the chosen
segments in one ``POST /segments/batch``, before the canvas reads them one by one.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from memory_bank import IGNORE, ClassInfo, ClassTable, Segment, SegmentConfig
from memory_bank.png import LayoutSpec, decode_rgba_png
from retrieval_service.client import RetrievalClient
from retrieval_service.http_models import BankInfo, RetrieveRequest, RetrieveResponse
from retrieval_service.types import ComponentResult, Match, RetrievalOptions, RetrievalResult, Status
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.segment_cache import SegmentPixels

#: The service's FAISS candidates per component in ``fast`` mode (not a field of its requests).
SERVICE_CANDIDATES = RetrieveRequest.candidates


def bank_identity(info: BankInfo) -> tuple[ClassTable, SegmentConfig, tuple[int, int]]:
    """The class table, segment settings and working resolution a ``GET /bank`` describes."""
    classes = ClassTable(tuple(ClassInfo(c.id, c.name, (c.color[0], c.color[1], c.color[2])) for c in info.classes))
    config = SegmentConfig(
        connectivity=info.connectivity,  # type: ignore[arg-type]
        min_area=info.min_area,
        context_scale=info.context_scale,
        fine_grid=(info.grids.fine_grid[0], info.grids.fine_grid[1]),
        coarse_grids=tuple((g[0], g[1]) for g in info.grids.coarse_grids),
        instances=info.instances,
        thing_classes=tuple(info.thing_classes),
    )
    return classes, config, (info.resolution[0], info.resolution[1])


def layout_spec(info: BankInfo) -> LayoutSpec:
    """What the bank a ``GET /bank`` describes accepts as a layout (for the layout options)."""
    classes, _, resolution = bank_identity(info)
    return LayoutSpec(resolution, classes, {int(i): name for i, name in info.dataset_unlabelled_ids.items()})


def to_result(response: RetrieveResponse) -> RetrievalResult:
    """The engine's :class:`RetrievalResult` for a ``POST /retrieve`` response (timings in seconds)."""
    components = tuple(
        ComponentResult(
            component_id=c.id,
            class_id=c.class_id,
            bbox=(c.bbox[0], c.bbox[1], c.bbox[2], c.bbox[3]),
            area=c.area,
            status=Status(c.status),
            matches=tuple(Match(m.segment_id, m.image_id, m.score, m.mask_iou, m.context_iou) for m in c.candidates),
            choice=c.choice,
        )
        for c in response.components
    )
    timings = {k: v / 1000.0 for k, v in response.timings_ms.items()}
    names = {m.image_id: m.image_name for c in response.components for m in c.candidates if m.image_name is not None}
    return RetrievalResult(components, response.bank_version, response.mode, timings, image_names=names)


class _VersionPin(threading.local):
    """The bank version of the last retrieval made by this thread, and its chosen segments not yet read."""

    version: str | None = None
    pending: tuple[int, ...] = ()


class RemoteRetriever:
    """:class:`~synthesis.canvas.protocols.Retriever` over ``POST /retrieve``.

    ``options.candidates`` cannot be sent: the service always uses its default
    (:data:`SERVICE_CANDIDATES`), so other values raise ``ValueError`` rather than be ignored.
    """

    def __init__(self, client: RetrievalClient, pin: _VersionPin | None = None) -> None:
        self.client = client
        self.pin = pin or _VersionPin()

    def retrieve(
        self, layout: np.ndarray, options: RetrievalOptions | None = None, instances: np.ndarray | None = None
    ) -> RetrievalResult:
        """Top-k matches per component of an (H, W) uint8 layout (and its instance map), from the service."""
        options = options or RetrievalOptions()
        if options.candidates != SERVICE_CANDIDATES:
            raise ValueError(f"the service retrieves with candidates={SERVICE_CANDIDATES}, not {options.candidates}")
        response = self.client.retrieve(
            np.ascontiguousarray(layout, np.uint8),
            k=options.k,
            mode=options.mode,
            seed=options.seed,
            exclude_images=[int(i) for i in options.exclude_images],
            min_area=options.min_area,
            choose_from=options.choose_from,
            pins=dict(options.pins),
            instances=instances,
        )
        result = to_result(response)
        self.pin.version = response.bank_version
        self.pin.pending = tuple(c.chosen.segment_id for c in result.components if c.chosen is not None)
        return result


class RemoteSegments:
    """:class:`~synthesis.canvas.protocols.SegmentSource` over ``POST /segments/batch``.

    Reads ask for the bank version the calling thread's last retrieval pinned (the served one if
    none). ``segment()`` has no context map: the service does not serve label maps, so
    ``Segment.context`` is all unlabelled (255); the canvas never reads it.
    """

    def __init__(
        self,
        client: RetrievalClient,
        resolution: tuple[int, int],
        pin: _VersionPin | None = None,
        max_segments: int = 512,
    ) -> None:
        if max_segments < 0:
            raise ValueError(f"max_segments must be >= 0, got {max_segments}")
        self.client = client
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.pin = pin or _VersionPin()
        self.max_segments = max_segments
        self._cache: OrderedDict[tuple[str | None, int], tuple[Segment, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def prefetch(self, segment_ids: Sequence[int], version: str | None) -> dict[int, tuple[Segment, np.ndarray]]:
        """Fetch the segments of ``version`` not cached yet, in one request; returns those it fetched."""
        with self._lock:
            todo = sorted({int(i) for i in segment_ids} - {i for v, i in self._cache if v == version})
        if not todo:
            return {}
        got = {}
        for item in self.client.segments(todo, version=version).segments:
            rgba = decode_rgba_png(base64.b64decode(item.crop_png))
            y0, x0, y1, x1 = item.bbox
            if rgba.shape[:2] != (y1 - y0, x1 - x0):
                raise ValueError(f"segment {item.segment_id}: crop is {rgba.shape[:2]} but its box is {item.bbox}")
            crop_mask = rgba[..., 3] > 127
            crop = np.where(crop_mask[..., None], rgba[..., :3], 0).astype(np.uint8)
            mask = np.zeros(self.resolution, bool)
            mask[y0:y1, x0:x1] = crop_mask
            seg = Segment(
                segment_id=item.segment_id,
                image_id=item.image_id,
                class_id=item.class_id,
                bbox=(y0, x0, y1, x1),
                context_box=tuple(item.context_box),  # type: ignore[arg-type]
                area=item.area,
                crop=crop,
                mask=mask,
                context=np.full(self.resolution, IGNORE, np.uint8),
            )
            got[item.segment_id] = (seg, crop)
        with self._lock:
            if self.max_segments:
                for sid, value in got.items():
                    self._cache[(version, sid)] = value
                while len(self._cache) > self.max_segments:
                    self._cache.popitem(last=False)
        return got

    def _fetch(self, segment_id: int, version: str | None = None) -> tuple[Segment, np.ndarray]:
        """(segment with an empty context, (h, w, 3) crop) for ``version`` (default: pinned; cached)."""
        if version is None and self.pin.pending:
            # The first read after a retrieval: the canvas reads its chosen segments next, one by
            # one, so fetch them all now, in one request.
            pending, self.pin.pending = self.pin.pending, ()
            self.prefetch(pending, self.pin.version)
        version = version or self.pin.version
        key = (version, int(segment_id))
        with self._lock:
            got = self._cache.get(key)
            if got is not None:
                self._cache.move_to_end(key)
                return got
        return self.prefetch([segment_id], version)[int(segment_id)]

    def segment(self, segment_id: int) -> Segment:
        """The segment's crop, full-frame mask and boxes (context all unlabelled; see the class)."""
        return self._fetch(segment_id)[0]

    def segment_pixels(self, segment_id: int) -> SegmentPixels:
        """The segment's pixels and mask in its source frame (what the canvas builder places)."""
        seg, crop = self._fetch(segment_id)
        pixels = np.zeros((*self.resolution, 3), np.uint8)
        y0, x0, y1, x1 = seg.bbox
        pixels[y0:y1, x0:x1] = crop
        return SegmentPixels(seg.segment_id, seg.image_id, seg.class_id, pixels, seg.mask)


def remote_builder(client: RetrievalClient, *, info: BankInfo | None = None, **kwargs: object) -> CanvasBuilder:
    """A canvas builder whose retrieval and segment reads go to the service behind ``client``.

    ``info`` is the service's ``GET /bank`` (fetched if not given); ``kwargs`` go to
    :class:`~synthesis.canvas.builder.CanvasBuilder` (aligner, orderer, options, ...).
    """
    info = info or client.bank()
    classes, config, resolution = bank_identity(info)
    pin = _VersionPin()
    return CanvasBuilder(
        RemoteRetriever(client, pin),
        RemoteSegments(client, resolution, pin),
        classes=classes,
        config=config,
        resolution=resolution,
        **kwargs,  # type: ignore[arg-type]
    )
