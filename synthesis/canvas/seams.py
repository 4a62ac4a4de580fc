"""Seams: where one layout class shows pixels of two sources, and the gradient-domain blend across them.

A pixel's *source* is the bank photo its canvas pixel was retrieved from, or :data:`DRAWN` (-1)
where the canvas has no kept pixel and the network drew it. A *seam* is a pair of 4-neighbours
of one labelled class and two different sources (:func:`seam_pairs`); two segments of one photo
do not make one. ``sims eval`` scores the colour steps there (:mod:`synthesis.evaluation.seams`).

:func:`blend_seams` removes the step in the local mean colour at each seam and keeps every
texture gradient (a gradient-domain blend, Pérez et al. 2003), then gives the drawing the
texture of the photos beside it, in three stages:

1. **Photo against photo.** A correction ``d`` is solved for the kept pixels by least squares
   over the 4-neighbour pairs of one class:

   - inside one source the correction is smooth: ``d_p - d_q = 0``;
   - across a seam it cancels the jump between the two sides' mean colours (each over up to
     ``side`` pixels of its own source, along the pair's direction): ``d_q - d_p = -jump``;
   - a weak pull to zero, ``stiffness * d**2``, fixes the constant and lets the correction
     fade over about ``1 / sqrt(stiffness)`` pixels.

   Both sides move toward each other. Conjugate gradients with a Jacobi preconditioner,
   ``iterations`` steps.
2. **Drawn against photo.** The network's drawing moves to the real pixels beside it and the
   real pixels stay as they are, so a drawing never fogs a photo. Each drawn pixel next to a
   kept pixel of its class takes the mean-colour jump. The jumps are filled over the drawn
   pixels of that class by a normalised pyramid (push-pull), and fade as ``exp(-distance /
   reach)``.
3. **Texture for the drawing.** The network draws at its own, lower resolution, so its drawing
   is smooth beside real pixels. In each class where a drawing meets a photo, every drawn pixel
   takes the fine detail (colour minus its Gaussian blur of ``texture_sigma`` pixels, taken over
   the kept pixels only) of a kept pixel of its class: its mirror image across the nearest kept
   pixel, folded back and forth so that it lies at most ``texture_fold`` pixels behind that
   pixel, or the kept pixel nearest to the mirror image where that is none. The detail fades as
   ``exp(-distance / texture_reach)`` and is scaled, per class, so that the drawing's detail
   energy rises at most to ``texture_gain`` times the kept pixels' (4 by default, chosen on CamVid
   val: the real photos hold more detail where a canvas has holes, at the edges of objects, than
   the kept pixels do on average). The drawing keeps its colour and gains the photos' grain.

A pair's jump is weighted by how many pixels its sides' means had (``min(n_p, n_q) / side``),
so the isolated pixels that elision keeps barely move anything. Classes never mix: no pair of
two classes takes part. With no seams the image comes back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from memory_bank.classes import IGNORE

#: Source of a pixel the canvas lacks (drawn by the network).
DRAWN = -1


@dataclass(frozen=True)
class SeamBlend:
    """Settings of :func:`blend_seams` (chosen by measurement, docs/synthesis.md).

    ``photos``/``drawn``/``texture`` switch the three stages; ``side``: pixels each side's mean
    colour is taken over; ``stiffness``: the pull of stage 1 (fade length about
    ``stiffness ** -0.5``); ``iterations``: conjugate-gradient steps of stage 1; ``reach``: fade
    length of stage 2 and ``texture_reach`` of stage 3, in pixels; ``texture_sigma``: the blur
    that stage 3's detail is taken above; ``texture_fold``: how deep behind a photo's edge it is
    taken from; ``texture_gain``: the drawing's detail energy over the kept pixels' that stage 3
    tops up to (``benchmarks/detail_budget.py`` measures the choice).
    """

    photos: bool = True
    drawn: bool = True
    texture: bool = True
    side: int = 3
    stiffness: float = 1e-2
    iterations: int = 10
    reach: float = 40.0
    texture_sigma: float = 1.0
    texture_reach: float = 64.0
    texture_fold: float = 12.0
    texture_gain: float = 4.0

    def __post_init__(self) -> None:
        positive = (
            self.stiffness, self.reach, self.texture_sigma, self.texture_reach, self.texture_fold, self.texture_gain
        )  # fmt: skip
        if self.side < 1 or self.iterations < 0 or min(positive) <= 0:
            raise ValueError(f"bad seam blend settings: {self}")

    @property
    def enabled(self) -> bool:
        """True if any stage runs."""
        return self.photos or self.drawn or self.texture


def source_map(provenance: np.ndarray, image_of_segment: Mapping[int, int]) -> np.ndarray:
    """(H, W) int64: the bank photo of each kept canvas pixel (``provenance >= 0``), :data:`DRAWN` elsewhere."""
    provenance = np.asarray(provenance, np.int64)
    source = np.full(provenance.shape, DRAWN, np.int64)
    kept = provenance >= 0
    if kept.any():
        ids = np.unique(provenance[kept])
        lookup = np.array([image_of_segment.get(int(i), -2) for i in ids], np.int64)
        if (lookup == -2).any():
            raise ValueError(f"provenance names segments the canvas did not place: {ids[lookup == -2][:5]}")
        source[kept] = lookup[np.searchsorted(ids, provenance[kept])]
    return source


def seam_pairs(layout: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(N, 4) 4-neighbour pairs ``(y0, x0, y1, x1)`` of one labelled class and two different sources."""
    rows = []
    for (a, b), (dy, dx) in zip(_pair_slices(), ((0, 1), (1, 0)), strict=True):
        hit = (layout[a] == layout[b]) & (layout[a] != IGNORE) & (source[a] != source[b])
        y, x = np.nonzero(hit)
        rows.append(np.stack([y, x, y + dy, x + dx], axis=1))
    return np.concatenate(rows).astype(np.int64)


def blend_seams(
    image: np.ndarray, layout: np.ndarray, source: np.ndarray, settings: SeamBlend | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 ``image`` with the mean-colour steps at its seams blended away (module doc)."""
    settings = settings or SeamBlend()
    layout, source = np.asarray(layout), np.asarray(source, np.int64)
    if image.shape[:2] != layout.shape or source.shape != layout.shape:
        raise ValueError(f"image {image.shape[:2]}, layout {layout.shape} and sources {source.shape} differ in size")
    pairs = seam_pairs(layout, source)
    if not settings.enabled or not len(pairs):
        return image
    f = np.ascontiguousarray(image, np.float32) / 255.0  # the network hands over a channel-first view
    seams = _Seams(layout, source, pairs)
    stages = ((settings.photos, _blend_photos), (settings.drawn, _blend_drawn), (settings.texture, _texture_drawn))
    for on, stage in stages:
        if on:
            f = stage(f, seams, settings)
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pair_slices() -> tuple[tuple[tuple[slice, slice], tuple[slice, slice]], ...]:
    """(first, second) pixel slices of the horizontal, then the vertical 4-neighbour pairs."""
    return (
        ((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
        ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
    )


@dataclass(frozen=True)
class _Seams:
    """One image's seams as the stages read them: the layout, the sources, the seam pairs, the kept
    pixels and a key naming each pixel's (class, source)."""

    layout: np.ndarray
    source: np.ndarray
    pairs: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        return self.source != DRAWN

    @property
    def key(self) -> np.ndarray:
        return self.layout.astype(np.int64) * (int(self.source.max()) + 2) + self.source + 1


@dataclass(frozen=True)
class _Jumps:
    """Seam pairs of one stage: ``first``/``second`` (N, 2) pixel coordinates (the second is right of
    or below the first), the mean-colour ``jump`` (N, 3) from the first side to the second, and a
    ``weight`` (N,) in (0, 1]: how many pixels the smaller side's mean had, over ``side``."""

    first: np.ndarray
    second: np.ndarray
    jump: np.ndarray
    weight: np.ndarray


def _side_mean(
    f: np.ndarray, key: np.ndarray, start: np.ndarray, step: np.ndarray, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour over the run of up to ``side`` pixels of ``start``'s key, going by ``step``; and its length."""
    h, w = key.shape
    own = key[start[:, 0], start[:, 1]]
    total, count = f[start[:, 0], start[:, 1]].copy(), np.ones(len(start), np.float32)
    alive = np.ones(len(start), bool)
    for i in range(1, side):
        y, x = start[:, 0] + i * step[:, 0], start[:, 1] + i * step[:, 1]
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        y, x = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)
        alive &= inside & (key[y, x] == own)
        total += f[y, x] * alive[:, None]
        count += alive
    return total / count[:, None], count


def _jumps(f: np.ndarray, seams: _Seams, side: int, drawn_pairs: bool) -> _Jumps:
    """The seams of one stage (``drawn_pairs``: drawn against photo; else photo against photo) and their jumps."""
    first, second = seams.pairs[:, :2], seams.pairs[:, 2:]
    kept = seams.kept
    kept_a, kept_b = kept[first[:, 0], first[:, 1]], kept[second[:, 0], second[:, 1]]
    chosen = (kept_a != kept_b) if drawn_pairs else (kept_a & kept_b)
    first, second = first[chosen], second[chosen]
    key = seams.key
    step = second - first
    mean_a, n_a = _side_mean(f, key, first, -step, side)
    mean_b, n_b = _side_mean(f, key, second, step, side)
    return _Jumps(first, second, mean_b - mean_a, np.minimum(n_a, n_b) / side)


def _blend_photos(f: np.ndarray, seams: _Seams, settings: SeamBlend) -> np.ndarray:
    """Stage 1: the least-squares correction of the kept pixels (module doc)."""
    jumps = _jumps(f, seams, settings.side, drawn_pairs=False)
    if not len(jumps.first):
        return f
    layout, kept = seams.layout, seams.kept
    (ha, hb), (va, vb) = _pair_slices()
    # Pairs that take part: one class, both kept. Drawn pixels have none and are held at zero.
    on_h = ((layout[ha] == layout[hb]) & kept[ha] & kept[hb]).astype(np.float32)[..., None]
    on_v = ((layout[va] == layout[vb]) & kept[va] & kept[vb]).astype(np.float32)[..., None]
    stiff = np.where(kept, settings.stiffness, 1.0).astype(np.float32)[..., None]
    diagonal = stiff + _divergence(on_h, on_v, stiff.shape, degree=True)
    # The seam pairs want d(second) - d(first) = -jump: the right-hand side is that target's divergence.
    rhs = np.zeros(f.shape, np.float32)
    target = -(jumps.weight[:, None] * jumps.jump).astype(np.float32)
    np.add.at(rhs, (jumps.second[:, 0], jumps.second[:, 1]), target)
    np.add.at(rhs, (jumps.first[:, 0], jumps.first[:, 1]), -target)

    step_h, step_v = np.empty_like(f[hb]), np.empty_like(f[vb])  # buffers: this runs every iteration

    def apply(p: np.ndarray) -> np.ndarray:
        out = stiff * p
        for step, on, (a, b) in ((step_h, on_h, (ha, hb)), (step_v, on_v, (va, vb))):
            np.subtract(p[b], p[a], out=step)
            step *= on
            out[b] += step
            out[a] -= step
        return out

    return f + _conjugate_gradients(apply, rhs, diagonal, settings.iterations)


def _divergence(h: np.ndarray, v: np.ndarray, shape: tuple[int, ...], *, degree: bool = False) -> np.ndarray:
    """The adjoint of the pair differences: each horizontal (``h``) and vertical (``v``) pair's value
    added at its second pixel and taken from its first; ``degree``: added at both."""
    out = np.zeros(shape, np.float32)
    for value, (a, b) in zip((h, v), _pair_slices(), strict=True):
        out[b] += value
        if degree:
            out[a] += value
        else:
            out[a] -= value
    return out


def _conjugate_gradients(
    apply: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray, diagonal: np.ndarray, iterations: int
) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for ``apply(x) = rhs`` from ``x = 0`` (in place: it runs per image)."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = r / diagonal
    p = z.copy()
    scratch = np.empty_like(rhs)
    rz = _dot(r, z)
    for _ in range(iterations):
        if rz <= 1e-12:
            break
        ap = apply(p)
        alpha = rz / max(_dot(p, ap), 1e-20)
        x += np.multiply(p, alpha, out=scratch)
        r -= np.multiply(ap, alpha, out=scratch)
        np.divide(r, diagonal, out=z)
        rz_next = _dot(r, z)
        p *= rz_next / rz
        p += z
        rz = rz_next
    return x


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """The dot product of two arrays as vectors (BLAS, no temporary)."""
    return float(np.dot(a.ravel(), b.ravel()))


def _blend_drawn(f: np.ndarray, seams: _Seams, settings: SeamBlend) -> np.ndarray:
    """Stage 2: the drawn pixels take the jump to the real pixels beside them, filled and faded (module doc)."""
    jumps = _jumps(f, seams, settings.side, drawn_pairs=True)
    if not len(jumps.first):
        return f
    layout, kept = seams.layout, seams.kept
    # The drawn end of each pair moves by the jump toward the real end: +jump if it is the first.
    first_drawn = ~kept[jumps.first[:, 0], jumps.first[:, 1]]
    at = np.where(first_drawn[:, None], jumps.first, jumps.second)
    move = np.where(first_drawn[:, None], jumps.jump, -jumps.jump) * jumps.weight[:, None]
    shift = np.zeros(f.shape, np.float32)
    weight = np.zeros(layout.shape, np.float32)
    np.add.at(shift, (at[:, 0], at[:, 1]), move)
    np.add.at(weight, (at[:, 0], at[:, 1]), jumps.weight)
    out = f.copy()
    for c in np.unique(layout[at[:, 0], at[:, 1]]):
        region = ~kept & (layout == c)
        ys, xs = np.nonzero(region)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        samples = region[box] & (weight[box] > 0)
        mean_shift = shift[box] / np.maximum(weight[box], 1e-6)[..., None]
        filled = _push_pull(mean_shift, samples.astype(np.float32))
        distance = cv2.distanceTransform((~samples).astype(np.uint8), cv2.DIST_L2, 3)
        fade = np.exp(-distance / settings.reach)[..., None]
        out[box] += np.where(region[box][..., None], filled * fade, 0.0)
    return out


def _push_pull(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fill ``values`` (H, W, C), known where ``weights`` > 0, over the whole box by a normalised image pyramid."""
    pyramid = [(values * weights[..., None], weights)]
    while min(pyramid[-1][1].shape) >= 4:
        v, w = pyramid[-1]
        size = (w.shape[1] // 2, w.shape[0] // 2)
        pyramid.append(
            (cv2.resize(v, size, interpolation=cv2.INTER_AREA), cv2.resize(w, size, interpolation=cv2.INTER_AREA))
        )
    v, w = pyramid[-1]
    for level_v, level_w in reversed(pyramid[:-1]):
        size = (level_w.shape[1], level_w.shape[0])
        up_v = cv2.resize(v, size, interpolation=cv2.INTER_LINEAR).reshape(level_v.shape)
        up_w = cv2.resize(w, size, interpolation=cv2.INTER_LINEAR).reshape(level_w.shape)
        trust = np.clip(4.0 * level_w, 0.0, 1.0)  # a level's own samples win where it has enough of them
        v = level_v + (1.0 - trust)[..., None] * up_v
        w = level_w + (1.0 - trust) * up_w
    return v / np.maximum(w, 1e-6)[..., None]


def _texture_drawn(f: np.ndarray, seams: _Seams, settings: SeamBlend) -> np.ndarray:
    """Stage 3: drawn pixels take the fine detail of their mirror images in the kept pixels of their class."""
    layout, kept, pairs = seams.layout, seams.kept, seams.pairs
    detail = _fine_detail(f, kept, settings.texture_sigma)
    drawn_detail = _fine_detail(f, ~kept, settings.texture_sigma)
    out = f.copy()
    meets = kept[pairs[:, 0], pairs[:, 1]] != kept[pairs[:, 2], pairs[:, 3]]
    for c in np.unique(layout[pairs[meets, 0], pairs[meets, 1]]):  # the classes where a drawing meets a photo
        cls = layout == c
        rows, cols = np.nonzero(cls.any(axis=1))[0], np.nonzero(cls.any(axis=0))[0]
        y0, x0 = rows[0], cols[0]
        box = (slice(y0, rows[-1] + 1), slice(x0, cols[-1] + 1))  # the class's pixels all lie in it
        real = cls[box] & kept[box]
        distance, (near_y, near_x) = ndimage.distance_transform_edt(~real, return_indices=True)
        ys, xs = np.nonzero(cls[box] & ~kept[box])
        qy, qx = near_y[ys, xs], near_x[ys, xs]
        d = distance[ys, xs]
        fold = settings.texture_fold
        depth = fold - np.abs(np.mod(d, 2 * fold) - fold)  # d up to fold, then back and forth in [0, fold]
        scale = depth / np.maximum(d, 1e-6)
        my = np.rint(qy - (ys - qy) * scale).astype(np.int64)  # the mirror image across the nearest kept pixel
        mx = np.rint(qx - (xs - qx) * scale).astype(np.int64)
        my, mx = np.clip(my, 0, real.shape[0] - 1), np.clip(mx, 0, real.shape[1] - 1)
        my, mx = near_y[my, mx], near_x[my, mx]  # where the mirror image is no kept pixel: the nearest one
        fade = np.exp(-d / settings.texture_reach)
        ys, xs, my, mx = ys + y0, xs + x0, my + y0, mx + x0
        grain = detail[my, mx] * fade[:, None]
        # Top the drawing's own detail up to gain x the photos' level, never past it: energies add.
        gain = settings.texture_gain
        wanted = gain * float((detail[box][real] ** 2).mean()) - float((drawn_detail[ys, xs] ** 2).mean())
        given = float((grain**2).mean())
        if wanted > 0 and given > 0:
            out[ys, xs] += grain * min(gain**0.5, (wanted / given) ** 0.5)
    return out


def _fine_detail(f: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``f`` minus its Gaussian blur taken over the ``mask`` pixels only; zero outside the mask."""
    weight = mask.astype(np.float32)
    blur = cv2.GaussianBlur(f * weight[..., None], (0, 0), sigma)
    blur /= np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-3)[..., None]
    return np.where(mask[..., None], f - blur, 0.0)
