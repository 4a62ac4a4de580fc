"""Front-to-back order of segments derived from the layout alone (no depth needed).

The paper (§4.4) learns which of two overlapping segments is in front from depth. CamVid has no
depth, so SIMS derives the order from the layout. This rule is the default orderer of the canvas
builder and the supervision the learned ordering network is trained on.

The rule, for two segments ``a`` and ``b`` (masks in the same frame):

1. **Tiers.** Every class has a depth tier: ``FAR`` (sky) < ``BACKGROUND`` (scenery: building,
   road, pavement, tree, fence, ...) < ``OBJECT`` (everything else: cars, people, poles,
   signs). A higher tier is in front. :meth:`DepthTiers.from_class_names` assigns tiers by
   class name; classes it does not know are objects.
2. **Containment.** Within a tier, a segment enclosed by the other's convex hull (at least
   ``contain`` = 90% of its pixels lie inside the hull) is in front: a car seen against a
   building, a tree in front of a facade. If each is enclosed by the other's hull, this step
   does not decide.
3. **Lower in frame is nearer.** For a camera above a ground plane, the lower a segment's
   bottom edge (its lowest pixel row), the nearer it is. The lower one is in front.
4. **Ties** (same bottom row): the smaller segment is in front; equal areas give 0
   (undetermined).

:func:`pair_order` applies it to one pair; :func:`paint_order` turns it into a back-to-front
order of many segments: tiers first, then a topological sort of the pairwise decisions among
segments whose boxes overlap (only overlapping segments can hide each other), taking the
farthest ready segment (highest bottom edge, then larger area, then lower index) first, and
breaking any cycle the same way.

Known failure cases (documented in docs/canvas.md as well):

- Hanging and elevated things: a sign, traffic light or tree canopy has its bottom edge high in
  the frame although it may be near; against a car below it, the rule puts it behind.
- Truncation at the frame bottom: segments that reach the bottom row tie on step 3, and the
  smaller one wins; a large near car beside a small far pedestrian, both cut by the frame, is
  ordered wrongly.
- Occluded bottoms: a segment whose lower part is hidden by a third one has its bottom edge at
  the occluder's top, which makes it look farther. Usually right (it *is* behind the occluder)
  but it can flip its order against other segments.
- Concave scenery: a road or pavement that fans out to the horizon has a hull that encloses far
  objects; within the background tier, a building inside the road's hull is put in front of the
  road (harmless for painting, but not a depth statement).
- No ground plane: aerial views, tilted cameras, indoor ceilings (a ceiling lamp is "far"
  because it is high). The rule assumes upright street-level views.
- Interlocking objects (a bicyclist and the bicycle, a pedestrian holding a door) have no single
  front-back order; cycles are broken by the bottom-edge key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import cv2
import numpy as np

#: Class names treated as the far plane (behind everything).
FAR_NAMES: frozenset[str] = frozenset({"sky"})
#: Class names treated as scenery: behind objects, in front of the sky.
BACKGROUND_NAMES: frozenset[str] = frozenset(
    {
        "building",
        "road",
        "pavement",
        "sidewalk",
        "tree",
        "vegetation",
        "terrain",
        "wall",
        "fence",
        "ground",
        "floor",
        "ceiling",
        "grass",
        "mountain",
        "water",
        "sea",
    }
)


class Tier(IntEnum):
    """Depth tier of a class; higher is nearer."""

    FAR = 0
    BACKGROUND = 1
    OBJECT = 2


@dataclass(frozen=True)
class DepthTiers:
    """Which classes are far (sky) and which are background; every other class is an object."""

    far: frozenset[int] = field(default_factory=frozenset)
    background: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        both = self.far & self.background
        if both:
            raise ValueError(f"classes {sorted(both)} are both far and background")

    @classmethod
    def from_class_names(
        cls,
        names: Sequence[str],
        far_names: Iterable[str] = FAR_NAMES,
        background_names: Iterable[str] = BACKGROUND_NAMES,
    ) -> DepthTiers:
        """Tiers for a class table by name (``ClassTable.names``); ids follow the order of ``names``."""
        far_set = {n.lower() for n in far_names}
        bg_set = {n.lower() for n in background_names} - far_set
        far = frozenset(i for i, n in enumerate(names) if n.lower() in far_set)
        background = frozenset(i for i, n in enumerate(names) if n.lower() in bg_set)
        return cls(far=far, background=background)

    def tier(self, class_id: int) -> Tier:
        """The tier of one class."""
        if class_id in self.far:
            return Tier.FAR
        if class_id in self.background:
            return Tier.BACKGROUND
        return Tier.OBJECT


#: Share of a segment's pixels that must lie in the other's hull for it to count as enclosed.
CONTAIN = 0.9


@dataclass(frozen=True)
class _Shape:
    """What the rule needs of one mask: box, area, bottom row and convex hull (inside its box)."""

    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)
    area: int
    hull: np.ndarray  # (y1 - y0, x1 - x0) bool, the filled convex hull
    crop: np.ndarray  # the mask inside bbox

    @property
    def bottom(self) -> int:
        return self.bbox[2] - 1


def _shape(mask: np.ndarray) -> _Shape | None:
    """Box, area and hull of a mask; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1])
    hull = np.zeros(crop.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(_row_extremes(crop)), 1)
    return _Shape((y0, x0, y1, x1), int(np.count_nonzero(crop)), hull.astype(bool) | crop, crop)


def _row_extremes(crop: np.ndarray) -> np.ndarray:
    """(n, 1, 2) int32 points (x, y): the first and last pixel of every non-empty row.

    They have the same convex hull as all the mask's pixels, at a fraction of the points.
    """
    rows = np.flatnonzero(crop.any(axis=1))
    sub = crop[rows]
    first = sub.argmax(axis=1)
    last = crop.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    pts = np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)]).astype(np.int32)
    return pts.reshape(-1, 1, 2)


def _enclosed(a: _Shape, b: _Shape, contain: float) -> bool:
    """Does at least ``contain`` of ``a`` lie inside the convex hull of ``b``?"""
    y0, x0 = max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1])
    y1, x1 = min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3])
    if y1 <= y0 or x1 <= x0:
        return False
    sa = a.crop[y0 - a.bbox[0] : y1 - a.bbox[0], x0 - a.bbox[1] : x1 - a.bbox[1]]
    sb = b.hull[y0 - b.bbox[0] : y1 - b.bbox[0], x0 - b.bbox[1] : x1 - b.bbox[1]]
    # a's pixels outside the overlap box are outside b's hull too, so the overlap box suffices.
    return int(np.count_nonzero(sa & sb)) >= contain * a.area


def _decide(a: _Shape, b: _Shape, tier_a: Tier, tier_b: Tier, contain: float) -> int:
    """+1 if a is in front of b, -1 if behind, 0 if the rule cannot tell."""
    if tier_a != tier_b:
        return 1 if tier_a > tier_b else -1
    a_in_b, b_in_a = _enclosed(a, b, contain), _enclosed(b, a, contain)
    if a_in_b != b_in_a:
        return 1 if a_in_b else -1
    if a.bottom != b.bottom:
        return 1 if a.bottom > b.bottom else -1
    if a.area != b.area:
        return 1 if a.area < b.area else -1
    return 0


def pair_order(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    class_a: int,
    class_b: int,
    tiers: DepthTiers | None = None,
    *,
    contain: float = CONTAIN,
) -> int:
    """Which of two segments is nearer: +1 if ``a`` is in front of ``b``, -1 if ``b`` is, 0 if undetermined.

    ``mask_a`` and ``mask_b`` are (H, W) bool masks in the same frame. Without ``tiers`` every
    class is in the same tier and only geometry decides. An empty mask is behind a non-empty
    one (two empty masks give 0). Antisymmetric: ``pair_order(a, b) == -pair_order(b, a)``.
    """
    if mask_a.shape != mask_b.shape or mask_a.ndim != 2:
        raise ValueError(f"masks must be 2-D and of one shape, got {mask_a.shape} and {mask_b.shape}")
    tiers = tiers or DepthTiers()
    sa, sb = _shape(np.asarray(mask_a, bool)), _shape(np.asarray(mask_b, bool))
    if sa is None or sb is None:
        return (sa is not None) - (sb is not None)
    return _decide(sa, sb, tiers.tier(int(class_a)), tiers.tier(int(class_b)), contain)


def paint_order(
    masks: Sequence[np.ndarray],
    class_ids: Sequence[int],
    layout: np.ndarray | None = None,
    tiers: DepthTiers | None = None,
    *,
    contain: float = CONTAIN,
) -> list[int]:
    """Indices of ``masks`` back to front (paint in this order; the last one ends on top).

    A permutation of ``range(len(masks))``. Segments in a lower tier come first; within a tier,
    the pairwise rule of :func:`pair_order` is respected between every two segments whose boxes
    overlap, unless the decisions form a cycle. ``layout`` (the (H, W) label map the masks
    belong to) is accepted for the :class:`~synthesis.canvas.protocols.Orderer` protocol and
    only checked for shape: the rule needs nothing beyond the masks and classes.
    """
    n = len(masks)
    if len(class_ids) != n:
        raise ValueError(f"{n} masks but {len(class_ids)} class ids")
    if n == 0:
        return []
    frame = np.shape(masks[0])
    if any(np.shape(m) != frame for m in masks) or len(frame) != 2:
        raise ValueError("masks must be 2-D and all of one shape")
    if layout is not None and np.shape(layout) != frame:
        raise ValueError(f"layout is {np.shape(layout)} but masks are {frame}")
    tiers = tiers or DepthTiers()
    shapes = [_shape(np.asarray(m, bool)) for m in masks]
    tier = [tiers.tier(int(c)) for c in class_ids]
    # Farthest first within a tier: empty masks, then higher bottom edge, then larger area, then index.
    key = [(-1, 0, 0, i) if s is None else (int(tier[i]), s.bottom, -s.area, i) for i, s in enumerate(shapes)]
    order: list[int] = []
    for t in sorted(set(tier)):
        members = [i for i in range(n) if tier[i] == t]
        order += _topological(members, shapes, tier, key, contain)
    # Empty masks are painted first (they paint nothing); keep them in the permutation.
    empty = [i for i in order if shapes[i] is None]
    return empty + [i for i in order if shapes[i] is not None]


def _topological(
    members: list[int],
    shapes: list[_Shape | None],
    tier: list[Tier],
    key: list[tuple[int, int, int, int]],
    contain: float,
) -> list[int]:
    """Kahn's algorithm over "behind" edges between overlapping segments, farthest key first."""
    behind: dict[int, set[int]] = {i: set() for i in members}  # behind[j] = segments that must come before j
    for x, i in enumerate(members):
        si = shapes[i]
        for j in members[x + 1 :]:
            sj = shapes[j]
            if si is None or sj is None or not _boxes_overlap(si.bbox, sj.bbox):
                continue
            d = _decide(si, sj, tier[i], tier[j], contain)
            if d > 0:
                behind[i].add(j)
            elif d < 0:
                behind[j].add(i)
    remaining = sorted(members, key=lambda i: key[i])
    out: list[int] = []
    placed: set[int] = set()
    while remaining:
        # The farthest segment with nothing left behind it; in a cycle, the farthest of all.
        pick = next((i for i in remaining if behind[i] <= placed), remaining[0])
        out.append(pick)
        placed.add(pick)
        remaining.remove(pick)
    return out


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass(frozen=True)
class LayoutOrderer:
    """The layout rule as an :class:`~synthesis.canvas.protocols.Orderer`: ``orderer(layout, masks, class_ids)``."""

    tiers: DepthTiers = field(default_factory=DepthTiers)
    contain: float = CONTAIN

    @classmethod
    def for_class_names(cls, names: Sequence[str]) -> LayoutOrderer:
        """The default rule for a class table's names (sky far; scenery background)."""
        return cls(DepthTiers.from_class_names(names))

    def __call__(self, layout: np.ndarray, masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> list[int]:
        """Back-to-front indices of ``masks``."""
        return paint_order(masks, class_ids, layout, self.tiers, contain=self.contain)
