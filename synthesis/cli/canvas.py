"""``sims canvas``: inspection grids and the simulated-canvas cache. Commands parse and delegate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Build canvases: inspection grids and the simulated training-canvas cache.", no_args_is_help=True
)

BankOpt = Annotated[Path, typer.Option("--bank", "-b", help="Bank the segments are retrieved from.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of retrieval picks, colour transfer and elision.")]
KOpt = Annotated[int, typer.Option("--k", help="Pick each segment at random among the top k.")]
ModeOpt = Annotated[str, typer.Option(help="Retrieval mode: fast, exact or full (pixels).")]
ColorOpt = Annotated[float, typer.Option(help="Share of segments whose colour is transferred (simulated canvases).")]


def _ids(text: str | None) -> list[int] | None:
    return [int(v) for v in text.split(",") if v.strip()] if text else None


def _floats(text: str | None) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip()) if text else ()
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def single_thread_faiss() -> None:
    """One FAISS thread: its OpenMP threads spin against each other on a busy 2-core machine (50x slower searches)."""
    import faiss

    faiss.omp_set_num_threads(1)


@app.command()
def grid(
    bank: BankOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    layouts: Annotated[
        Path | None,
        typer.Option(
            "--layouts",
            "-l",
            help="Bank whose label maps and photos make the rows (default: --bank, own image excluded).",
        ),
    ] = None,
    images: Annotated[
        str | None, typer.Option(help="Comma-separated image ids of the layouts bank (default: 4 spread evenly).")
    ] = None,
    count: Annotated[int, typer.Option(help="Rows when --images is not given.")] = 4,
    seed: SeedOpt = 0,
    k: KOpt = 5,
    mode: ModeOpt = "fast",
    color_transfer: ColorOpt = 0.2,
    scale: Annotated[float, typer.Option(help="Tile scale relative to the working resolution.")] = 0.5,
    colors: Annotated[int | None, typer.Option(help="Quantise the PNG to this many colours (smaller files).")] = None,
) -> None:
    """Write a PNG grid, one row per layout: layout | simulated canvas | test-time canvas | photo."""
    import numpy as np

    from memory_bank import open_bank
    from synthesis.canvas.builder import CanvasOptions
    from synthesis.canvas.grid import grid_rows, render_grid, save_image

    single_thread_faiss()
    source = open_bank(bank)
    pairs = open_bank(layouts) if layouts else source
    ids = _ids(images) or np.linspace(0, pairs.num_images - 1, count).round().astype(int).tolist()
    rows = grid_rows(
        source,
        pairs,
        ids,
        seed=seed,
        options=CanvasOptions(k=k, mode=mode),
        color_transfer=color_transfer,  # type: ignore[arg-type]
    )
    path = save_image(out, render_grid(rows, source.classes, scale=scale), colors=colors)
    typer.echo(f"wrote {path} ({len(rows)} rows: images {ids})")


@app.command()
def simulate(
    bank: BankOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache directory (resumed if it holds the same recipe).")],
    variants: Annotated[int, typer.Option(help="Simulated canvases per image.")] = 4,
    size: Annotated[str, typer.Option(help="Stored size ROWSxCOLS, or 'bank' for the working resolution.")] = "96x128",
    images: Annotated[str | None, typer.Option(help="Comma-separated image ids (default: all).")] = None,
    seed: SeedOpt = 0,
    k: KOpt = 5,
    mode: ModeOpt = "fast",
    color_transfer: ColorOpt = 0.2,
    bands: Annotated[
        str | None,
        typer.Option(help="Comma-separated elision bands (fractions of h), one per variant in turn, e.g. 0.05,0.02,0"),
    ] = None,
    jitter: Annotated[
        float,
        typer.Option(help="Share of kept segments given seams: gamma, white balance and a shift (0: none)."),
    ] = 0.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Precompute simulated training canvases (paper §5.2) into a cache; this writes data, it does not train."""
    from memory_bank import open_bank
    from memory_bank.config import parse_size
    from synthesis.canvas.builder import CanvasOptions
    from synthesis.canvas.seam_jitter import SeamJitter
    from synthesis.canvas.simulate import write_canvas_cache

    single_thread_faiss()
    info = write_canvas_cache(
        open_bank(bank),
        out,
        variants=variants,
        size=None if size == "bank" else parse_size(size),
        seed=seed,
        color_transfer=color_transfer,
        options=CanvasOptions(k=k, mode=mode),  # type: ignore[arg-type]
        images=_ids(images),
        bands=_floats(bands),
        jitter=SeamJitter(probability=jitter) if jitter > 0 else None,
        progress=progress,
    )
    h, w = info.size
    typer.echo(f"wrote {len(info.images) * info.variants} simulated canvases ({h}x{w}) to {out}")
