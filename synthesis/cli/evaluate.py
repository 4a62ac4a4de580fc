"""``sims eval``: score synthesized image sets against their layouts and the real photos."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Evaluate synthesized images: segmentation consistency, power spectrum, L1.")


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
            "(run in-process with --memory-bank); repeatable.",
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path("docs/eval"),
    limit: Annotated[int | None, typer.Option(help="Only the first N images (quick checks).")] = None,
    samples: Annotated[int, typer.Option(help="Rows of the sample figure.")] = 4,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Write report.md, report.json and PNG plots comparing the named image sets with the real photos."""
    import torch

    from memory_bank import open_bank
    from synthesis.evaluation import report as rep
    from synthesis.networks.segmenter import load_pretrained

    if (bank is None) == (root is None):
        raise typer.BadParameter("give exactly one of --bank and --root")
    if threads:
        torch.set_num_threads(threads)
    source = open_bank(memory_bank) if memory_bank is not None else None
    sets = [rep.open_image_set(name, path, source) for name, path in map(_parse_set, image_sets)]
    if bank is not None:
        val = open_bank(bank)
        items, classes, title = rep.items_from_bank(val, limit, progress), val.classes, rep.describe_bank(val)
    else:
        from indexers.readers import create_reader

        reader = create_reader(dataset, root, [split])  # type: ignore[arg-type]
        items, classes, title = rep.items_from_samples(reader, limit), reader.classes, f"{dataset} {split}"
    report = rep.evaluate_image_sets(
        items,
        sets,
        load_pretrained(segmenter),
        classes,
        segmenter_name=str(segmenter),
        num_samples=samples,
        progress=progress,
    )
    report.title = f"Evaluation on {title}"
    report.command = "sims " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = rep.write_report(report, out)
    for r in report.results:
        typer.echo(
            f"{r.name:>28}: mIoU {r.scores.miou:.4f}  pixel acc {r.scores.pixel_accuracy:.4f}  "
            f"spectrum distance {r.spectrum_distance:.4f}{' (noise floor)' if r.reference else ''}  "
            f"L1 {'-' if r.l1 is None else f'{r.l1:.4f}'}"
        )
    typer.echo(f"report in {md}")
