"""``sims serve``: run the retrieval service; ``sims cluster up``: a local Dask cluster for it.

Flags override ``SIMS_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from retrieval_service.local_cluster import ClusterSpec

app = typer.Typer(help="Run the retrieval service (HTTP API) on a bank.")
cluster_app = typer.Typer(help="A Dask cluster on this machine: a scheduler and workers (docs/scaling.md).")


@app.callback(invoke_without_command=True)
def serve(
    bank: Annotated[
        str | None, typer.Option("--bank", "-b", help="Bank directory or fsspec URL, s3://... (env SIMS_BANK).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (env SIMS_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env SIMS_PORT, default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes (env SIMS_WORKERS, default 1).")] = None,
    watch_interval: Annotated[
        float | None,
        typer.Option(help="Poll the bank's CURRENT every N s and reload on change; 0 = off (env SIMS_WATCH_INTERVAL)."),
    ] = None,
    max_upload_bytes: Annotated[
        int | None, typer.Option(help="Largest request body (env SIMS_MAX_UPLOAD_BYTES, default 8 MiB).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level (env SIMS_LOG_LEVEL, default info).")] = None,
    with_worker: Annotated[
        bool,
        typer.Option(
            "--with-worker",
            help="Answer /synthesize in this process (the in_process synthesis backend; no worker to run).",
        ),
    ] = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Synthesis network for --with-worker (env SIMS_SYNTHESIS_WEIGHTS; default weights/synthesis)."
        ),
    ] = None,
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            help="Root of the networks for --with-worker: its synthesis/, layout-refiner/, transform/ and ordering/ "
            "(what `sims train all` writes; env SIMS_WORKER_WEIGHTS_DIR; default weights).",
        ),
    ] = None,
    synthesis_url: Annotated[
        str | None,
        typer.Option(help="Synthesis worker URL(s), comma-separated, for /synthesize (env SIMS_SYNTHESIS_URL)."),
    ] = None,
    synthesis_cluster: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler whose synthesis workers answer /synthesize, e.g. tcp://127.0.0.1:8786 "
            "(`sims cluster up`; env SIMS_SYNTHESIS_CLUSTER)."
        ),
    ] = None,
    synthesis_timeout: Annotated[
        float | None, typer.Option(help="Seconds before /synthesize answers 504 (env SIMS_SYNTHESIS_TIMEOUT, 60).")
    ] = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(help="Per-client rate limit, e.g. `20/second;600/minute` (env SIMS_RATE_LIMIT; default: off)."),
    ] = None,
    limit_concurrency: Annotated[
        int | None,
        typer.Option(
            help="Connections a worker serves at once, 503 above; 0 = unbounded (env SIMS_LIMIT_CONCURRENCY, 256)."
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="Shard the bank over N local Dask worker processes (env SIMS_SHARDS; default 0: one process)."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="Dask scheduler whose workers hold the shards, tcp://host:8786 (env SIMS_CLUSTER)."),
    ] = None,
    shard_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds a shard may take before /retrieve answers 503 (env SIMS_SHARD_TIMEOUT, 10)."),
    ] = None,
    cors_origins: Annotated[
        str | None,
        typer.Option(
            help="Origins allowed to call the API from pages served elsewhere, comma-separated, `*` for any "
            "(env SIMS_CORS_ORIGINS; default: off)."
        ),
    ] = None,
) -> None:
    """Serve a bank over HTTP. Keys come from SIMS_API_KEY / SIMS_API_KEYS only (never a flag: argv is public)."""
    from retrieval_service.api.server import serve as run
    from retrieval_service.api.settings import Settings

    if weights_dir is not None:
        # The in-process backend reads its networks from SIMS_WORKER_* (in every worker process alike).
        os.environ["SIMS_WORKER_WEIGHTS_DIR"] = str(weights_dir)

    flags = {
        "bank": bank,
        "host": host,
        "port": port,
        "workers": workers,
        "watch_interval": watch_interval,
        "max_upload_bytes": max_upload_bytes,
        "log_level": log_level,
        "synthesis_backend": "in_process" if with_worker else None,
        "synthesis_weights": weights,
        "synthesis_url": synthesis_url,
        "synthesis_cluster": synthesis_cluster,
        "synthesis_timeout": synthesis_timeout,
        "cors_origins": cors_origins,
        "rate_limit": rate_limit,
        "limit_concurrency": limit_concurrency,
        "shards": shards,
        "cluster": cluster,
        "shard_timeout": shard_timeout,
    }
    run(Settings(**{k: v for k, v in flags.items() if v is not None}))


@cluster_app.command("up")
def cluster_up(
    ctx: typer.Context,
    workers: Annotated[
        int, typer.Option(help="General workers (index builds, retrieval shards).")
    ] = ClusterSpec.workers,
    synthesis_workers: Annotated[
        int, typer.Option(help="Synthesis workers: replicas for `sims serve --synthesis-cluster`, one synthesis each.")
    ] = ClusterSpec.synthesis_workers,
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 to take workers or clients from elsewhere.")
    ] = ClusterSpec.host,
    port: Annotated[int, typer.Option(help="Scheduler port (0 = a free one).")] = ClusterSpec.port,
    threads: Annotated[int, typer.Option(help="Threads per general worker.")] = ClusterSpec.threads,
    memory_limit: Annotated[
        str, typer.Option(help="Memory per worker, e.g. 4GiB (`auto`: a share of the RAM).")
    ] = ClusterSpec.memory_limit,
    dashboard_address: Annotated[
        str | None, typer.Option(help="Scheduler dashboard, e.g. :8787 (needs bokeh; default off).")
    ] = ClusterSpec.dashboard_address,
) -> None:
    """Start a Dask scheduler and workers here, print the scheduler address, and keep them up until
    Ctrl-C or SIGTERM, which stops the workers and the scheduler cleanly."""
    from retrieval_service.local_cluster import run_cluster

    # The flags are the spec's fields, by name, with its defaults.
    spec = ClusterSpec(**ctx.params)

    def announce(address: str) -> None:
        typer.echo(
            f"scheduler {address}: {spec.workers} general and {spec.synthesis_workers} synthesis workers; "
            f"stop with Ctrl-C or SIGTERM",
        )
        typer.echo(f"  sims serve --bank BANK --synthesis-cluster {address}")
        typer.echo(f"  sims index build ... --scheduler {address}")

    run_cluster(spec, announce)
