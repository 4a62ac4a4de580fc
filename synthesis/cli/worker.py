"""``sims worker``: run a synthesis worker. Flags override ``SIMS_WORKER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run a synthesis worker: the pipeline behind the retrieval service's POST /synthesize.")


@app.callback(invoke_without_command=True)
def worker(
    service: Annotated[
        str | None,
        typer.Option("--service", help="Retrieval service URL (env SIMS_WORKER_SERVICE_URL, default :8000)."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", "-w", help="Synthesis network directory (default weights/synthesis)."),
    ] = None,
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            help="Root of the networks not given one by one: synthesis/, layout-refiner/, transform/, ordering/ "
            "(what `sims train all` writes; default weights)."
        ),
    ] = None,
    refine: Annotated[
        str | None, typer.Option(help="Layout refiner for coarse=true, or `none` (default weights/layout-refiner).")
    ] = None,
    transform: Annotated[
        str | None, typer.Option(help="Transformation network T, or `none` (default weights/transform).")
    ] = None,
    ordering: Annotated[
        str | None, typer.Option(help="Ordering network, or `none` for the layout rule (default weights/ordering).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8001).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Syntheses at once (default 2).")] = None,
    queue: Annotated[int | None, typer.Option(help="Syntheses that may wait; more get 503 (default 0).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds a synthesis may take (default 60).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default 1; 0 = torch's).")] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level (default info).")] = None,
) -> None:
    """Serve POST /synthesize for a retrieval service: retrieve over HTTP, build the canvas, run the network.

    Point the service at it with SIMS_SYNTHESIS_URL=http://HOST:PORT (comma-separate several workers).
    """
    from synthesis.worker.server import serve_worker
    from synthesis.worker.settings import WorkerSettings

    flags = {
        "service_url": service,
        "weights_dir": weights_dir,
        "weights": weights,
        "refine_weights": refine,
        "transform_weights": transform,
        "ordering_weights": ordering,
        "host": host,
        "port": port,
        "concurrency": concurrency,
        "queue": queue,
        "timeout": timeout,
        "threads": threads,
        "log_level": log_level,
    }
    serve_worker(WorkerSettings(**{k: v for k, v in flags.items() if v is not None}))
