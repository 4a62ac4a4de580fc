"""How a bank version is cut into shards: whole classes, and row ranges of the large ones.

A *part* is a contiguous range of one class's rows in the engine's shard order (ascending mask
popcount, ties by segment id: :func:`memory_bank.candidate_index.shard_order`); a class no larger
than ``max_part`` is one part, a larger one is cut into near-equal ranges. Parts go to shards
largest first, each to the shard holding the fewest segments (LPT), so shards hold about
``total / num_shards`` segments each. The plan depends only on the class sizes and the two
numbers, so every process that makes it gets the same one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardPart:
    """Rows ``start..stop-1`` of class ``class_id`` (``class_size`` rows in all), in shard order."""

    class_id: int
    start: int
    stop: int
    class_size: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.class_size


@dataclass(frozen=True)
class ShardSpec:
    """What one shard holds."""

    shard_id: int
    num_shards: int
    parts: tuple[ShardPart, ...]

    @property
    def name(self) -> str:
        return f"shard {self.shard_id} of {self.num_shards}"

    @property
    def segments(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted({p.class_id for p in self.parts}))

    def describe(self) -> str:
        """``shard 1 of 4 (classes 3, 5 part)``: for error messages."""
        whole = {p.class_id for p in self.parts if p.whole}
        names = [f"{c}" if c in whole else f"{c} part" for c in self.class_ids]
        return f"{self.name} (classes {', '.join(names) or 'none'})"


@dataclass(frozen=True)
class ShardPlan:
    """Every shard's parts, and the class sizes they were cut from."""

    shards: tuple[ShardSpec, ...]
    class_sizes: Mapping[int, int]

    def holders(self, class_id: int) -> list[int]:
        """Ids of the shards holding rows of ``class_id`` (ascending)."""
        return [s.shard_id for s in self.shards if any(p.class_id == class_id for p in s.parts)]

    def split(self, class_id: int) -> bool:
        """Whether ``class_id`` is spread over more than one shard."""
        return len(self.holders(class_id)) > 1


def plan_shards(class_sizes: Mapping[int, int], num_shards: int, max_part: int | None = None) -> ShardPlan:
    """Cut classes of ``class_sizes`` (class id -> segments) into parts and place them on ``num_shards`` shards.

    ``max_part`` is the most rows a part may have (default: an even share, ``ceil(total / num_shards)``,
    so that only a class too large for one shard's share is cut). A shard may get no part when
    there are fewer parts than shards.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    sizes = {int(c): int(n) for c, n in class_sizes.items() if n > 0}
    total = sum(sizes.values())
    limit = max_part if max_part is not None else max(1, math.ceil(total / num_shards))
    if limit < 1:
        raise ValueError(f"max_part must be at least 1, got {limit}")
    parts = []
    for c in sorted(sizes):
        n = sizes[c]
        pieces = math.ceil(n / limit)
        bounds = [round(i * n / pieces) for i in range(pieces + 1)]
        parts += [ShardPart(c, a, b, n) for a, b in itertools.pairwise(bounds)]
    load = [0] * num_shards
    placed: list[list[ShardPart]] = [[] for _ in range(num_shards)]
    for part in sorted(parts, key=lambda p: (-p.size, p.class_id, p.start)):
        s = min(range(num_shards), key=lambda i: (load[i], i))
        placed[s].append(part)
        load[s] += part.size
    shards = tuple(
        ShardSpec(i, num_shards, tuple(sorted(ps, key=lambda p: (p.class_id, p.start)))) for i, ps in enumerate(placed)
    )
    return ShardPlan(shards, dict(sizes))
