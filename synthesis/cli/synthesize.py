"""``sims synthesize``: layout PNGs to photos, against a running service or in-process on a bank."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrieval_service.types import LAYOUT_FIELDS, MAX_K, MODES

#: The flags that are :class:`~retrieval_service.types.SynthesizeOptions` fields of the same name,
#: passed on as they are (the other flags say what to read and what to write).
OPTION_FLAGS = ("k", "seed", "mode", "coarse", "elision_band", "elision_rate", *LAYOUT_FIELDS)

app = typer.Typer(help="Synthesize photos from layout PNGs (against a service, or in-process on a bank).")


def _ints(text: str | None) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise typer.BadParameter(
            f"--unlabelled takes comma-separated integers such as 11 or 0,11, not {text!r}"
        ) from None


@app.callback(invoke_without_command=True)
def synthesize(
    ctx: typer.Context,
    layout: Annotated[
        list[Path], typer.Option("--layout", "-l", help="Layout PNG (class ids, 255 unlabelled); repeat for more.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output PNG (one layout), or a directory (several layouts).")
    ],
    service: Annotated[
        str | None, typer.Option("--service", help="Retrieval service URL to call POST /synthesize on.")
    ] = None,
    bank: Annotated[
        str | None, typer.Option("--bank", "-b", help="Synthesize in-process on this bank (directory or URL).")
    ] = None,
    weights: Annotated[Path, typer.Option("--weights", "-w", help="Synthesis network directory (in-process).")] = Path(
        "weights/synthesis"
    ),
    refine: Annotated[
        str, typer.Option(help="Layout refiner directory or `none` (in-process).")
    ] = "weights/layout-refiner",
    transform: Annotated[
        str, typer.Option(help="Transformation network or `none` (in-process).")
    ] = "weights/transform",
    ordering: Annotated[str, typer.Option(help="Ordering network or `none` (in-process).")] = "weights/ordering",
    n: Annotated[int, typer.Option("--n", min=1, help="Variants per layout, with seeds seed .. seed+n-1.")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="First seed (it picks among the top-k segments).")] = 0,
    k: Annotated[int, typer.Option("--k", min=1, max=MAX_K, help="Candidates per component the seed picks among.")] = 5,
    mode: Annotated[str, typer.Option(help="Retrieval mode: fast, exact or full (pixels).")] = "fast",
    coarse: Annotated[bool, typer.Option("--coarse", help="The layouts are coarse: refine them first.")] = False,
    elision_band: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=0.25, help="Boundary elision band, fraction of the height (paper 0.05; default: the worker's)."
        ),
    ] = None,
    elision_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of the inside band elided (paper 0.8).")
    ] = None,
    unlabelled: Annotated[
        str | None, typer.Option(help="Comma-separated label values to treat as unlabelled (e.g. 11 for CamVid).")
    ] = None,
    layout_resize: Annotated[
        bool, typer.Option("--layout-resize", help="Accept layouts of any size (nearest neighbour to the bank's).")
    ] = False,
    layout_colors: Annotated[
        bool, typer.Option("--layout-colors", help="Accept RGB/palette layouts drawn in the bank's class colours.")
    ] = False,
    dataset_ids: Annotated[
        bool,
        typer.Option("--dataset-ids", help="Map the source datasets' unlabelled ids (the bank's manifest) to 255."),
    ] = False,
    instances: Annotated[
        Path | None,
        typer.Option(
            "--instances",
            help="Instance map PNG of the layout (object ids, 0 = none), or a directory of them named like the "
            "layouts; used when the bank cuts thing classes per instance.",
        ),
    ] = None,
    extras: Annotated[
        bool, typer.Option("--extras", help="Also write <name>.canvas.png, .provenance.png, .layout.png, .json.")
    ] = False,
    grid: Annotated[
        Path | None, typer.Option(help="Also write a grid PNG: layout | canvas | output | provenance per image.")
    ] = None,
    grid_colors: Annotated[
        int | None, typer.Option(help="Quantise the grid to this many colours (smaller PNG, e.g. for docs).")
    ] = None,
    grid_scale: Annotated[
        float, typer.Option(min=0.1, max=2.0, help="Tile size of the grid (1: the layout's resolution).")
    ] = 0.5,
    timeout: Annotated[float, typer.Option(help="Seconds per request to the service.")] = 120.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write one photo per layout and seed: `sims synthesize -l layout.png -o photo.png --service URL`."""
    import contextlib
    import logging

    import httpx

    from memory_bank.errors import SimsError
    from retrieval_service.client import RetrievalClient, ServiceError
    from retrieval_service.types import SynthesizeOptions
    from synthesis.synthesize_files import (
        GridFigure,
        LocalSynthesizer,
        RemoteSynthesizer,
        Synthesizer,
        synthesize_files,
    )
    from synthesis.worker.settings import WorkerSettings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if (service is None) == (bank is None):
        raise typer.BadParameter("give exactly one of --service URL and --bank BANK")
    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    options = SynthesizeOptions(**{name: ctx.params[name] for name in OPTION_FLAGS})
    figure = GridFigure(grid, grid_scale, grid_colors) if grid is not None else None
    with contextlib.ExitStack() as stack:
        synth: Synthesizer
        if service is not None:
            client = stack.enter_context(RetrievalClient(service, timeout=timeout))
            try:
                synth = RemoteSynthesizer(client, timeout=timeout)
            except httpx.TransportError as e:
                raise SimsError(f"cannot reach the service at {service}: {e}") from None
        else:
            nets = {"refine_weights": refine, "transform_weights": transform, "ordering_weights": ordering}
            synth = LocalSynthesizer.from_bank(bank, WorkerSettings(weights=weights, **nets))  # type: ignore[arg-type]
        try:
            written = synthesize_files(
                synth,
                layout,
                out,
                options=options,
                n=n,
                unlabelled=_ints(unlabelled),
                extras=extras,
                grid=figure,
                progress=progress,
                instances=instances,
            )
        except ServiceError as e:
            raise SimsError(f"the service at {service} answered {e}") from None
        except httpx.TransportError as e:
            raise SimsError(f"lost the service at {service}: {e}") from None
    more = " ..." if len(written) > 4 else ""
    typer.echo(f"wrote {len(written)} image(s): {', '.join(str(p) for p in written[:4])}{more}")
    if grid is not None:
        typer.echo(f"grid: {grid}")
