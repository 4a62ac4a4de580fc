"""Bank builds: read a dataset, cut and code its segments in parallel, publish a version.

Local builds use a process pool over all cores. Given a Dask scheduler address, the same
per-image function runs on the cluster's workers instead (they must see the dataset files).
Either way the results come back in dataset order and one writer stages them, so a build is
deterministic and a failure at any point publishes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from indexers.readers import DatasetReader, SampleRef
from memory_bank import FORMAT_VERSION, BankWriter, DatasetError, Manifest, SegmentConfig, SourceInfo, open_bank
from memory_bank.candidate_index import write_class_indexes
from memory_bank.config import Grid
from memory_bank.images import image_size
from memory_bank.records import ImageRecord, make_record
from memory_bank.storage import BankLocation, locate
from memory_bank.tables import ARRAYS_DIR
from memory_bank.writer import write_pixels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What a build published, and how fast."""

    manifest: Manifest
    version_dir: Path | str  # a URL for a bank on object storage
    seconds: float
    images_added: int
    images_skipped: int
    bytes_on_disk: int

    @property
    def images_per_second(self) -> float:
        return self.images_added / self.seconds if self.seconds > 0 else float("inf")


def with_instances(config: SegmentConfig, reader: DatasetReader, mode: str) -> SegmentConfig:
    """``config`` with the instance setting of ``sims index build --instances MODE`` for ``reader``.

    ``things`` cuts the reader's thing classes per instance (a :class:`DatasetError` if the
    dataset has no instance maps), ``none`` does not, ``auto`` does when the dataset ships them.
    """
    if mode not in ("auto", "none", "things"):
        raise DatasetError(f"--instances must be auto, none or things, got {mode!r}")
    if mode == "auto":
        mode = "things" if reader.has_instances else "none"
    if mode == "none":
        return replace(config, instances="none", thing_classes=())
    if not reader.thing_classes:
        raise DatasetError(f"{reader.name}: the dataset has no instance maps; build with --instances none")
    return replace(config, instances="things", thing_classes=reader.thing_classes)


def prepare_image(reader: DatasetReader, ref: SampleRef, config: SegmentConfig, resolution: Grid) -> ImageRecord:
    """Load one pair (and its instance map when ``config`` cuts per instance), resize it to the
    working resolution, extract and code its segments."""
    sample = reader.load(ref, instances=config.instances == "things")
    return make_record(
        sample.image,
        sample.label,
        classes=reader.classes,
        config=config,
        resolution=resolution,
        dataset=reader.name,
        split=ref.split,
        source_file=sample.source_file,
        label_file=sample.label_file,
        instances=sample.instances,
    )


def native_resolution(ref: SampleRef) -> Grid:
    """(rows, cols) of a sample's label map, read from its header only."""
    return image_size(ref.label_path)


def build_bank(
    reader: DatasetReader,
    out: str | Path,
    *,
    resolution: Grid | None = None,
    config: SegmentConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_timeout: float = 10.0,
    progress: bool = True,
) -> BuildReport:
    """Index every sample of ``reader`` into a new version of the bank at ``out`` and publish it.

    ``resolution`` defaults to the first label map's size. ``workers`` defaults to all cores
    (1 runs in this process). ``scheduler`` is a Dask scheduler address such as
    ``tcp://10.0.0.5:8786``; when given, the images are processed on that cluster, whose
    workers must see the dataset and ``out`` at the same paths (they write image chunks).
    ``out`` may be an fsspec URL (``s3://bucket/prefix``): the version is staged in a local
    temporary directory and uploaded when published (with ``scheduler``, the workers must see
    that directory, under ``TMPDIR``, at the same path).
    """
    refs = reader.refs
    resolution = resolution or native_resolution(refs[0])
    config = config or SegmentConfig()
    writer_args = {"classes": reader.classes, "resolution": resolution, "config": config}
    executor = _executor(workers, scheduler, scheduler_timeout)
    return _run(reader, refs, locate(out), writer_args, None, executor, progress, skipped=0)


def add_to_bank(
    reader: DatasetReader,
    bank_root: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_timeout: float = 10.0,
    progress: bool = True,
) -> BuildReport:
    """Append the samples of ``reader`` that the bank does not hold yet, as a new version.

    Existing images keep their ids and codes; only the new ones are processed. Images already
    present (same dataset and source file) are skipped.
    """
    base = open_bank(bank_root)
    if reader.classes != base.classes:
        raise DatasetError(f"{reader.name} has a different class table from the bank's; cannot append")
    known = set(zip(base.images["dataset"].to_pylist(), base.images["source_file"].to_pylist(), strict=True))
    refs = [r for r in reader.refs if (reader.name, r.relative_to(reader.root)[0]) not in known]
    skipped = len(reader) - len(refs)
    if not refs:
        raise DatasetError(f"all {skipped} images of {reader.root} are already in bank {base.version}; nothing to add")
    writer_args = {"classes": base.classes, "resolution": base.resolution, "config": base.config}
    executor = _executor(workers, scheduler, scheduler_timeout)
    return _run(reader, refs, locate(bank_root), writer_args, base, executor, progress, skipped=skipped)


def _run(
    reader: DatasetReader,
    refs: Sequence[SampleRef],
    root: BankLocation,
    writer_args: dict,
    base,
    executor: _executor,
    progress: bool,
    *,
    skipped: int,
) -> BuildReport:
    start = time.perf_counter()
    resolution, config = writer_args["resolution"], writer_args["config"]
    # 1. Start the workers (before zarr starts its I/O thread, so forked children are clean),
    # 2. then stage every image in dataset order; worker processes write their own pixel chunks.
    with executor as (run_map, remote), BankWriter(root, capacity=len(refs), base=base, **writer_args) as writer:
        task = _PrepareTask(reader, config, resolution, writer.arrays_path if remote else None, writer.next_image_id)
        records = run_map(task, list(enumerate(refs)))
        bar = tqdm(records, total=len(refs), desc=f"indexing {reader.name}", unit="img", disable=not progress)
        for record, checksums in bar:
            writer.add(record, checksums)
        source = SourceInfo(
            reader.name,
            str(reader.root),
            tuple(reader.splits),
            len(refs),
            reader.unlabelled_ids,
            reader.sequences.include,
            reader.sequences.exclude,
        )
        writer.finish([source])
        # 3. FAISS indexes of coarse codes, inside the staged version; 4. publish atomically.
        _write_candidate_indexes(writer, len(writer_args["classes"]))
        manifest = writer.publish()
    seconds = time.perf_counter() - start
    if root.is_local:
        version_dir: Path | str = Path(root.path) / "versions" / manifest.bank_version
        size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    else:
        version_dir = root.child("versions", manifest.bank_version).url
        size = root.child("versions", manifest.bank_version).size()
    report = BuildReport(manifest, version_dir, seconds, len(refs), skipped, size)
    c = manifest.counts
    log.info(
        "indexed %d images in %.1f s (%.1f img/s): %d segments kept, %d dropped below %d px; %.1f MB on disk",
        len(refs),
        seconds,
        report.images_per_second,
        c.segments,
        c.dropped_segments,
        config.min_area,
        size / 1e6,
    )
    return report


def migrate_bank(bank_root: str | Path) -> Manifest | None:
    """Publish the current version of an older-format bank again in today's format, as a new version.

    Same images, segments, ids and codes; image chunks are hard-linked (copied server-side on object
    storage); published atomically like
    a build (a crash leaves the old version current). Returns the new manifest, or None when the
    bank is already in today's format (nothing is written).
    """
    base = open_bank(bank_root)
    if base.format_version >= FORMAT_VERSION:
        return None
    m = base.manifest
    args = {"classes": m.classes, "resolution": m.resolution, "config": m.segment_config}
    with BankWriter(locate(bank_root), capacity=0, base=base, **args) as writer:
        writer.finish([])
        _write_candidate_indexes(writer, len(m.classes))
        manifest = writer.publish()
    log.info(
        "migrated %s (format %d) to %s (format %d)",
        base.version,
        m.format_version,
        manifest.bank_version,
        FORMAT_VERSION,
    )
    return manifest


def _write_candidate_indexes(writer: BankWriter, num_classes: int) -> None:
    """The FAISS indexes of the staged version's coarse codes, written into it."""
    coarse = np.asarray(zarr.open_array(writer.path / ARRAYS_DIR / "codes" / "coarse", mode="r")[:])
    class_id, mask_popcount = _segment_columns(writer.path, "class_id", "mask_popcount")
    write_class_indexes(writer.path, coarse, class_id, mask_popcount, num_classes)


def _segment_columns(version_dir: Path, *names: str) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    from memory_bank.tables import SEGMENTS_FILE

    table = pq.read_table(version_dir / SEGMENTS_FILE, columns=list(names))
    return [table[name].to_numpy() for name in names]


@dataclass(frozen=True)
class _PrepareTask:
    """A picklable ``ref -> ImageRecord`` function for process pools and Dask workers."""

    reader: DatasetReader
    config: SegmentConfig
    resolution: Grid

    arrays_path: Path | None = None
    first_image_id: int = 0

    def __call__(self, item: tuple[int, SampleRef]) -> tuple[ImageRecord, dict[str, str] | None]:
        position, ref = item
        record = prepare_image(self.reader, ref, self.config, self.resolution)
        if self.arrays_path is None:
            return record, None
        # Workers write their own per-image chunks, so pixels never cross process boundaries.
        checksums = write_pixels(self.arrays_path, self.first_image_id + position, record)
        return record.without_pixels(), checksums


class _executor:  # noqa: N801 - used like a function in a with-statement
    """Context manager yielding an ordered, bounded ``map(fn, items) -> iterator``, and
    whether that map runs in other processes (which then write pixels themselves)."""

    def __init__(self, workers: int | None, scheduler: str | None, timeout: float = 10.0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        self.scheduler = scheduler
        self._pool: Executor | None = None
        self._client = None

    def __enter__(self) -> tuple[Callable[[Callable, Sequence], Iterator], bool]:
        if self.scheduler:
            from dask.distributed import Client

            try:
                self._client = Client(self.scheduler, timeout=self.timeout)
            except OSError as e:
                raise DatasetError(f"cannot reach the Dask scheduler at {self.scheduler}: {e}") from e
            window = 4 * max(1, sum(self._client.nthreads().values()))
            return (lambda fn, items: _ordered(self._client.submit, fn, items, window, pure=False)), True
        if self.workers <= 1:
            return (lambda fn, items: map(fn, items)), False
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        self._pool = ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        self._pool.submit(int).result()  # with fork, this starts every worker now
        return (lambda fn, items: _ordered(self._pool.submit, fn, items, 4 * self.workers)), True

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()


def _die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker when the build process dies, even by ``kill -9``.

    Without it, orphaned workers live on under init, holding memory and the caller's stdout.
    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere, and for a
    parent that died before that was set, a daemon thread polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the thread below still watches
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="sims-parent-watch", daemon=True).start()


#: prctl option: the signal this process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 1.0


def _ordered(submit: Callable, fn: Callable, items: Sequence, window: int, **kw: object) -> Iterator:
    """Submit at most ``window`` tasks ahead and yield results in input order."""
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append(submit(fn, item, **kw))
        if len(pending) >= window:
            break
    while pending:
        yield pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(submit(fn, nxt, **kw))
