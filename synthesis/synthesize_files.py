"""Layout files in, image files out: what ``sims synthesize`` does, in-process or against a service.

Two :class:`Synthesizer` s give the same :class:`Synthesized` result for the same layout PNG and
:class:`~retrieval_service.types.SynthesizeOptions` (the layout options among them: a layout of
another size, in colours or in raw dataset ids is read by :func:`memory_bank.png.decode_layout`,
as the services read it, and the result comes at the layout's size):

- :class:`LocalSynthesizer`: the pipeline in this process, on a bank (``--bank``), with the same
  networks a worker loads (:func:`~synthesis.worker.runtime.load_networks`);
- :class:`RemoteSynthesizer`: ``POST /synthesize`` on a running service (``--service``).

:func:`synthesize_files` writes one PNG per layout and seed, optionally the extras next to it
(``<name>.canvas.png``, ``<name>.provenance.png`` in colours, ``<name>.json``) and a grid of every
row (layout | canvas | output | provenance; coarse rows start with the coarse input).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from memory_bank import IGNORE, LayoutError, open_bank
from memory_bank.images import read_label, resize_label
from memory_bank.png import LayoutSpec, decode_layout, decode_provenance_png, encode_layout_png
from retrieval_service.client import RetrievalClient
from retrieval_service.types import SynthesizeOptions
from synthesis.canvas.builder import CanvasBuilder
from synthesis.canvas.grid import provenance_colors, render_table, save_image
from synthesis.pipeline import SynthesisPipeline
from synthesis.remote import layout_spec
from synthesis.worker.reply import arrays_at, wire_segments
from synthesis.worker.runtime import MAX_LAYOUT_PIXELS, load_networks, synthesize
from synthesis.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

ALL_EXTRAS = ("canvas", "provenance", "segments", "layout")


@dataclass(frozen=True)
class GridFigure:
    """The grid PNG of every row written (layout | canvas | output | provenance).

    ``scale`` sizes its tiles (1.0: the layout's resolution); ``colors`` quantises it to that many
    colours (smaller files, e.g. for docs).
    """

    path: str | Path
    scale: float = 0.5
    colors: int | None = None


@dataclass(frozen=True)
class Synthesized:
    """One synthesized image and what it was made from (arrays at the layout's size)."""

    image: np.ndarray  # (H, W, 3) uint8
    layout: np.ndarray  # (H, W) uint8, the refined one when coarse
    canvas: np.ndarray | None  # (H, W, 3) uint8
    provenance: np.ndarray | None  # (H, W) int64 bank segment ids, -1 where none
    segments: list[dict[str, Any]]
    bank_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)


class Synthesizer(Protocol):
    """``synth(png, options, instances) -> Synthesized`` for a layout PNG (and its instance map
    PNG, if any), with the bank's layout ``spec``.

    Every :class:`Synthesized` carries the canvas, provenance and segments: ``options.extras``
    and ``options.format`` (the shape of an HTTP reply) do not apply.
    """

    spec: LayoutSpec

    def __call__(self, png: bytes, options: SynthesizeOptions, instances: bytes | None = None) -> Synthesized: ...


class LocalSynthesizer:
    """The pipeline in this process, on a bank."""

    def __init__(self, pipeline: SynthesisPipeline, spec: LayoutSpec) -> None:
        self.pipeline = pipeline
        self.spec = spec

    @classmethod
    def from_bank(cls, bank: str | Path, settings: WorkerSettings) -> LocalSynthesizer:
        """Open the bank and load the networks ``settings`` names (as ``sims worker`` does)."""
        opened = open_bank(bank)
        pipeline = load_networks(settings).pipeline(CanvasBuilder.from_bank(opened))
        return cls(pipeline, LayoutSpec.from_manifest(opened.manifest))

    def __call__(self, png: bytes, options: SynthesizeOptions, instances: bytes | None = None) -> Synthesized:
        layout = decode_layout(
            png, self.spec, max_pixels=MAX_LAYOUT_PIXELS, options=options.layout_options(), instances=instances
        )
        out = synthesize(self.pipeline, layout.label, options, instances=layout.instances)
        arrays = arrays_at(out, layout.size)  # at the layout's own size, as a service answers
        segments = [s.model_dump() for s in wire_segments(out.segments, self.spec.classes)]  # as RemoteSynthesizer's
        timings = {key: round(v * 1000, 3) for key, v in out.timings.items()}
        return Synthesized(
            arrays.image, arrays.layout, arrays.canvas, arrays.provenance, segments, out.bank_version, timings
        )


class RemoteSynthesizer:
    """``POST /synthesize`` on a running service, every extra requested."""

    def __init__(self, client: RetrievalClient, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout
        self.spec = layout_spec(client.bank())

    def __call__(self, png: bytes, options: SynthesizeOptions, instances: bytes | None = None) -> Synthesized:
        # Every option but the reply's shape, which this asks for itself.
        parameters = options.model_dump(exclude={"extras", "format"})
        r = self.client.synthesize(png, extras=ALL_EXTRAS, timeout=self.timeout, instances=instances, **parameters)
        return Synthesized(
            image=_png(r.image_png),
            layout=_png(r.layout_png),
            canvas=_png(r.canvas_png) if r.canvas_png else None,
            provenance=decode_provenance_png(base64.b64decode(r.provenance_png)) if r.provenance_png else None,
            segments=[s.model_dump() for s in r.segments or []],
            bank_version=r.bank_version,
            timings_ms=r.timings_ms,
        )


def _png(b64: str | None) -> np.ndarray:
    if b64 is None:
        raise ValueError("the service's reply has no image")
    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        return np.asarray(img)


def read_layout(
    path: str | Path,
    spec: LayoutSpec,
    options: SynthesizeOptions,
    unlabelled: Sequence[int] = (),
    instances: bytes | None = None,
) -> tuple[bytes, np.ndarray]:
    """A layout file's PNG bytes (values in ``unlabelled`` made 255 first) and its class ids at its own size.

    Read as the services read it (:func:`~memory_bank.png.decode_layout` with the layout options,
    and the layout's ``instances`` PNG, checked here); errors name the file.
    """
    try:
        try:
            png = Path(path).read_bytes()
        except OSError as e:
            raise LayoutError(f"cannot read it ({e.strerror or e})") from None
        if unlabelled:
            label = read_label(png)
            if label.max(initial=0) > IGNORE:
                raise LayoutError(f"label values up to {label.max()} do not fit a layout (0..{IGNORE})")
            png = encode_layout_png(np.where(np.isin(label, list(unlabelled)), IGNORE, label).astype(np.uint8))
        layout = decode_layout(
            png, spec, max_pixels=MAX_LAYOUT_PIXELS, options=options.layout_options(), instances=instances
        )
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}", kind=e.kind) from None
    return png, resize_label(layout.label, layout.size)


def instance_file(instances: Path | None, layout: Path, count: int) -> Path | None:
    """The instance map of ``layout`` under ``--instances``: the file itself (one layout), or the
    file of the layout's name in that directory (None without ``--instances``)."""
    if instances is None:
        return None
    if instances.is_dir():
        return instances / layout.name
    if count > 1:
        raise LayoutError(f"--instances {instances}: {count} layouts need a directory of instance maps named like them")
    return instances


def read_instances(path: Path | None) -> bytes | None:
    """The bytes of an instance map file (None for None); a :class:`LayoutError` naming a missing one."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise LayoutError(f"{path}: cannot read the instance map ({e.strerror or e})") from None


#: Suffixes that make ``--out`` an image file (PNG, or JPEG at quality 90) rather than a directory.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Image suffixes SIMS does not write: refused rather than taken as a directory name.
UNWRITTEN_SUFFIXES = (".gif", ".webp", ".bmp", ".tif", ".tiff")


def output_names(layouts: Sequence[Path], out: Path, seeds: Sequence[int]) -> list[list[Path]]:
    """Where each layout's images go: ``out`` itself for one layout and seed, else
    ``<out stem>-seed<S><suffix>`` beside it (one layout), or ``<out>/<layout stem>[-seed<S>].png``.
    ``out`` is a file when it ends in one of :data:`OUTPUT_SUFFIXES`."""
    many_seeds = len(seeds) > 1
    if out.suffix.lower() in UNWRITTEN_SUFFIXES:  # surely meant as a file, which would become a directory
        raise ValueError(f"--out {out}: photos are written as {', '.join(OUTPUT_SUFFIXES)}, not {out.suffix}")
    is_file = out.suffix.lower() in OUTPUT_SUFFIXES
    if len(layouts) == 1 and is_file:
        if not many_seeds:
            return [[out]]
        return [[out.with_name(f"{out.stem}-seed{s}{out.suffix}") for s in seeds]]
    if is_file:
        raise ValueError(f"{len(layouts)} layouts need --out to be a directory, not {out}")
    return [[out / (f"{p.stem}-seed{s}.png" if many_seeds else f"{p.stem}.png") for s in seeds] for p in layouts]


def synthesize_files(
    synth: Synthesizer,
    layouts: Sequence[str | Path],
    out: str | Path,
    *,
    options: SynthesizeOptions | None = None,
    n: int = 1,
    unlabelled: Sequence[int] = (),
    extras: bool = False,
    grid: GridFigure | None = None,
    progress: bool = True,
    instances: str | Path | None = None,
) -> list[Path]:
    """Synthesize every layout file with seeds ``options.seed .. options.seed + n - 1``; returns the images written.

    ``grid``: also write that grid figure. ``instances`` is the instance map PNG of a single layout,
    or a directory holding one per layout under the layout's file name.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    options = options or SynthesizeOptions()
    paths = [Path(p) for p in layouts]
    seeds = list(range(options.seed, options.seed + n))
    names = output_names(paths, Path(out), seeds)
    palette = synth.spec.classes.palette()
    written, rows = [], []
    jobs = [(p, s, name) for p, row in zip(paths, names, strict=True) for s, name in zip(seeds, row, strict=True)]
    inst_root = None if instances is None else Path(instances)
    for path, s, name in tqdm(jobs, desc="synthesizing", unit="image", disable=not progress):
        inst = read_instances(instance_file(inst_root, path, len(paths)))
        png, layout = read_layout(path, synth.spec, options, unlabelled, inst)
        seeded = options.model_copy(update={"seed": s})
        result = synth(png, seeded, inst) if inst else synth(png, seeded)  # synthesizers may predate instances
        save_image(name, result.image)
        written.append(name)
        log.debug("%s (seed %d) -> %s, %s", path, s, name, _timing_text(result.timings_ms))
        if extras:
            _write_extras(name, result, palette)
        if grid is not None:
            rows.append(_grid_row(layout if options.coarse else None, result, palette))
    if grid is not None and rows:
        first = ["coarse layout", "refined layout"] if options.coarse else ["layout"]
        columns = [*first, "canvas", "output", "provenance"]
        save_image(grid.path, render_table(rows, columns, scale=grid.scale), colors=grid.colors)
    return written


def _timing_text(timings_ms: dict[str, float]) -> str:
    return ", ".join(f"{key} {v:.0f} ms" for key, v in timings_ms.items())


def _grid_row(coarse: np.ndarray | None, r: Synthesized, palette: np.ndarray) -> list[np.ndarray]:
    h, w = r.layout.shape
    canvas = r.canvas if r.canvas is not None else np.zeros((h, w, 3), np.uint8)
    prov = provenance_colors(r.provenance) if r.provenance is not None else np.zeros((h, w, 3), np.uint8)
    first = [palette[coarse]] if coarse is not None else []
    return [*first, palette[r.layout], canvas, r.image, prov]


def _write_extras(name: Path, r: Synthesized, palette: np.ndarray) -> None:
    stem = name.with_suffix("")
    if r.canvas is not None:
        save_image(f"{stem}.canvas.png", r.canvas)
    if r.provenance is not None:
        save_image(f"{stem}.provenance.png", provenance_colors(r.provenance))
    save_image(f"{stem}.layout.png", palette[r.layout])
    meta = {"bank_version": r.bank_version, "segments": r.segments, "timings_ms": r.timings_ms}
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
