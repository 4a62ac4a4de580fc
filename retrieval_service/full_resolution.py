"""``full`` mode: exact retrieval scored on pixels at the working resolution, not grid cells.

At the default 45x60 grid the grid top-1 is the pixel top-1 for only ~57% of CamVid val
components (small and thin segments code to a cell or two; docs/retrieval.md). ``full`` mode
answers on pixels, exactly, for banks that keep their label and component maps:

1. seeds: the grid top-``SEEDS`` of fast mode, scored on pixels, set a floor ``t`` on the
   k-th best score;
2. bounds: every segment of the class gets an upper bound: the mask intersection is at most
   the smaller area and the overlap of the two boxes; the context intersection at most, per
   class, the smaller pixel count inside the overlap of the two context boxes (summed-area
   tables of per-class counts over 8x8-pixel cells); IoU grows with the intersection;
3. the survivors are scored on pixels in descending bound order, ``t`` rising as they are,
   until the bound falls below ``t``.

Every segment left out provably scores below the k-th best, so the answer equals a full scan
on pixels (:func:`retrieval_service.reference.pixel_brute_force_topk`), ties to the lower
segment id. Pixel scoring is a compiled loop over the overlap of the two boxes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numba
import numpy as np

from memory_bank import Bank, Segments
from memory_bank.classes import IGNORE
from retrieval_service.iou import iou64, iou_scalar

log = logging.getLogger(__name__)

#: Grid top-k scored on pixels first, to set the floor for the bounds.
SEEDS = 16
#: Candidates scored on pixels per compiled call while walking down the bounds.
_CHUNK = 32
#: Cell size (pixels) of the per-class count tables that bound context intersections.
CELL = 8


@dataclass(frozen=True)
class PixelFrames:
    """Label and component maps with the per-segment boxes and sizes the scorer needs.

    The query side is the same structure with one frame (see :meth:`from_query`).
    """

    labels: np.ndarray  # (N, H, W) uint8
    components: np.ndarray  # (N, H, W) uint16, local index + 1
    image_id: np.ndarray  # (S,) int64
    local_index: np.ndarray  # (S,) int64
    area: np.ndarray  # (S,) int64
    bbox: np.ndarray  # (S, 4) int64
    context_box: np.ndarray  # (S, 4) int64
    context_size: np.ndarray  # (S,) int64: labelled pixels inside the context box
    class_tables: np.ndarray  # (N, classes, gh + 1, gw + 1) int32, see class_count_tables

    @property
    def nbytes(self) -> int:
        arrays = (self.labels, self.components, self.bbox, self.context_box, self.class_tables)
        return sum(a.nbytes for a in arrays)

    @classmethod
    def from_bank(cls, bank: Bank) -> PixelFrames:
        """Read every label and component map of a bank into memory (~0.6 MB per image at 360x480)."""
        start = time.perf_counter()
        labels = np.asarray(bank.labels[:])
        image_id = bank.column("image_id").astype(np.int64)
        cbox = bank.column("context_box").astype(np.int64)
        frames = cls(
            labels=labels,
            components=np.asarray(bank.components[:]),
            image_id=image_id,
            local_index=bank.column("local_index").astype(np.int64),
            area=bank.column("area").astype(np.int64),
            bbox=bank.column("bbox").astype(np.int64),
            context_box=cbox,
            context_size=context_sizes(labels, image_id, cbox),
            class_tables=class_count_tables(labels, len(bank.classes)),
        )
        log.info(
            "full-resolution frames: %d images, %d segments, %.0f MB, loaded in %.1f s",
            labels.shape[0],
            image_id.size,
            frames.nbytes / 1e6,
            time.perf_counter() - start,
        )
        return frames

    @classmethod
    def from_query(cls, label: np.ndarray, segments: Segments, num_classes: int) -> PixelFrames:
        """One query layout and its components (numbered 1..n in their component map)."""
        n = len(segments)
        zeros = np.zeros(n, np.int64)
        cbox = segments.context_box.astype(np.int64)
        return cls(
            labels=label[None],
            components=segments.component_map[None],
            image_id=zeros,
            local_index=np.arange(n, dtype=np.int64),
            area=segments.area.astype(np.int64),
            bbox=segments.bbox.astype(np.int64),
            context_box=cbox,
            context_size=context_sizes(label[None], zeros, cbox),
            class_tables=class_count_tables(label[None], num_classes),
        )


def class_count_tables(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per image and class, a summed-area table of pixel counts over cells of CELL x CELL pixels.

    ``t[n, k, i, j]`` counts the pixels of class ``k`` in image ``n`` in cell rows ``< i`` and
    cell columns ``< j``. A pixel rectangle rounded outwards to cells contains it, so counts over
    the rounded rectangle bound the counts inside it from above.
    """
    n, h, w = labels.shape
    gh, gw = -(-h // CELL), -(-w // CELL)
    cell = (np.arange(h)[:, None] // CELL) * gw + np.arange(w)[None, :] // CELL
    out = np.zeros((n, num_classes, gh + 1, gw + 1), np.int32)
    for i in range(n):
        lab = labels[i]
        ok = lab < num_classes
        counts = np.bincount(cell[ok] * num_classes + lab[ok], minlength=gh * gw * num_classes)
        grid = counts.reshape(gh, gw, num_classes).transpose(2, 0, 1)
        out[i, :, 1:, 1:] = grid.cumsum(axis=1).cumsum(axis=2)
    return out


def context_sizes(labels: np.ndarray, image_id: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Labelled (non-IGNORE) pixels of ``labels[image_id[i]]`` inside ``boxes[i]``."""
    out = np.zeros(image_id.size, np.int64)
    for j in np.unique(image_id):
        rows = np.flatnonzero(image_id == j)
        sat = np.zeros((labels.shape[1] + 1, labels.shape[2] + 1), np.int64)
        sat[1:, 1:] = (labels[j] != IGNORE).cumsum(axis=0).cumsum(axis=1)
        b = boxes[rows]
        out[rows] = sat[b[:, 2], b[:, 3]] - sat[b[:, 0], b[:, 3]] - sat[b[:, 2], b[:, 1]] + sat[b[:, 0], b[:, 1]]
    return out


@numba.njit(cache=True, nogil=True)
def _score_pixels(
    q_label: np.ndarray,  # (H, W) uint8
    q_comp: np.ndarray,  # (H, W) uint16
    q_id: int,  # the query component's number in q_comp
    q_bbox: np.ndarray,  # (4,)
    q_cbox: np.ndarray,  # (4,)
    q_area: int,
    q_csize: int,
    labels: np.ndarray,  # (N, H, W) uint8
    comps: np.ndarray,  # (N, H, W) uint16
    image_id: np.ndarray,
    local: np.ndarray,
    area: np.ndarray,
    bbox: np.ndarray,
    cbox: np.ndarray,
    csize: np.ndarray,
    segments: np.ndarray,  # (m,) segment ids to score
    out: np.ndarray,  # (m, 3) float64: score, mask IoU, context IoU
) -> None:
    for j in range(segments.size):
        s = segments[j]
        im = image_id[s]
        me = local[s] + 1
        inter = 0
        for y in range(max(q_bbox[0], bbox[s, 0]), min(q_bbox[2], bbox[s, 2])):
            for x in range(max(q_bbox[1], bbox[s, 1]), min(q_bbox[3], bbox[s, 3])):
                inter += (q_comp[y, x] == q_id) & (comps[im, y, x] == me)
        cinter = 0
        for y in range(max(q_cbox[0], cbox[s, 0]), min(q_cbox[2], cbox[s, 2])):
            for x in range(max(q_cbox[1], cbox[s, 1]), min(q_cbox[3], cbox[s, 3])):
                v = q_label[y, x]
                cinter += (v == labels[im, y, x]) & (v != 255)
        m = iou_scalar(float(inter), float(q_area), float(area[s]))
        c = iou_scalar(float(cinter), float(q_csize), float(csize[s]))
        out[j, 0] = m + c
        out[j, 1] = m
        out[j, 2] = c


def score_pixels(query: PixelFrames, i: int, bank: PixelFrames, segments: np.ndarray) -> np.ndarray:
    """(m, 3) float64 pixel (score, mask IoU, context IoU) of query component ``i`` against
    bank ``segments``: the same integer counts and float64 division as the reference."""
    out = np.empty((segments.size, 3))
    _score_pixels(
        query.labels[0],
        query.components[0],
        i + 1,
        query.bbox[i],
        query.context_box[i],
        int(query.area[i]),
        int(query.context_size[i]),
        bank.labels,
        bank.components,
        bank.image_id,
        bank.local_index,
        bank.area,
        bank.bbox,
        bank.context_box,
        bank.context_size,
        np.ascontiguousarray(segments, np.int64),
        out,
    )
    return out


def _overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    dy = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    dx = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.maximum(dy, 0) * np.maximum(dx, 0)


@numba.njit(cache=True, nogil=True)
def _context_caps(
    q_tables: np.ndarray,  # (classes, gh + 1, gw + 1)
    q_cbox: np.ndarray,  # (4,)
    tables: np.ndarray,  # (N, classes, gh + 1, gw + 1)
    image_id: np.ndarray,
    cbox: np.ndarray,
    segments: np.ndarray,
    cell: int,
    out: np.ndarray,  # (m,) int64
) -> None:
    for j in range(segments.size):
        s = segments[j]
        y0, x0 = max(q_cbox[0], cbox[s, 0]), max(q_cbox[1], cbox[s, 1])
        y1, x1 = min(q_cbox[2], cbox[s, 2]), min(q_cbox[3], cbox[s, 3])
        if y1 <= y0 or x1 <= x0:
            out[j] = 0
            continue
        # A context pixel pair can only match inside both boxes, and only within one class.
        i0, j0, i1, j1 = y0 // cell, x0 // cell, (y1 + cell - 1) // cell, (x1 + cell - 1) // cell
        t = tables[image_id[s]]
        total = 0
        for k in range(t.shape[0]):
            nq = q_tables[k, i1, j1] - q_tables[k, i0, j1] - q_tables[k, i1, j0] + q_tables[k, i0, j0]
            nb = t[k, i1, j1] - t[k, i0, j1] - t[k, i1, j0] + t[k, i0, j0]
            total += min(nq, nb)
        out[j] = min(total, (y1 - y0) * (x1 - x0))


def upper_bounds(query: PixelFrames, i: int, bank: PixelFrames, segments: np.ndarray) -> np.ndarray:
    """Float64 upper bounds of the pixel scores of query component ``i`` over ``segments``.

    Mask intersection: at most the smaller area and the overlap of the two boxes. Context
    intersection: at most the smaller size, and per class the smaller count inside the overlap
    of the two context boxes (rounded out to cells; :func:`class_count_tables`).
    """
    segments = np.ascontiguousarray(segments, np.int64)
    a, ca = int(query.area[i]), int(query.context_size[i])
    b, cb = bank.area[segments], bank.context_size[segments]
    im = np.minimum(np.minimum(a, b), _overlap(query.bbox[i], bank.bbox[segments]))
    caps = np.empty(segments.size, np.int64)
    q_tables, q_box = query.class_tables[0], query.context_box[i]
    _context_caps(q_tables, q_box, bank.class_tables, bank.image_id, bank.context_box, segments, CELL, caps)
    ic = np.minimum(np.minimum(ca, cb), caps)
    return iou64(im, a, b) + iou64(ic, ca, cb)


def rank_on_pixels(
    query: PixelFrames, i: int, bank: PixelFrames, pool: np.ndarray, seeds: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact pixel top-k of query component ``i`` over the segment ids ``pool``.

    ``pool`` must be sorted; ``seeds`` (ids within it, e.g. the grid top-k) are scored first
    to set the floor.
    Returns ``(segment_ids, scores, scored)``: scores (m, 3) as :func:`score_pixels`, best
    first, and how many segments were scored on pixels.
    """
    seeds = np.unique(seeds)
    ids = [seeds]
    scores = [score_pixels(query, i, bank, seeds)]
    t = _kth(scores, k)
    rest = np.setdiff1d(pool, seeds, assume_unique=True)
    bound = upper_bounds(query, i, bank, rest)
    keep = bound >= t
    rest, bound = rest[keep], bound[keep]
    order = np.argsort(-bound, kind="stable")
    for start in range(0, order.size, _CHUNK):
        chunk = order[start : start + _CHUNK]
        if bound[chunk[0]] < t:
            break
        ids.append(rest[chunk])
        scores.append(score_pixels(query, i, bank, rest[chunk]))
        t = max(t, _kth(scores, k))
    all_ids = np.concatenate(ids)
    all_scores = np.concatenate(scores)
    top = np.lexsort((all_ids, -all_scores[:, 0]))[:k]
    return all_ids[top], all_scores[top], all_ids.size


def _kth(scores: list[np.ndarray], k: int) -> float:
    s = np.concatenate([x[:, 0] for x in scores])
    return float(np.partition(s, s.size - k)[s.size - k]) if s.size >= k else -np.inf
