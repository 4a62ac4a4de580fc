"""``sims eval``: score synthesized image sets against their layouts and the real photos."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from memory_bank import Bank
    from synthesis.evaluation.image_sets import EvalItem, ImageSet

app = typer.Typer(
    help="Evaluate synthesized images: segmentation consistency, L1, fine detail, power spectrum, KID; "
    "writes a report and an HTML gallery."
)


def _parse_set(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise typer.BadParameter(f"expected NAME=PATH, got {text!r}")
    return name.strip(), Path(path.strip())


@app.callback(invoke_without_command=True)
def evaluate(
    segmenter: Annotated[Path, typer.Option("--segmenter", "-s", help="Segmenter checkpoint directory.")],
    image_sets: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="NAME=DIR: synthesized PNGs named like the val photos, or a synthesis network checkpoint "
            "(run in-process through the synthesis pipeline; SIMS models need --memory-bank); repeatable.",
        ),
    ],
    bank: Annotated[Path | None, typer.Option("--bank", "-b", help="Bank of the val photos and layouts.")] = None,
    memory_bank: Annotated[
        Path | None, typer.Option("--memory-bank", "-m", help="Bank that checkpoint sets build canvases from.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", "-r", help="Or: a dataset root (read with --dataset/--split).")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset reader for --root.")] = "camvid",
    split: Annotated[str, typer.Option(help="Split for --root.")] = "val",
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (outputs/ is git-ignored).")] = Path(
        "outputs/eval"
    ),
    paste: Annotated[
        str | None,
        typer.Option(
            "--paste",
            metavar="BASE",
            help="Add the row 'paste (canvas over BASE)': the kept pixels of the SIMS set's canvases (the first "
            "SIMS checkpoint set) pasted over the outputs of the set named BASE, with no learning.",
        ),
    ] = None,
    without_seam_blend: Annotated[
        str | None,
        typer.Option(
            "--without-seam-blend",
            metavar="BASE",
            help="Add the row 'BASE without seam blend': the SIMS checkpoint set BASE's images before the "
            "pipeline's seam blend, on the same canvases (an ablation; no extra synthesis).",
        ),
    ] = None,
    elision_band: Annotated[
        float | None,
        typer.Option(
            help="Boundary elision band of the canvases, fraction of the height (default: the test-time one)."
        ),
    ] = None,
    elision_rate: Annotated[
        float | None,
        typer.Option(help="Fraction of the band's canvas pixels elided to white (default: the test-time default)."),
    ] = None,
    gallery_rows: Annotated[
        int | None, typer.Option(min=1, help="Show only this many layouts in the gallery, evenly spread.")
    ] = None,
    gallery_size: Annotated[
        int, typer.Option(min=8, help="Height of the gallery's images in pixels (the layout's: full resolution).")
    ] = 180,
    gallery: Annotated[
        bool, typer.Option("--gallery/--no-gallery", help="Write OUT/gallery/index.html, one row per layout.")
    ] = True,
    held_out_sequences: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated sequences (drives) held out, e.g. 0006R0: refuse to run unless every layout "
            "comes from them and the memory bank holds none of them; the report says so."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images (quick checks).")] = None,
    samples: Annotated[int, typer.Option(help="Rows of the sample figure.")] = 4,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Write report.md, report.json, PNG plots and a gallery comparing the named image sets with the real photos."""
    import torch

    from memory_bank import open_bank
    from synthesis.evaluation.image_sets import (
        canvas_set,
        describe_bank,
        items_from_bank,
        items_from_samples,
        open_image_set,
    )
    from synthesis.evaluation.report import write_report
    from synthesis.evaluation.scoring import evaluate_image_sets
    from synthesis.networks.segmenter import SegmentationNet

    if (bank is None) == (root is None):
        raise typer.BadParameter("give exactly one of --bank and --root")
    if threads:
        torch.set_num_threads(threads)
    from synthesis.canvas.elision import TEST_ELISION

    try:
        elision = TEST_ELISION.with_overrides(elision_band, elision_rate)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    source = open_bank(memory_bank) if memory_bank is not None else None
    named = [_parse_set(text) for text in image_sets]
    names = [name for name, _ in named]
    for flag, base in (("--paste", paste), ("--without-seam-blend", without_seam_blend)):
        if base is not None and base not in names:
            # Before any checkpoint is loaded: a typo should not cost a network load.
            raise typer.BadParameter(f"{flag} {base}: no --set named {base!r} (sets: {', '.join(names)})")
    sets: list[ImageSet] = [open_image_set(name, path, source, elision=elision) for name, path in named]
    if without_seam_blend is not None:
        from synthesis.evaluation.image_sets import UnblendedImages, unblended_name

        base_set = next(s for s in sets if s.name == without_seam_blend)
        if not getattr(base_set, "builds_canvases", False):
            raise typer.BadParameter(f"--without-seam-blend {without_seam_blend}: not a SIMS checkpoint set")
        sets.append(UnblendedImages(unblended_name(without_seam_blend), base_set))
    if paste is not None:
        sets.append(_paste_set(sets, paste))
    if bank is not None:
        val = open_bank(bank)
        items, classes, title = items_from_bank(val, limit, progress), val.classes, describe_bank(val)
    else:
        from indexers.readers import create_reader

        reader = create_reader(dataset, root, [split])  # type: ignore[arg-type]
        items, classes, title = items_from_samples(reader, limit), reader.classes, f"{dataset} {split}"
    held_note = _check_held_out(held_out_sequences, bank, root, dataset, items, source)
    writer = None
    if gallery:
        import numpy as np

        from synthesis.evaluation.gallery import GalleryWriter

        canvases = canvas_set(sets)
        shown = None
        if gallery_rows is not None and gallery_rows < len(items):
            shown = np.unique(np.linspace(0, len(items) - 1, gallery_rows).round().astype(int)).tolist()
        writer = GalleryWriter(
            out / "gallery",
            classes,
            canvas_set=None if canvases is None else canvases.name,
            image_names=None if source is None else source.images.column("source_file").to_pylist(),
            rows=gallery_size,
            title=f"Evaluation on {title}: gallery",
            items=shown,
        )
    report = evaluate_image_sets(
        items,
        sets,
        SegmentationNet.from_pretrained(segmenter),
        classes,
        segmenter_name=str(segmenter),
        num_samples=samples,
        progress=progress,
        on_item=writer,
    )
    report.title = f"Evaluation on {title}" + (f" ({held_note})" if held_note else "")
    report.command = "sims " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if writer is not None:
        report.gallery = writer.write().relative_to(out).as_posix()
    md = write_report(report, out)
    for r in report.results:
        kid = "-" if r.kid is None else f"{1e3 * r.kid:.2f}"
        typer.echo(
            f"{r.name:>32}: mIoU {r.scores.miou:.4f}  pixel acc {r.scores.pixel_accuracy:.4f}  "
            f"L1 {'-' if r.l1 is None else f'{r.l1:.4f}'}  fine detail {r.fine_detail_ratio:.3f}  "
            f"spectrum distance {r.spectrum_distance:.4f}{' (noise floor)' if r.reference else ''}  KIDx1e3 {kid}"
        )
    if report.gallery:
        typer.echo(f"gallery in {out / report.gallery}")
    typer.echo(f"report in {md}")


def _check_held_out(
    text: str | None, bank: Path | None, root: Path | None, dataset: str, items: Sequence[EvalItem], source: Bank | None
) -> str:
    """Check the held-out-sequence split (memory_bank.sequences.check_held_out); the report's note."""
    if not text:
        return ""
    from memory_bank import open_bank
    from memory_bank.sequences import SequenceFilter, bank_sequences, check_held_out

    held = SequenceFilter.parse(include=text).include
    if bank is not None:
        table = open_bank(bank).images
        layouts = bank_sequences(table.column("dataset").to_pylist(), table.column("source_file").to_pylist())
        layouts = layouts[: len(items)]
    else:
        layouts = bank_sequences([dataset] * len(items), [f"{i.name}.png" for i in items])
    memory: list[str] = []
    if source is not None:
        table = source.images
        memory = bank_sequences(table.column("dataset").to_pylist(), table.column("source_file").to_pylist())
    n, m = check_held_out(held, layouts=layouts, memory=memory)
    return f"held-out sequences {','.join(held)}: {n} layouts, none of the {m} memory-bank images"


def _paste_set(sets: list[ImageSet], base: str) -> ImageSet:
    """The paste row over the set named ``base``, with the canvases of the first SIMS checkpoint set."""
    from synthesis.evaluation.image_sets import PastedImages, canvas_set, paste_name

    canvases = canvas_set(sets)
    if canvases is None:
        raise typer.BadParameter("--paste needs a SIMS checkpoint --set (with --memory-bank) to take canvases from")
    return PastedImages(paste_name(base), canvases, next(s for s in sets if s.name == base))
