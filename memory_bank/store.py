"""Where bank versions live on disk, and how a new one is published atomically.

    BANK/
      CURRENT             name of the published version (replaced with an atomic rename)
      versions/<id>/      one directory per published version, never modified again
      staging/<id>/       builds in progress, or killed; readers never look here

A build writes everything under ``staging/<id>``, fsyncs it, renames it to ``versions/<id>``
(atomic on one filesystem) and only then swaps ``CURRENT``. A build killed at any point
leaves ``CURRENT`` and every published version untouched.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from memory_bank.atomic import atomic_file
from memory_bank.errors import BankBusyError, BankNotFoundError
from memory_bank.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = "staging"
WRITER_LOCK = ".writer.lock"


def new_version_id(now: datetime | None = None) -> str:
    """A version id that sorts by creation time: ``v20261121T233600Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"v{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"


def current_version(root: Path) -> str:
    """Name of the published version of the bank at ``root``."""
    root = Path(root)
    try:
        name = (root / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        if not root.exists():
            raise BankNotFoundError(f"no bank at {root}: the directory does not exist") from None
        raise BankNotFoundError(
            f"no bank at {root}: nothing has been published there ({CURRENT_FILE} is missing)"
        ) from None
    if not (root / VERSIONS_DIR / name / MANIFEST_FILE).is_file():
        raise BankNotFoundError(f"bank at {root} points at version {name!r}, which is missing")
    return name


def resolve_version_dir(path: Path, version: str | None = None) -> Path:
    """The directory of one published version.

    ``path`` may be a bank root (its current version, or ``version``) or a version directory.
    """
    path = Path(path)
    if version is None and (path / MANIFEST_FILE).is_file() and path.parent.name == VERSIONS_DIR:
        return path
    if version is not None:
        vdir = path / VERSIONS_DIR / version
        if not (vdir / MANIFEST_FILE).is_file():
            raise BankNotFoundError(f"bank at {path} has no published version {version!r}")
        return vdir
    return path / VERSIONS_DIR / current_version(path)


def list_versions(root: Path) -> list[str]:
    """Published versions of a bank, oldest first."""
    vdir = Path(root) / VERSIONS_DIR
    if not vdir.is_dir():
        return []
    manifests = [p / MANIFEST_FILE for p in vdir.iterdir() if (p / MANIFEST_FILE).is_file()]
    # Ids sort by their creation second; within one second, the manifest written first is older.
    return [m.parent.name for m in sorted(manifests, key=lambda m: (m.parent.name[:16], m.stat().st_mtime_ns))]


def _fsync_tree(path: Path, skip: set[str] = frozenset()) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if Path(full).relative_to(path).as_posix() in skip:
                continue
            fd = os.open(full, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def sync_and_hash(path: Path) -> str:
    """fsync a file and return its SHA-256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_checksums(
    directory: Path,
    *,
    skip: tuple[str, ...] = (MANIFEST_FILE,),
    known: dict[str, str] | None = None,
) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, keyed by POSIX relative path.

    Hashes in ``known`` are taken as given for files that exist (they were computed when the
    file was written).
    """
    known = known or {}
    out = {}
    directory = Path(directory)
    for dirpath, _, files in os.walk(directory):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(directory).as_posix()
            if rel in skip:
                continue
            if rel in known:
                out[rel] = known[rel]
                continue
            h = hashlib.sha256()
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = h.hexdigest()
    return dict(sorted(out.items()))


class Staging:
    """The staging directory of one version being built, under the bank's writer lock.

    The lock (``flock``) dies with its process: while a build runs, a second one fails fast;
    once it is dead, the next build knows every leftover staging directory is abandoned.
    """

    def __init__(self, root: Path, version: str | None = None) -> None:
        self.root = Path(root)
        self.version = version or new_version_id()
        staging = self.root / STAGING_DIR
        # One writer per bank: two builds publishing from the same parent would lose one's images.
        self._lock_fd = _lock_writer(self.root)
        self.removed_leftovers = _remove_abandoned(staging)
        self.path = staging / self.version
        self.path.mkdir()

    def publish(self, already_synced: set[str] = frozenset()) -> Path:
        """Make the staged version the bank's current version; returns its directory.

        Files named in ``already_synced`` (relative paths) were fsynced by their writers.
        """
        _fsync_tree(self.path, already_synced)
        versions = self.root / VERSIONS_DIR
        versions.mkdir(exist_ok=True)
        final = versions / self.version
        os.rename(self.path, final)
        _fsync_dir(versions)
        with atomic_file(self.root / CURRENT_FILE, fsync=True) as f:
            f.write(self.version + "\n")
        _fsync_dir(self.root)
        self.close()
        return final

    def abort(self) -> None:
        """Remove the staged files (for a failure this process caught itself)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the writer lock."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock_writer(root: Path) -> int:
    """Take the bank's writer lock (non-blocking); returns its file descriptor, to ``os.close``."""
    staging = root / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    fd = os.open(staging / WRITER_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BankBusyError(f"another build is writing to bank {root}; wait for it to finish") from None
    return fd


def gc_versions(root: Path, keep: int, *, dry_run: bool = False) -> list[str]:
    """Delete all but the ``keep`` newest published versions; returns the ones deleted (or, dry, to delete).

    The served version (``CURRENT``) is never deleted: after a rollback to an older version it is
    kept beside the ``keep`` newest. Later versions hard-link their parent's
    chunks, so deleting a parent leaves its children whole. Each version is first renamed into
    ``staging/`` (atomic), so a gc killed half-way never leaves a partial version visible; the next
    build removes what it left there. Runs under the writer lock, so never beside a build.
    """
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, not {keep}")
    root = Path(root)
    served = current_version(root)
    fd = _lock_writer(root)
    try:
        doomed = [v for v in list_versions(root)[:-keep] if v != served]
        if dry_run:
            return doomed
        for version in doomed:
            trash = root / STAGING_DIR / f"{version}.deleted"
            os.rename(root / VERSIONS_DIR / version, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if doomed:
            _fsync_dir(root / VERSIONS_DIR)
            log.info("deleted %d old versions of %s: %s", len(doomed), root, ", ".join(doomed))
        return doomed
    finally:
        os.close(fd)


def _remove_abandoned(staging: Path) -> list[str]:
    """Delete what dead builds left in ``staging``; call only while holding the writer lock."""
    removed = []
    for p in sorted(staging.iterdir()):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    for p in Path(staging.parent).glob(f".{CURRENT_FILE}.*.tmp"):
        p.unlink(missing_ok=True)
    if removed:
        log.info("removed %d abandoned staging directories: %s", len(removed), ", ".join(removed))
    return removed
