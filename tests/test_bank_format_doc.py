"""docs/bank-format.md is accurate: a bank read with json/zarr/pyarrow/numpy alone, following the
doc, agrees with the library, and the doc's Python example runs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from memory_bank import SegmentConfig, encode_segments, extract_segments, open_bank
from memory_bank.codes import mask_cells

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bank-format.md"
IGNORE = 255
N_SEGMENTS = 60  # segments compared one by one with Bank.segment


@pytest.fixture(scope="module")
def bank_root(val_bank_path: Path) -> Path:
    """The shared session bank of the sample's val images (conftest), read only."""
    return val_bank_path


# --- A reader written from the doc alone: json, zarr, pyarrow and numpy only. ---


class DocBank:
    def __init__(self, root: Path) -> None:
        version = (root / "CURRENT").read_text().strip()
        self.dir = root / "versions" / version
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        assert self.manifest["format_version"] == 2
        assert self.manifest["bank_version"] == version
        self.segments = pq.read_table(self.dir / "segments.parquet").to_pydict()
        self.images = pq.read_table(self.dir / "images.parquet").to_pydict()
        self.arrays = zarr.open_group(self.dir / "arrays.zarr", mode="r", zarr_format=3)

    def segment(self, sid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.segments
        image_id, local = s["image_id"][sid], s["local_index"][sid]
        y0, x0, y1, x1 = s["bbox"][sid]
        cy0, cx0, cy1, cx1 = s["context_box"][sid]
        mask = np.asarray(self.arrays["components"][image_id]) == local + 1
        crop = np.asarray(self.arrays["photos"][image_id, y0:y1, x0:x1])
        crop = np.where(mask[y0:y1, x0:x1, None], crop, 0).astype(np.uint8)
        label = np.asarray(self.arrays["labels"][image_id])
        context = np.full(label.shape, self.manifest["ignore_value"], np.uint8)
        context[cy0:cy1, cx0:cx1] = label[cy0:cy1, cx0:cx1]
        return mask, crop, context

    def contexts(self) -> np.ndarray:
        """Dense (S, gh * gw) context rows from the boxed arrays: each box's cells, row-major, in order."""
        gh, gw = self.manifest["segments"]["fine_grid"]
        boxes = np.asarray(self.arrays["codes/context_box"][:]).astype(np.int64)
        cells = np.asarray(self.arrays["codes/context_cells"][:])
        out = np.full((len(boxes), gh, gw), IGNORE, np.uint8)
        at = 0
        for i, (r0, c0, r1, c1) in enumerate(boxes):
            n = (r1 - r0) * (c1 - c0)
            out[i, r0:r1, c0:c1] = cells[at : at + n].reshape(r1 - r0, c1 - c0)
            at += n
        assert at == cells.size
        return out.reshape(len(boxes), gh * gw)

    def image_rows(self, image_id: int) -> range:
        """Segment ids of one image: contiguous, images in id order."""
        first = sum(self.images["num_segments"][:image_id])
        return range(first, first + self.images["num_segments"][image_id])


def unpack(rows: np.ndarray, nbits: int) -> np.ndarray:
    """Big-endian bits: cell k is bit 0x80 >> (k % 8) of byte k // 8."""
    k = np.arange(nbits)
    return (rows[:, k // 8] & (0x80 >> (k % 8))) != 0


def doc_mask_bits(components: np.ndarray, n: int, grid: tuple[int, int]) -> np.ndarray:
    """(n, gh*gw) mask bits per section 6 of the doc."""
    (h, w), (gh, gw) = components.shape, grid
    cell = (np.arange(h)[:, None] * gh // h) * gw + np.arange(w)[None, :] * gw // w
    size = np.bincount(cell.ravel(), minlength=gh * gw)
    out = np.zeros((n, gh * gw), bool)
    for i in range(n):
        count = np.bincount(cell[components == i + 1], minlength=gh * gw)
        out[i] = 2 * count >= size
        out[i, np.argmax(count / size)] = True
    return out


def doc_context(
    label: np.ndarray, box: list[int], fine_bits: np.ndarray, grid: tuple[int, int], k: int, class_id: int
) -> np.ndarray:
    """(gh*gw,) context code of one segment per section 6 of the doc."""
    (h, w), (gh, gw) = label.shape, grid
    cell = (np.arange(h)[:, None] * gh // h) * gw + np.arange(w)[None, :] * gw // w
    values = np.where(label == IGNORE, k, label).astype(np.int64)  # 255 ranks last on ties
    counts = np.bincount(cell.ravel() * (k + 1) + values.ravel(), minlength=gh * gw * (k + 1))
    mode = counts.reshape(gh * gw, k + 1).argmax(axis=1)
    grid_labels = np.where(mode == k, IGNORE, mode)
    ey, ex = np.ceil(np.arange(gh + 1) * h / gh), np.ceil(np.arange(gw + 1) * w / gw)
    cy, cx = (ey[:-1] + ey[1:]) / 2, (ex[:-1] + ex[1:]) / 2
    y0, x0, y1, x1 = box
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    context = np.where(inside.ravel() | fine_bits, grid_labels, IGNORE)
    return np.where(fine_bits, class_id, context).astype(np.uint8)


# --- Tests ---


def test_segments_read_as_documented_match_library(bank_root: Path) -> None:
    doc, bank = DocBank(bank_root), open_bank(bank_root)
    assert doc.dir == bank.path
    assert doc.segments["segment_id"] == list(range(bank.num_segments))
    assert len(doc.images["image_id"]) == doc.manifest["counts"]["images"] == bank.num_images
    for sid in range(min(N_SEGMENTS, bank.num_segments)):
        mask, crop, context = doc.segment(sid)
        ref = bank.segment(sid)
        np.testing.assert_array_equal(mask, ref.mask)
        np.testing.assert_array_equal(crop, ref.crop)
        np.testing.assert_array_equal(context, ref.context)
        assert mask.sum() == doc.segments["area"][sid] == ref.area


def test_codes_match_documented_definitions(bank_root: Path) -> None:
    doc = DocBank(bank_root)
    m = doc.manifest
    config = SegmentConfig.from_dict(m["segments"])
    k = len(m["classes"])
    (gh, gw) = m["segments"]["fine_grid"]
    levels = [tuple(g) for g in m["segments"]["coarse_grids"]]
    coarse_bits = sum(ch * cw for ch, cw in levels)
    assert m["codes"] == {
        "fine_mask_bits": gh * gw,
        "coarse_bits": coarse_bits,
        "bit_order": "big",
        "row_padding_bytes": 8,
        "context_layout": "boxed",
    }
    codes = {name: np.asarray(doc.arrays[f"codes/{name}"][:]) for name in ("mask", "coarse")}
    codes["context"] = doc.contexts()
    # Each box is the tightest around the cells that are not IGNORE.
    boxes = np.asarray(doc.arrays["codes/context_box"][:])
    present = codes["context"].reshape(-1, gh, gw) != IGNORE
    for i in range(0, len(boxes), 7):
        rows, cols = np.flatnonzero(present[i].any(axis=1)), np.flatnonzero(present[i].any(axis=0))
        assert tuple(boxes[i]) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    assert codes["mask"].shape[1] == -(-gh * gw // 64) * 8
    assert codes["coarse"].shape[1] == -(-coarse_bits // 64) * 8
    for image_id in range(len(doc.images["image_id"])):
        rows = list(doc.image_rows(image_id))
        label = np.asarray(doc.arrays["labels"][image_id])
        components = np.asarray(doc.arrays["components"][image_id])
        fine = unpack(codes["mask"][rows], gh * gw)
        # Against the library, recomputed from the stored label map.
        segs = extract_segments(label, k, config)
        lib = encode_segments(label, segs, k, config)
        assert len(segs) == len(rows)
        np.testing.assert_array_equal(segs.component_map, components)
        np.testing.assert_array_equal(fine, mask_cells(segs, config.fine_grid))
        np.testing.assert_array_equal(codes["context"][rows], lib.context)
        np.testing.assert_array_equal(codes["coarse"][rows], lib.coarse)
        # Against the doc's own definitions.
        np.testing.assert_array_equal(fine, doc_mask_bits(components, len(rows), (gh, gw)))
        coarse = unpack(codes["coarse"][rows], coarse_bits)
        start = 0
        for ch, cw in levels:
            # Fine cell (i, j) ORs into coarse cell (i * ch // gh, j * cw // gw).
            want = np.zeros((len(rows), ch, cw), bool)
            grid = fine.reshape(-1, gh, gw)
            for i in range(gh):
                for j in range(gw):
                    want[:, i * ch // gh, j * cw // gw] |= grid[:, i, j]
            np.testing.assert_array_equal(coarse[:, start : start + ch * cw], want.reshape(len(rows), -1))
            start += ch * cw
        for j, sid in enumerate(rows):
            box = doc.segments["context_box"][sid]
            want_ctx = doc_context(label, box, fine[j], (gh, gw), k, doc.segments["class_id"][sid])
            np.testing.assert_array_equal(codes["context"][sid], want_ctx)
        # Padding bytes are zero.
        assert not codes["mask"][rows, -(-gh * gw // 8) :].any()


def test_segment_order_and_boxes(bank_root: Path) -> None:
    """Per image: class id ascending, then raster position of the first pixel; boxes per section 5."""
    doc = DocBank(bank_root)
    s = doc.segments
    h, w = doc.manifest["resolution"]
    scale = doc.manifest["segments"]["context_scale"]
    for image_id in range(len(doc.images["image_id"])):
        components = np.asarray(doc.arrays["components"][image_id])
        keys = []
        for sid in doc.image_rows(image_id):
            assert s["image_id"][sid] == image_id
            pixels = np.flatnonzero(components.ravel() == s["local_index"][sid] + 1)
            keys.append((s["class_id"][sid], pixels[0]))
            ys, xs = np.divmod(pixels, w)
            y0, x0, y1, x1 = s["bbox"][sid]
            assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            assert s["area"][sid] == pixels.size >= doc.manifest["segments"]["min_area"]
            np.testing.assert_allclose(s["centroid"][sid], (ys.mean() + 0.5, xs.mean() + 0.5), rtol=1e-5)
            cy, cx, hy, hx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) * scale / 2, (x1 - x0) * scale / 2
            lo, hi = (
                (max(0, np.floor(cy - hy)), max(0, np.floor(cx - hx))),
                (min(h, np.ceil(cy + hy)), min(w, np.ceil(cx + hx))),
            )
            want = [*lo, *hi]
            assert s["context_box"][sid] == want
        assert keys == sorted(keys)


def test_popcounts_and_iou_formulas(bank_root: Path) -> None:
    doc = DocBank(bank_root)
    s = doc.segments
    mask = np.asarray(doc.arrays["codes/mask"][:])
    context = doc.contexts()
    coarse = np.asarray(doc.arrays["codes/coarse"][:])
    np.testing.assert_array_equal(np.bitwise_count(mask).sum(axis=1), s["mask_popcount"])
    np.testing.assert_array_equal((context != IGNORE).sum(axis=1), s["context_popcount"])
    np.testing.assert_array_equal(np.bitwise_count(coarse).sum(axis=1), s["coarse_popcount"])
    gh, gw = doc.manifest["segments"]["fine_grid"]
    bits = unpack(mask, gh * gw)
    for i, j in [(0, 1), (0, 5), (3, 40), (10, 10)]:
        a, b = s["mask_popcount"][i], s["mask_popcount"][j]
        h = int(np.bitwise_count(mask[i] ^ mask[j]).sum())
        inter, union = (bits[i] & bits[j]).sum(), (bits[i] | bits[j]).sum()
        assert (a + b - h) / (a + b + h) == pytest.approx(inter / union)
        ci = ((context[i] != IGNORE) & (context[i] == context[j])).sum()
        cu = s["context_popcount"][i] + s["context_popcount"][j] - ci
        # As sets of (cell, label) pairs: the documented intersection and union are exact.
        pairs_i = {(k, v) for k, v in enumerate(context[i]) if v != IGNORE}
        pairs_j = {(k, v) for k, v in enumerate(context[j]) if v != IGNORE}
        assert (ci, cu) == (len(pairs_i & pairs_j), len(pairs_i | pairs_j))


def test_checksums_cover_every_file(bank_root: Path) -> None:
    doc = DocBank(bank_root)
    want = doc.manifest["checksums"]
    files = {p.relative_to(doc.dir).as_posix() for p in doc.dir.rglob("*") if p.is_file()}
    assert set(want) == files - {"manifest.json"}
    for rel, digest in want.items():
        assert hashlib.sha256((doc.dir / rel).read_bytes()).hexdigest() == digest
    assert open_bank(bank_root).verify() == []


def test_faiss_indexes(bank_root: Path) -> None:
    faiss = pytest.importorskip("faiss")
    doc = DocBank(bank_root)
    coarse = np.asarray(doc.arrays["codes/coarse"][:])
    class_id = np.asarray(doc.segments["class_id"])
    for c in range(len(doc.manifest["classes"])):
        path = doc.dir / "faiss" / f"class_{c:03d}.faissbin"
        ids = np.flatnonzero(class_id == c)
        assert path.is_file() == (ids.size > 0)
        if not ids.size:
            continue
        index = faiss.read_index_binary(str(path))
        assert isinstance(index, faiss.IndexBinaryIDMap)
        assert index.d == coarse.shape[1] * 8 and index.ntotal == ids.size
        np.testing.assert_array_equal(faiss.vector_to_array(index.id_map), ids)
        dist, found = index.search(coarse[ids[:1]], 1)
        assert dist[0, 0] == 0 and class_id[found[0, 0]] == c


def test_doc_example_runs(bank_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/bank-format.md has no python example"
    namespace: dict = {"BANK": str(bank_root)}
    exec(blocks[-1], namespace)
    ref = open_bank(bank_root).segment(0)
    np.testing.assert_array_equal(namespace["mask"], ref.mask)
    np.testing.assert_array_equal(namespace["crop"], ref.crop)
    np.testing.assert_array_equal(namespace["context"], ref.context)
    bank = open_bank(bank_root)
    label = np.asarray(bank.labels[ref.image_id])
    segs = extract_segments(label, len(bank.classes), bank.config)
    local = int(bank.column("local_index")[0])
    want = mask_cells(segs, bank.config.fine_grid)[local].reshape(bank.config.fine_grid)
    np.testing.assert_array_equal(namespace["fine_mask"], want)
    assert capsys.readouterr().out.startswith(bank.version)
