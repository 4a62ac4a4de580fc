"""``sims train all``: every network on one bank, resumably, into a weights folder the worker serves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from synthesis.cli.train_options import CONFIGS_DIR, ProgressOpt, TimeLimitOpt, ValBankOpt, one_line_errors
from synthesis.cli.train_synthesis import VGG_ENV

app = typer.Typer()


@app.command("all")
def train_all(
    bank: Annotated[Path, typer.Option("--bank", "-b", help="Bank built from your data (sims index build).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output: runs/, canvas-cache/ and weights/ (rerun to resume).")
    ],
    val_bank: ValBankOpt = None,
    config_set: Annotated[
        str,
        typer.Option(
            "--config-set",
            help="Config set: a name in configs/train-all/ (camvid, tiny) or a config set JSON file.",
        ),
    ] = "camvid",
    tiny: Annotated[
        bool, typer.Option("--tiny", help="The tiny config set (--config-set tiny): the whole chain in seconds.")
    ] = False,
    vgg_weights: Annotated[
        Path | None, typer.Option(help=f"VGG state dict of the synthesis loss (default: the config's, or ${VGG_ENV}).")
    ] = None,
    time_limit_minutes: TimeLimitOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train every network on BANK (T, ordering, canvas cache, synthesis and its parametric baseline,
    layout refiner, segmenter); a rerun skips finished stages and resumes an interrupted one.

    Serve the result with `sims serve --bank BANK --with-worker --weights-dir OUT/weights`.
    """
    from synthesis.cli.canvas import single_thread_faiss
    from synthesis.training.chain import Chain, train_chain

    name = "tiny" if tiny else config_set
    path = Path(name) if name.endswith(".json") else CONFIGS_DIR / "train-all" / f"{name}.json"
    vgg = str(vgg_weights) if vgg_weights else os.environ.get(VGG_ENV)
    single_thread_faiss()
    with one_line_errors():
        result = train_chain(
            bank,
            out,
            Chain.load(path),
            val_bank=val_bank,
            vgg_weights=vgg,
            time_limit_minutes=time_limit_minutes,
            progress=progress,
        )
    for stage, outcome in result.stages.items():
        typer.echo(f"{stage}: {outcome}")
    if result.complete:
        typer.echo(f"networks in {result.weights_dir}: sims serve --with-worker --weights-dir {result.weights_dir}")
    else:
        typer.echo(f"not finished: rerun the same command to go on ({out})")
