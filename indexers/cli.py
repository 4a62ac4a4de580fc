"""``sims index``: build, extend, inspect and verify banks. Commands parse and delegate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from memory_bank import SegmentConfig, current_version, list_versions, open_bank
from memory_bank.config import format_grids, parse_grids, parse_size
from memory_bank.manifest import SourceInfo
from memory_bank.sequences import SequenceFilter
from memory_bank.storage import is_url

app = typer.Typer(help="Build and inspect memory banks.", no_args_is_help=True)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="camvid, cityscapes, ade20k, cocostuff or folder.")]
RootOpt = Annotated[Path, typer.Option("--root", "-r", help="Dataset root directory.")]
SplitsOpt = Annotated[
    str | None,
    typer.Option("--splits", help="Comma-separated splits, e.g. train,val (default: the training split only)."),
]
SequencesOpt = Annotated[
    str | None,
    typer.Option(
        "--sequences", help="Comma-separated sequences (drives, cities) to keep, e.g. 0006R0; others are left out."
    ),
]
ExcludeSequencesOpt = Annotated[
    str | None,
    typer.Option(
        "--exclude-sequences",
        help="Comma-separated sequences to leave out, e.g. 0006R0 (the held-out drive of a fair evaluation).",
    ),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", "-j", help="Local processes (default: all cores).")]
SchedulerOpt = Annotated[
    str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:8786) to run the build on.")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
# Banks are paths or fsspec URLs (s3://bucket/prefix): str, since Path would fold `s3://` into `s3:/`.
BankArg = Annotated[str, typer.Argument(help="Bank directory, or an fsspec URL such as s3://bucket/prefix.")]


def _sequence_note(source: SourceInfo) -> str:
    f = SequenceFilter(source.sequences, source.exclude_sequences)
    return f" [{f.describe()}]" if f else ""


def _splits(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


@app.command()
def build(
    dataset: DatasetOpt,
    root: RootOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Bank directory or URL (created, or given a new version).")],
    splits: SplitsOpt = None,
    sequences: SequencesOpt = None,
    exclude_sequences: ExcludeSequencesOpt = None,
    resolution: Annotated[
        str | None, typer.Option(help="Working resolution ROWSxCOLS (default: the dataset's own).")
    ] = None,
    min_area: Annotated[int, typer.Option(help="Drop components smaller than this (pixels).")] = SegmentConfig.min_area,
    connectivity: Annotated[int, typer.Option(help="4 or 8.")] = SegmentConfig.connectivity,
    fine_grid: Annotated[str, typer.Option(help="Grid of exact scoring, ROWSxCOLS.")] = "x".join(
        map(str, SegmentConfig.fine_grid)
    ),
    coarse_grids: Annotated[
        str | None,
        typer.Option(help="Grids of the FAISS code pyramid, ROWSxCOLS,... (default: 1/3 and 1/5 of the fine grid)."),
    ] = None,
    instances: Annotated[
        Literal["auto", "none", "things"],
        typer.Option(
            help="Cut thing classes per instance from the dataset's instance maps: things, none, or auto "
            "(things when the dataset ships instance maps).",
        ),
    ] = "auto",
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Index a dataset into a new bank version and publish it atomically."""
    from indexers.build import build_bank, with_instances
    from indexers.readers import create_reader

    config = SegmentConfig(
        connectivity=connectivity,  # type: ignore[arg-type]
        min_area=min_area,
        fine_grid=parse_size(fine_grid),
        coarse_grids=parse_grids(coarse_grids) if coarse_grids else None,
    )
    reader = create_reader(dataset, root, _splits(splits), SequenceFilter.parse(sequences, exclude_sequences))
    config = with_instances(config, reader, instances)
    report = build_bank(
        reader,
        out,
        resolution=parse_size(resolution) if resolution else None,
        config=config,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    typer.echo(
        f"published {report.manifest.bank_version}: {report.images_added} images in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} img/s)"
    )
    typer.echo(describe(out))


@app.command()
def add(
    dataset: DatasetOpt,
    root: RootOpt,
    bank: Annotated[str, typer.Option("--bank", "-b", help="Existing bank to extend (directory or URL).")],
    splits: SplitsOpt = None,
    sequences: SequencesOpt = None,
    exclude_sequences: ExcludeSequencesOpt = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Append a dataset's new images to a bank as a new version, without a rebuild."""
    from indexers.build import add_to_bank
    from indexers.readers import create_reader

    reader = create_reader(dataset, root, _splits(splits), SequenceFilter.parse(sequences, exclude_sequences))
    report = add_to_bank(reader, bank, workers=workers, scheduler=scheduler, progress=progress)
    typer.echo(
        f"published {report.manifest.bank_version}: added {report.images_added} images "
        f"(skipped {report.images_skipped} already present) in {report.seconds:.1f} s"
    )
    typer.echo(describe(bank))


@app.command()
def migrate(bank: BankArg) -> None:
    """Rewrite an older-format bank's current version in today's format, as a new version (atomic)."""
    from indexers.build import migrate_bank

    before = open_bank(bank)
    manifest = migrate_bank(bank)
    if manifest is None:
        typer.echo(f"{before.version} is already format {before.format_version}: nothing to do")
        return
    typer.echo(
        f"published {manifest.bank_version}: format {before.format_version} -> {manifest.format_version}, "
        f"{manifest.counts.segments} segments of {manifest.counts.images} images (parent {before.version})"
    )


@app.command()
def info(
    bank: BankArg,
    version: Annotated[str | None, typer.Option(help="A published version (default: current).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Print what a bank holds."""
    if as_json:
        typer.echo(json.dumps(open_bank(bank, version).manifest.to_dict(), indent=2))
    else:
        typer.echo(describe(bank, version))


@app.command()
def verify(bank: BankArg, version: Annotated[str | None, typer.Option()] = None) -> None:
    """Check every file of a bank version against the checksums in its manifest."""
    b = open_bank(bank, version)
    problems = b.verify()
    for p in problems:
        typer.echo(p)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{b.version}: all {len(b.manifest.checksums)} files match their checksums")


@app.command()
def gc(
    bank: BankArg,
    keep: Annotated[int, typer.Option(help="How many of the newest versions to keep (at least 1).")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete old versions: keep the KEEP newest, and always the served (CURRENT) one."""
    from memory_bank.store import gc_versions

    if keep < 1:
        raise typer.BadParameter(f"--keep must be at least 1, not {keep}")
    deleted = gc_versions(bank, keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(deleted)} version(s)" + (": " + ", ".join(deleted) if deleted else ""))
    kept = len(set(list_versions(bank)) - set(deleted))
    typer.echo(f"{'would keep' if dry_run else 'kept'} {kept}, serving {current_version(bank)}")


def describe(bank_path: str | Path, version: str | None = None) -> str:
    """A human-readable summary of a bank version."""
    b = open_bank(bank_path, version)
    m, cfg = b.manifest, b.config
    c = m.counts
    if isinstance(b.path, Path):
        size = sum(p.stat().st_size for p in b.path.rglob("*") if p.is_file())
    else:
        size = b.location.size()
    kept_pct = 100 * c.segments / max(1, c.segments + c.dropped_segments)
    lines = [
        f"bank      {bank_path if is_url(bank_path) else Path(bank_path).resolve()}",
        f"version   {m.bank_version} (format v{m.format_version}, created {m.created_at})"
        + (f", parent {m.parent_version}" if m.parent_version else ""),
        f"versions  {len(list_versions(bank_path))} published",
        f"images    {c.images} at {m.resolution[0]}x{m.resolution[1]}",
        f"segments  {c.segments} kept ({kept_pct:.0f}%), {c.dropped_segments} dropped below {cfg.min_area} px "
        f"({c.dropped_area} px in all)",
        f"codes     fine grid {cfg.fine_grid[0]}x{cfg.fine_grid[1]}, coarse grids "
        f"{format_grids(cfg.coarse_grids)}, {cfg.connectivity}-connectivity, "
        f"context box x{cfg.context_scale}",
        "cut       "
        + (
            f"thing classes {list(cfg.thing_classes)} per instance, the rest in connected components"
            if cfg.instances == "things"
            else "connected components of one class"
        ),
        f"disk      {size / 1e6:.1f} MB ({size / max(1, c.images) / 1e3:.0f} kB/image, "
        f"{size / max(1, c.segments) / 1e3:.1f} kB/segment)",
        "sources   "
        + "; ".join(
            f"{s.dataset} {','.join(s.splits)}{_sequence_note(s)} ({s.images} images) from {s.root}" for s in m.sources
        ),
        "classes",
    ]
    width = max(len(n) for n in b.classes.names)
    for cls, n in zip(b.classes, c.segments_per_class, strict=True):
        r, g, bl = cls.color
        lines.append(f"  {cls.id:>3} {cls.name:<{width}}  {n:>7} segments  rgb({r},{g},{bl})")
    return "\n".join(lines)
