"""Ordering network (paper §4.4): which of two neighbouring segments is in front.

The pairwise network looks at a window around the union of the two segments' boxes (enlarged, at the
aspect of its input): both masks, the layout one-hot and the window's position in the frame (two channels
of frame coordinates, so "lower in the frame" is visible), plus each segment's class. It scores a pair
with one trunk ``g`` and returns ``g(a, b) - g(b, a)`` as the logit of "a is in front of b", so
``P(a over b) = 1 - P(b over a)`` holds exactly.

:class:`LearnedOrderer` turns the pairwise decisions into a back-to-front paint order; :class:`ClassPrior`
is the baseline: a fixed order of classes learned from how often each class is in front in training pairs.
CamVid has no depth, so the supervision is the layout rule of ``synthesis.canvas.order_rule``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from torch import nn

from memory_bank.errors import LayoutError
from synthesis.model_directory import NetworkConfig, PretrainedNetwork, resolve
from synthesis.networks.conv_block import conv_block
from synthesis.networks.geometry import avg_pool, sample_layout, window_boxes, window_theta
from synthesis.tensors import one_hot

PRIOR_NAME = "class_prior.json"


@dataclass(frozen=True)
class OrderingConfig(NetworkConfig):
    """Constructor arguments of :class:`OrderingNet` and the window it sees; saved as ``config.json``.

    Attributes:
        num_classes: layout classes.
        input_size: (h, w) of the window.
        widths: channels of each convolution; every one has stride 2.
        hidden: width of the fully connected layer.
        window_margin: the union of the two boxes is enlarged by this factor about its centre.
        min_window: smallest window (h, w) in frame pixels.
        supersample: masks are sampled at this multiple of ``input_size`` and average-pooled.
        work_scale: masks are average-pooled by this factor before windows are sampled.
        adjacency: two segments are a pair when they overlap or lie within this many pixels.
    """

    num_classes: int = 11
    input_size: tuple[int, int] = (32, 48)
    widths: tuple[int, ...] = (16, 32, 48, 64)
    hidden: int = 128
    window_margin: float = 1.25
    min_window: tuple[int, int] = (48, 72)
    supersample: int = 2
    work_scale: int = 2
    adjacency: int = 2

    def __post_init__(self) -> None:
        for name in ("input_size", "widths", "min_window"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.widths:
            raise ValueError("widths needs at least one convolution")
        factor = 2 ** len(self.widths)
        if any(s % factor for s in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be divisible by {factor} for widths {self.widths}")
        if self.window_margin < 1.0 or self.supersample < 1 or self.work_scale < 1 or self.adjacency < 0:
            raise ValueError("window_margin >= 1, supersample >= 1, work_scale >= 1 and adjacency >= 0 are required")


class OrderingNet(PretrainedNetwork, config_class=OrderingConfig, kind="ordering network"):
    """Pairwise front/back classifier.

    ``forward(mask_a, mask_b, layout, coords, class_a, class_b)`` with (B, 1, h, w) mask coverages,
    (B, K, h, w) layout one-hot, (B, 2, h, w) frame coordinates of the window's pixels (normalised, y then x)
    and (B,) int64 classes returns (B,) logits of "a is in front of b"; swapping a and b negates them.
    The window arguments do not change the layers: they are how pairs are windowed, kept in ``config``.
    """

    def __init__(
        self,
        num_classes: int = 11,
        input_size: tuple[int, int] = OrderingConfig.input_size,
        widths: tuple[int, ...] = OrderingConfig.widths,
        hidden: int = OrderingConfig.hidden,
        window_margin: float = OrderingConfig.window_margin,
        min_window: tuple[int, int] = OrderingConfig.min_window,
        supersample: int = OrderingConfig.supersample,
        work_scale: int = OrderingConfig.work_scale,
        adjacency: int = OrderingConfig.adjacency,
    ) -> None:
        super().__init__()
        self.config = OrderingConfig(
            num_classes, input_size, widths, hidden, window_margin, min_window, supersample, work_scale, adjacency
        )
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        chans = (2 + num_classes + 2, *widths)
        self.features = nn.Sequential(*[conv_block(a, b, 2) for a, b in itertools.pairwise(chans)])
        factor = 2 ** len(widths)
        flat = widths[-1] * (input_size[0] // factor) * (input_size[1] // factor)
        self.head = nn.Sequential(
            nn.Linear(flat + 2 * num_classes, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1)
        )

    def score(self, inputs: PairInputs) -> torch.Tensor:
        """The one-sided trunk ``g(a, b)`` of a batch of pairs: (B,). ``forward`` is ``g(a, b) - g(b, a)``."""
        x = torch.cat([inputs.mask_a, inputs.mask_b, inputs.layout, inputs.coords], dim=1)
        return self._trunk(x, inputs.class_a, inputs.class_b)

    def _trunk(self, x: torch.Tensor, class_a: torch.Tensor, class_b: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        k = self.num_classes
        x = torch.cat([x, one_hot(class_a, k, dtype=x.dtype), one_hot(class_b, k, dtype=x.dtype)], dim=1)
        return self.head(x).squeeze(1)

    def forward(
        self,
        mask_a: torch.Tensor,
        mask_b: torch.Tensor,
        layout: torch.Tensor,
        coords: torch.Tensor,
        class_a: torch.Tensor,
        class_b: torch.Tensor,
    ) -> torch.Tensor:
        if tuple(mask_a.shape[-2:]) != self.input_size:
            raise ValueError(f"inputs must be {self.input_size}, got {tuple(mask_a.shape[-2:])}")
        # One batched trunk pass over both orientations, then the antisymmetric difference. The (2B, C, h, w)
        # input is filled in place: the same tensor as concatenating, without the intermediate copies.
        b, k = mask_a.shape[0], layout.shape[1]
        x = layout.new_empty(2 * b, 2 + k + coords.shape[1], *self.input_size)
        x[:b, 0:1], x[:b, 1:2], x[b:, 0:1], x[b:, 1:2] = mask_a, mask_b, mask_b, mask_a
        x[:b, 2 : 2 + k], x[b:, 2 : 2 + k] = layout, layout
        x[:b, 2 + k :], x[b:, 2 + k :] = coords, coords
        both = self._trunk(x, torch.cat([class_a, class_b]), torch.cat([class_b, class_a]))
        ab, ba = both.chunk(2)
        return ab - ba


# ---------------------------------------------------------------- windows


def window_coords(windows: torch.Tensor, frame: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B, 2, h, w) frame coordinates (normalised to [-1, 1], y then x) of the window pixel centres."""
    fh, fw = frame
    h, w = size
    cy, cx, wh, ww = (v.view(-1, 1, 1) for v in windows.unbind(1))
    ry = ((torch.arange(h, dtype=windows.dtype) + 0.5) / h - 0.5).view(1, h, 1)
    rx = ((torch.arange(w, dtype=windows.dtype) + 0.5) / w - 0.5).view(1, 1, w)
    y = (2 * (cy + ry * wh) / fh - 1).expand(-1, h, w)
    x = (2 * (cx + rx * ww) / fw - 1).expand(-1, h, w)
    return torch.stack([y, x], dim=1)


@dataclass
class PairInputs:
    """Network inputs of a batch of pairs, sampled on their windows."""

    mask_a: torch.Tensor  # (B, 1, h, w)
    mask_b: torch.Tensor
    layout: torch.Tensor  # (B, K, h, w)
    coords: torch.Tensor  # (B, 2, h, w)
    class_a: torch.Tensor  # (B,) int64
    class_b: torch.Tensor

    def as_args(self) -> tuple[torch.Tensor, ...]:
        return self.mask_a, self.mask_b, self.layout, self.coords, self.class_a, self.class_b

    def flipped(self) -> PairInputs:
        """The mirror image (left-right): the layout rule is symmetric under it, so labels stay."""
        coords = self.coords.flip(-1) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
        return PairInputs(
            self.mask_a.flip(-1), self.mask_b.flip(-1), self.layout.flip(-1), coords, self.class_a, self.class_b
        )


def sample_pairs(
    labels: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor,
    pairs: torch.Tensor,
    frame: tuple[int, int],
    config: OrderingConfig,
) -> PairInputs:
    """Inputs for ``pairs`` (P, 2) of the segments of one frame.

    ``labels`` (h, w) and ``masks`` (n, 1, h, w) coverages may be reduced (``work_scale``); ``boxes`` (n, 4) are
    in full-resolution pixels and ``frame`` is the full resolution.
    """
    a, b = pairs[:, 0], pairs[:, 1]
    windows = window_boxes(boxes[a], boxes[b], config)
    g = window_theta(windows, frame)
    size, ss = config.input_size, config.supersample
    lay = sample_layout(labels.unsqueeze(0), g, size, config.num_classes)
    # One grid for both sides; each mask is sampled for all its pairs at once, from a broadcast view of it
    # (no per-pair copy of frame-sized masks).
    grid = F.affine_grid(g, [g.shape[0], 1, size[0] * ss, size[1] * ss], align_corners=False)
    ma, mb = _sample_by_mask(masks, torch.cat([a, b]), grid, ss).chunk(2)
    return PairInputs(ma, mb, lay, window_coords(windows, frame, size), classes[a].long(), classes[b].long())


def _sample_by_mask(masks: torch.Tensor, index: torch.Tensor, grid: torch.Tensor, supersample: int) -> torch.Tensor:
    """``masks[index]`` sampled on ``grid[j % P]`` for row ``j`` (``grid`` is (P, h, w, 2)), then average-pooled.

    The same numbers as ``sample(masks[index], ...)``: each mask is sampled once for all the rows that use
    it, from a broadcast view, so no frame-sized mask is copied per pair.
    """
    n = grid.shape[0]
    out = torch.empty(index.shape[0], masks.shape[1], grid.shape[1], grid.shape[2])
    order = torch.argsort(index, stable=True)
    values, counts = torch.unique_consecutive(index[order], return_counts=True)
    for i, rows in zip(values.tolist(), order.split(counts.tolist()), strict=True):
        src = masks[i : i + 1].expand(rows.numel(), -1, -1, -1)
        out[rows] = F.grid_sample(src, grid[rows % n], mode="bilinear", padding_mode="zeros", align_corners=False)
    return avg_pool(out, supersample)


def reduce_masks(masks: np.ndarray | torch.Tensor, scale: int) -> torch.Tensor:
    """(n, H, W) bool masks as (n, 1, H/scale, W/scale) float coverage."""
    m = torch.as_tensor(np.asarray(masks)).unsqueeze(1).float()
    return F.avg_pool2d(m, scale, ceil_mode=True) if scale > 1 else m


def reduce_boxed(masks: Sequence[np.ndarray], boxes: np.ndarray, scale: int) -> torch.Tensor:
    """:func:`reduce_masks` of (H, W) bool masks whose pixels lie inside ``boxes`` (n, 4), pooling only the boxes.

    Each box is grown to ``scale``-aligned edges (or the frame's), so every pooled cell sees what it sees in the
    full frame; empty masks (box -1) stay zero.
    """
    if not len(masks):
        raise ValueError("no masks to reduce")
    h, w = np.shape(masks[0])
    out = torch.zeros(len(masks), 1, -(-h // scale), -(-w // scale))
    for i, m in enumerate(masks):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        if y0 < 0:
            continue
        y0, x0 = y0 - y0 % scale, x0 - x0 % scale
        y1, x1 = min(h, -(-y1 // scale) * scale), min(w, -(-x1 // scale) * scale)
        crop = torch.from_numpy(np.ascontiguousarray(m[y0:y1, x0:x1]))[None, None].float()
        pooled = avg_pool(crop, scale)
        out[i, :, y0 // scale : -(-y1 // scale), x0 // scale : -(-x1 // scale)] = pooled[0]
    return out


def reduce_components(components: np.ndarray, count: int, scale: int) -> torch.Tensor:
    """(count, 1, H/scale, W/scale) float coverage of the segments ``1..count`` of an (H, W) component map.

    The same as :func:`reduce_masks` of ``[components == i + 1 for i in range(count)]``, without making the
    full-resolution masks: one-hot counts over the ``scale x scale`` offsets.
    """
    comp = np.asarray(components).astype(np.int64)
    h, w = comp.shape
    ph, pw = -h % scale, -w % scale
    if ph or pw:  # ceil_mode pooling: pad with "no segment" and count only real pixels
        comp = np.pad(comp, ((0, ph), (0, pw)), constant_values=0)
    eye = np.eye(count + 1, dtype=np.uint8)[:, 1:]
    acc = np.zeros((comp.shape[0] // scale, comp.shape[1] // scale, count), np.uint16)
    for dy in range(scale):
        for dx in range(scale):
            acc += eye[np.clip(comp[dy::scale, dx::scale], 0, count)]
    # Pixels of the frame in each cell (edge cells are partial), as avg_pool2d(ceil_mode=True) divides.
    real = F.avg_pool2d(F.pad(torch.ones(1, 1, h, w), (0, pw, 0, ph)), scale)[0, 0] * scale * scale
    cover = torch.from_numpy(acc.astype(np.float32)).permute(2, 0, 1) / real
    return cover.unsqueeze(1).contiguous()


def boxes_of(masks: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 4) ``[y0, x0, y1, x1)`` boxes of bool masks (all -1 for an empty mask)."""
    out = np.full((len(masks), 4), -1, np.int64)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(m[rows[0] : rows[-1] + 1].any(axis=0))  # only the rows that hold the mask
            out[i] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return out


def neighbour_pairs(
    masks: Sequence[np.ndarray], distance: int, boxes: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of masks that overlap or come within ``distance`` pixels (8-neighbourhood).

    ``boxes`` are the masks' :func:`boxes_of`, if already known.
    """
    boxes = boxes_of(masks) if boxes is None else boxes
    out: list[tuple[int, int]] = []
    kernel = np.ones((2 * distance + 1, 2 * distance + 1), np.uint8)
    frame = np.shape(masks[0]) if len(masks) else (0, 0)
    for i in range(len(masks)):
        if boxes[i, 0] < 0:
            continue
        y0, x0, y1, x1 = boxes[i]
        # Dilate i inside its box grown by ``distance``, and look for j there.
        gy0, gx0 = max(0, y0 - distance), max(0, x0 - distance)
        gy1, gx1 = min(frame[0], y1 + distance), min(frame[1], x1 + distance)
        grown = None
        for j in range(i + 1, len(masks)):
            by = boxes[j]
            if by[0] < 0 or by[0] >= gy1 or by[2] <= gy0 or by[1] >= gx1 or by[3] <= gx0:
                continue
            if grown is None:
                crop = np.ascontiguousarray(masks[i][gy0:gy1, gx0:gx1]).astype(np.uint8)
                grown = cv2.dilate(crop, kernel).astype(bool) if distance else crop.astype(bool)
            if (grown & masks[j][gy0:gy1, gx0:gx1]).any():
                out.append((i, j))
    return out


# ---------------------------------------------------------------- orderers


def order_from_pairs(n: int, decisions: dict[tuple[int, int], float]) -> list[int]:
    """Back-to-front order of ``n`` items from pairwise ``P(i in front of j)`` for some pairs ``(i, j)``.

    Greedy from the back: repeatedly take the remaining item that is in front of the fewest remaining
    neighbours (P > 0.5), then with the least total P of being in front of them, then the lowest index.
    When the decisions have no cycle every one of them is respected (the back-most item of an acyclic
    relation is in front of nobody); a cycle is broken where the evidence is weakest.
    """
    front: dict[int, dict[int, float]] = {i: {} for i in range(n)}  # front[i][j] = P(i in front of j)
    for (i, j), p in decisions.items():
        front[i][j] = p
        front[j][i] = 1.0 - p
    remaining = set(range(n))
    order: list[int] = []
    while remaining:

        def key(i: int) -> tuple[int, float, int]:
            ps = [p for j, p in front[i].items() if j in remaining]
            return sum(p > 0.5 for p in ps), sum(ps), i

        pick = min(remaining, key=key)
        order.append(pick)
        remaining.remove(pick)
    return order


def _check_order_inputs(layout: np.ndarray, masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> None:
    if layout.ndim != 2:
        raise LayoutError(f"layout must be (H, W), got shape {layout.shape}")
    if len(masks) != len(class_ids):
        raise ValueError(f"{len(masks)} masks but {len(class_ids)} class ids")
    for m in masks:
        if np.shape(m) != layout.shape:
            raise ValueError(f"masks must match the layout's {layout.shape}, got {np.shape(m)}")


class LearnedOrderer:
    """Orderer (``synthesis.canvas.protocols.Orderer``) from the pairwise network.

    Neighbouring segments (overlapping or within ``config.adjacency`` px) are scored in pairs and the
    decisions aggregated by :func:`order_from_pairs`; segments with no neighbour have nothing to hide and
    keep their place in that order. Per mask, the box and the reduced coverage are computed once (on the
    box); then ``batch_size`` pairs go through the network at a time (all of a layout's, as a rule).
    """

    def __init__(self, model: OrderingNet, config: OrderingConfig, batch_size: int = 512) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.config = config
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LearnedOrderer:
        """Load the pairwise network from a model directory."""
        model = OrderingNet.from_pretrained(directory)
        return cls(model, model.config)

    @torch.no_grad()
    def pair_probabilities(
        self,
        layout: np.ndarray,
        masks: Sequence[np.ndarray],
        class_ids: Sequence[int],
        pairs: Sequence[tuple[int, int]],
        boxes: np.ndarray | None = None,
    ) -> np.ndarray:
        """(P,) ``P(a in front of b)`` for each ``(a, b)`` in ``pairs``; ``boxes`` are the masks' :func:`boxes_of`."""
        if not pairs:
            return np.zeros(0, np.float32)
        k = self.config.work_scale
        masks = [np.asarray(m, bool) for m in masks]
        boxes = boxes_of(masks) if boxes is None else boxes
        reduced = reduce_boxed(masks, boxes, k)
        labels = torch.from_numpy(np.ascontiguousarray(layout[::k, ::k]))
        box_t = torch.from_numpy(boxes).float()
        classes = torch.as_tensor(np.asarray(class_ids, np.int64))
        pair_t = torch.as_tensor(np.asarray(pairs, np.int64)).view(-1, 2)
        out = []
        for s in range(0, pair_t.shape[0], self.batch_size):
            inputs = sample_pairs(
                labels, reduced, box_t, classes, pair_t[s : s + self.batch_size], layout.shape, self.config
            )
            out.append(torch.sigmoid(self.model(*inputs.as_args())))
        return torch.cat(out).numpy()

    def __call__(self, layout: np.ndarray, masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> list[int]:
        """Back-to-front indices of ``masks`` (paint in this order)."""
        _check_order_inputs(layout, masks, class_ids)
        if not masks:
            return []
        masks = [np.asarray(m, bool) for m in masks]
        boxes = boxes_of(masks)
        pairs = neighbour_pairs(masks, self.config.adjacency, boxes)
        probs = self.pair_probabilities(layout, masks, class_ids, pairs, boxes)
        return order_from_pairs(len(masks), dict(zip(pairs, probs.tolist(), strict=True)))


@dataclass(frozen=True)
class ClassPrior:
    """Baseline: a fixed order of classes, from how often each is in front in training pairs.

    ``score[c]`` = (times c was in front) / (pairs of c with another class); a higher score is nearer.
    Two segments of one class are a coin toss for it (``predict`` returns 0.5).
    """

    score: tuple[float, ...]

    @classmethod
    def fit(cls, class_a: np.ndarray, class_b: np.ndarray, a_in_front: np.ndarray, num_classes: int) -> ClassPrior:
        """Count wins over labelled pairs of different classes (a class never seen scores 0.5)."""
        a, b, y = np.asarray(class_a), np.asarray(class_b), np.asarray(a_in_front, bool)
        diff = a != b
        winner = np.where(y, a, b)[diff]
        loser = np.where(y, b, a)[diff]
        wins = np.bincount(winner, minlength=num_classes).astype(np.float64)
        games = wins + np.bincount(loser, minlength=num_classes)
        return cls(tuple(float(v) for v in np.where(games > 0, wins / np.maximum(games, 1), 0.5)))

    def predict(self, class_a: np.ndarray, class_b: np.ndarray) -> np.ndarray:
        """P(a in front of b): 1, 0, or 0.5 for equal scores."""
        s = np.asarray(self.score)
        sa, sb = s[np.asarray(class_a)], s[np.asarray(class_b)]
        return np.where(sa > sb, 1.0, np.where(sa < sb, 0.0, 0.5))

    def __call__(self, layout: np.ndarray, masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> list[int]:
        """Orderer: back to front by class score (stable: equal scores keep their input order)."""
        _check_order_inputs(layout, masks, class_ids)
        return sorted(range(len(masks)), key=lambda i: self.score[int(class_ids[i])])

    def to_json(self, class_names: Sequence[str] | None = None) -> str:
        """The text of ``class_prior.json``: the scores, and the order of the named classes back to front."""
        d: dict[str, Any] = {"score": list(self.score)}
        if class_names is not None:
            d["order_back_to_front"] = [class_names[i] for i in np.argsort(self.score, kind="stable")]
        return json.dumps(d, indent=2) + "\n"

    def save(self, directory: str | Path, class_names: Sequence[str] | None = None) -> Path:
        """Write ``class_prior.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / PRIOR_NAME).write_text(self.to_json(class_names))
        return out / PRIOR_NAME

    @classmethod
    def load(cls, directory: str | Path) -> ClassPrior:
        """Read ``class_prior.json`` from a model directory (or a run directory's newest checkpoint)."""
        return cls(tuple(json.loads((resolve(directory) / PRIOR_NAME).read_text())["score"]))
