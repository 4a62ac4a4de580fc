"""Large code banks for the retrieval benchmark, jittered from a real bank's segments.

    .venv/bin/python benchmarks/jitter.py --bank /tmp/camvid-train --n 10000 100000 1000000

A bank of ``n`` segments is made from the source bank's label maps. Copy ``k`` of the stream
is source image ``k % N``: the first ``N`` copies are the real label maps (so a bank of at
least the source's size starts with exactly the real segments), later ones the same maps
under a random similarity jitter of the *whole frame*: a shift of up to ±15% of each
dimension and an isotropic scaling in 0.8..1.25 about a random point, nearest-neighbour
resampled, with pixels from outside the frame unlabelled (255). Each map then goes through
the standard :func:`~memory_bank.extract_segments` and :func:`~memory_bank.encode_segments`
with the bank's own config, so every segment moves with its context and is coded exactly
like a real one. Copies are made until ``n`` segments exist, and the last one is cut short.
Everything is deterministic from ``seed`` (the jitter of copy ``k`` depends on
``(seed, k)`` only), whatever the number of workers.

Results are cached as a directory of ``.npy`` files (loaded with ``mmap_mode="r"``) under
``benchmarks/.cache``, keyed by the source bank version, ``n``, the seed, the segment config
and the jitter ranges.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from memory_bank import IGNORE, Bank, SegmentConfig, encode_segments, extract_segments, open_bank
from memory_bank.codes import coarse_bits, code_bytes, fine_bits
from retrieval_service.index import SegmentIndex

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
FORMAT = 1  # bump when the generation method changes, to orphan old caches
MAX_SHIFT = 0.15  # of each dimension
SCALE_RANGE = (0.8, 1.25)  # drawn log-uniformly
BATCH = 8  # label maps per pool task

ARRAYS = (
    "class_id",
    "image_id",
    "source_image",
    "area",
    "bbox",
    "mask",
    "context",
    "coarse",
    "mask_popcount",
    "context_popcount",
)


@dataclass(frozen=True)
class CodeBank:
    """Codes of ``S`` segments, enough for the retrieval engine (no pixels, no tables).

    Attributes:
        class_id: (S,) uint8.
        image_id: (S,) int32, the (jittered) image each segment was cut from, 0.. in stream order.
        source_image: (S,) int32, the source bank image that image was made from.
        area: (S,) int32 pixels.
        bbox: (S, 4) int32 ``[y0, x0, y1, x1)``.
        mask: (S, fine_bytes) uint8, as :attr:`memory_bank.SegmentCodes.mask`.
        context: (S, cells) uint8, as :attr:`memory_bank.SegmentCodes.context`.
        coarse: (S, coarse_bytes) uint8, as :attr:`memory_bank.SegmentCodes.coarse`.
        mask_popcount, context_popcount: (S,) int32.
        config, resolution, num_classes: those of the source bank.
    """

    class_id: np.ndarray
    image_id: np.ndarray
    source_image: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    mask: np.ndarray
    context: np.ndarray
    coarse: np.ndarray
    mask_popcount: np.ndarray
    context_popcount: np.ndarray
    config: SegmentConfig
    resolution: tuple[int, int]
    num_classes: int

    def __len__(self) -> int:
        return int(self.class_id.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    def segment_index(self, version: str = "") -> SegmentIndex:
        """The retrieval engine's index over these codes (segment ids = row numbers)."""
        return SegmentIndex.from_arrays(
            class_id=self.class_id,
            image_id=self.image_id,
            mask=self.mask,
            context=self.context,
            coarse=self.coarse,
            config=self.config,
            resolution=self.resolution,
            num_classes=self.num_classes,
            version=version,
        )


def _layout(n: int, config: SegmentConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of a :class:`CodeBank` of ``n`` segments."""
    cells = config.fine_grid[0] * config.fine_grid[1]
    u8, i32 = np.dtype(np.uint8), np.dtype(np.int32)
    return {
        "class_id": ((n,), u8),
        "image_id": ((n,), i32),
        "source_image": ((n,), i32),
        "area": ((n,), i32),
        "bbox": ((n, 4), i32),
        "mask": ((n, code_bytes(fine_bits(config))), u8),
        "context": ((n, cells), u8),
        "coarse": ((n, code_bytes(coarse_bits(config))), u8),
        "mask_popcount": ((n,), i32),
        "context_popcount": ((n,), i32),
    }


# Jitter


@dataclass(frozen=True)
class Jitter:
    """``x -> centre + scale * (x - centre) + shift`` in continuous pixel coordinates (y, x)."""

    scale: float
    centre: tuple[float, float]
    shift: tuple[float, float]


def jitter_for(seed: int, copy: int, num_source: int, frame: tuple[int, int]) -> Jitter | None:
    """The jitter of copy ``copy`` of the stream; None for the first ``num_source`` (real) copies."""
    if copy < num_source:
        return None
    rng = np.random.default_rng([seed, copy])
    h, w = frame
    scale = float(np.exp(rng.uniform(np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1]))))
    centre = (float(rng.uniform(0, h)), float(rng.uniform(0, w)))
    shift = (float(rng.uniform(-MAX_SHIFT, MAX_SHIFT) * h), float(rng.uniform(-MAX_SHIFT, MAX_SHIFT) * w))
    return Jitter(scale, centre, shift)


def _source_index(size: int, scale: float, centre: float, shift: float) -> np.ndarray:
    """Source row (or column) sampled by each output row: inverse map of the pixel centres."""
    dst = np.arange(size, dtype=np.float64) + 0.5
    return np.floor(centre + (dst - centre - shift) / scale).astype(np.int64)


def apply_jitter(label: np.ndarray, jitter: Jitter | None) -> np.ndarray:
    """Resample a whole (H, W) label map under ``jitter`` (nearest neighbour; outside = 255)."""
    if jitter is None:
        return label
    h, w = label.shape
    rows = _source_index(h, jitter.scale, jitter.centre[0], jitter.shift[0])
    cols = _source_index(w, jitter.scale, jitter.centre[1], jitter.shift[1])
    in_r, in_c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out = np.full((h, w), IGNORE, np.uint8)
    # Scaling is isotropic and unrotated, so the map is separable: one gather of rows x cols.
    out[np.ix_(in_r, in_c)] = label[np.ix_(rows[in_r], cols[in_c])]
    return out


# Generation

_LABELS: np.ndarray | None = None  # (N, H, W) source label maps, set in each worker


def _init_worker(labels: np.ndarray) -> None:
    global _LABELS
    _LABELS = labels


@dataclass(frozen=True)
class _CodeTask:
    """Picklable ``copies -> codes of all their segments`` for the process pool."""

    seed: int
    num_classes: int
    config: SegmentConfig

    def __call__(self, copies: range) -> dict[str, np.ndarray]:
        assert _LABELS is not None
        num_source, h, w = _LABELS.shape
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
        counts = []
        for copy in copies:
            label = apply_jitter(_LABELS[copy % num_source], jitter_for(self.seed, copy, num_source, (h, w)))
            segments = extract_segments(label, self.num_classes, self.config)
            codes = encode_segments(label, segments, self.num_classes, self.config)
            counts.append(len(segments))
            parts["class_id"].append(segments.class_id)
            parts["area"].append(segments.area)
            parts["bbox"].append(segments.bbox)
            for name in ("mask", "context", "coarse", "mask_popcount", "context_popcount"):
                parts[name].append(getattr(codes, name))
        count = np.asarray(counts, np.int64)
        image_id = np.repeat(np.asarray(copies, np.int32), count)
        parts["image_id"] = [image_id]
        parts["source_image"] = [image_id % np.int32(num_source)]
        return {name: np.concatenate(p) for name, p in parts.items()}


def _results(task: _CodeTask, labels: np.ndarray, workers: int) -> Iterator[dict[str, np.ndarray]]:
    """Codes of copies 0, 1, 2, ... in batches, in stream order, forever (close it to stop)."""
    batches = (range(i * BATCH, (i + 1) * BATCH) for i in itertools.count())
    if workers <= 1:
        _init_worker(labels)
        try:
            yield from map(task, batches)
        finally:
            _init_worker(None)  # type: ignore[arg-type]
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(labels,)) as pool:
        pending = deque(pool.submit(task, next(batches)) for _ in range(4 * workers))
        try:
            while True:
                yield pending.popleft().result()
                pending.append(pool.submit(task, next(batches)))
        finally:
            pool.shutdown(cancel_futures=True)


def _generate(
    bank: Bank, n: int, out: dict[str, np.ndarray], *, seed: int, workers: int, progress: bool
) -> tuple[int, int]:
    """Fill the preallocated ``out`` arrays with the first ``n`` segments of the stream.

    Returns (images used, images the source bank has).
    """
    if n > 0 and bank.num_segments == 0:
        raise ValueError(f"source bank {bank.version} has no segments to jitter")
    labels = np.asarray(bank.labels[:])  # N x H x W bytes (63 MB for CamVid train)
    task = _CodeTask(seed, len(bank.classes), bank.config)
    filled = images = 0
    if n == 0:
        return 0, len(labels)
    with tqdm(total=n, desc=f"jittering {n:,} segments", unit="seg", unit_scale=True, disable=not progress) as bar:
        results = _results(task, labels, workers)
        try:
            for part in results:
                m = min(len(part["class_id"]), n - filled)
                for name in ARRAYS:
                    out[name][filled : filled + m] = part[name][:m]
                filled += m
                bar.update(m)
                if filled == n:
                    images = int(out["image_id"][n - 1]) + 1
                    break
        finally:
            results.close()
    return images, len(labels)


# Cache


def cache_key(bank: Bank, n: int, seed: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "source_bank": bank.version,
        "n_segments": int(n),
        "seed": int(seed),
        "resolution": list(bank.resolution),
        "config": bank.config.to_dict(),
        "num_classes": len(bank.classes),
        "max_shift": MAX_SHIFT,
        "scale_range": list(SCALE_RANGE),
    }


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"jitter-{key['source_bank']}-n{key['n_segments']}-seed{key['seed']}-{digest}"


def _load(path: Path, key: dict[str, Any]) -> CodeBank | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    return CodeBank(
        **arrays,
        config=SegmentConfig.from_dict(key["config"]),
        resolution=(int(key["resolution"][0]), int(key["resolution"][1])),
        num_classes=int(key["num_classes"]),
    )


def jittered_bank(
    bank_path: str | Path | Bank,
    n_segments: int,
    *,
    seed: int = 0,
    workers: int | None = None,
    cache_dir: Path | None = CACHE_DIR,
    progress: bool = True,
) -> CodeBank:
    """A code bank of exactly ``n_segments`` segments jittered from the bank at ``bank_path``.

    See the module docstring for the method. ``workers`` defaults to all cores (1 runs in this
    process). With ``cache_dir`` the result is written there (as memory-mapped ``.npy`` files,
    filled in place) and later calls load it in seconds; with None it is built in memory.
    """
    if n_segments < 0:
        raise ValueError(f"n_segments must be >= 0, got {n_segments}")
    bank = bank_path if isinstance(bank_path, Bank) else open_bank(bank_path)
    workers = workers or os.cpu_count() or 1
    key = cache_key(bank, n_segments, seed)
    layout = _layout(n_segments, bank.config)
    meta_args = {"config": bank.config, "resolution": tuple(bank.resolution), "num_classes": len(bank.classes)}
    if cache_dir is None:
        out = {name: np.empty(shape, dtype) for name, (shape, dtype) in layout.items()}
        _generate(bank, n_segments, out, seed=seed, workers=workers, progress=progress)
        return CodeBank(**out, **meta_args)

    final = cache_path(Path(cache_dir), key)
    cached = _load(final, key)
    if cached is not None:
        return cached
    stage = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    stage.mkdir(parents=True)
    try:
        out = {
            name: np.lib.format.open_memmap(stage / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in layout.items()
        }
        start = time.perf_counter()
        images, num_source = _generate(bank, n_segments, out, seed=seed, workers=workers, progress=progress)
        for a in out.values():
            a.flush()
        del out
        meta = {
            "key": key,
            "images": images,
            "source_images": num_source,
            "source_path": str(bank.path),
            "seconds": round(time.perf_counter() - start, 3),
            "workers": workers,
        }
        (stage / "meta.json").write_text(json.dumps(meta, indent=2))
        if final.exists():  # an equal result from a concurrent run; drop ours
            shutil.rmtree(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    loaded = _load(final, key)
    assert loaded is not None
    return loaded


def code_bank_from_bank(bank: str | Path | Bank) -> CodeBank:
    """The real bank's own segments and codes (no jitter), as a :class:`CodeBank`."""
    bank = bank if isinstance(bank, Bank) else open_bank(bank)
    image_id = bank.column("image_id").astype(np.int32)
    layout = _layout(bank.num_segments, bank.config)
    arrays = {
        "class_id": bank.column("class_id").astype(np.uint8),
        "image_id": image_id,
        "source_image": image_id.copy(),
        "area": bank.column("area").astype(np.int32),
        "bbox": bank.column("bbox").astype(np.int32).reshape(-1, 4),
        "mask": np.asarray(bank.codes["mask"][:], np.uint8),
        "context": bank.context_rows(),
        "coarse": np.asarray(bank.codes["coarse"][:], np.uint8),
        "mask_popcount": bank.column("mask_popcount").astype(np.int32),
        "context_popcount": bank.column("context_popcount").astype(np.int32),
    }
    for name, (shape, _) in layout.items():
        arrays[name] = arrays[name].reshape(shape)
    return CodeBank(**arrays, config=bank.config, resolution=tuple(bank.resolution), num_classes=len(bank.classes))


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=Path, required=True, help="source bank (root or version directory)")
    parser.add_argument("--n", type=int, nargs="+", required=True, help="bank size(s) in segments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args()

    bank = open_bank(args.bank)
    print(f"source: {bank}")
    for n in args.n:
        start = time.perf_counter()
        codes = jittered_bank(bank, n, seed=args.seed, workers=args.workers, cache_dir=args.cache_dir)
        seconds = time.perf_counter() - start
        path = cache_path(args.cache_dir, cache_key(bank, n, args.seed))
        meta = json.loads((path / "meta.json").read_text())
        print(
            f"n={n:,}: {seconds:.1f} s (generation took {meta['seconds']:.1f} s with {meta['workers']} workers); "
            f"{meta['images']:,} images from {meta['source_images']} sources; "
            f"{codes.nbytes / 1e9:.2f} GB of arrays, {_du(path) / 1e9:.2f} GB on disk at {path}"
        )


if __name__ == "__main__":
    main()
