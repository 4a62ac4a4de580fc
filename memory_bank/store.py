"""Where bank versions live on disk, and how a new one is published atomically.

    BANK/
      CURRENT             name of the published version (replaced with an atomic rename)
      versions/<id>/      one directory per published version, never modified again
      staging/<id>/       builds in progress, or killed; readers never look here

A build writes everything under ``staging/<id>``, fsyncs it, renames it to ``versions/<id>``
(atomic on one filesystem) and only then swaps ``CURRENT``. A build killed at any point
leaves ``CURRENT`` and every published version untouched.

A bank on object storage (an fsspec URL, :mod:`memory_bank.storage`) has the same layout. Its
build stages in a local temporary directory with the same code, then :class:`RemoteStaging`
uploads the version with ``manifest.json`` last (a version without one is not published) and
PUTs ``CURRENT``. Its writer lock is an object created with a conditional write (:class:`RemoteLock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from memory_bank.atomic import atomic_file
from memory_bank.errors import BankBusyError, BankNotFoundError
from memory_bank.manifest import MANIFEST_FILE
from memory_bank.storage import BankLocation, locate, storage_errors

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = "staging"
WRITER_LOCK = ".writer.lock"


def new_version_id(now: datetime | None = None) -> str:
    """A version id that sorts by creation time: ``v20261121T233600Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"v{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"


def current_version(root: Path | str | BankLocation) -> str:
    """Name of the published version of the bank at ``root`` (a path or an fsspec URL)."""
    loc = locate(root)
    if not loc.is_local:
        return _remote_current_version(loc)
    root = Path(loc.path)
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
    """The directory of one published version (of a local bank; see :func:`resolve_version`).

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


def resolve_version(where: Path | str | BankLocation, version: str | None = None) -> BankLocation:
    """The location of one published version: :func:`resolve_version_dir` for paths and URLs alike."""
    loc = locate(where)
    if loc.is_local:
        return BankLocation.local(resolve_version_dir(Path(loc.path), version))
    if version is None and PurePosixPath(loc.path).parent.name == VERSIONS_DIR and _remote_isfile(loc, MANIFEST_FILE):
        return loc
    if version is not None:
        vloc = loc.child(VERSIONS_DIR, version)
        if not _remote_isfile(vloc, MANIFEST_FILE):
            raise BankNotFoundError(f"bank at {loc} has no published version {version!r}")
        return vloc
    return loc.child(VERSIONS_DIR, _remote_current_version(loc))


def list_versions(root: Path | str | BankLocation) -> list[str]:
    """Published versions of a bank, oldest first."""
    loc = locate(root)
    if not loc.is_local:
        return _remote_list_versions(loc)
    vdir = Path(loc.path) / VERSIONS_DIR
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


def gc_versions(root: Path | str | BankLocation, keep: int, *, dry_run: bool = False) -> list[str]:
    """Delete all but the ``keep`` newest published versions; returns the ones deleted (or, dry, to delete).

    The served version (``CURRENT``) is never deleted: after a rollback to an older version it is
    kept beside the ``keep`` newest. Later versions hard-link their parent's
    chunks, so deleting a parent leaves its children whole. Each version is first renamed into
    ``staging/`` (atomic), so a gc killed half-way never leaves a partial version visible; the next
    build removes what it left there. Runs under the writer lock, so never beside a build.
    """
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, not {keep}")
    if not locate(root).is_local:
        return _remote_gc(locate(root), keep, dry_run=dry_run)
    root = Path(locate(root).path)
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


# Banks on object storage: the same layout, written with whole-object PUTs instead of renames.


def _remote_isfile(loc: BankLocation, rel: str) -> bool:
    try:
        return loc.isfile(rel)
    except storage_errors() as e:  # no credentials, unreachable endpoint, no such bucket
        raise BankNotFoundError(f"cannot read the bank at {loc}: {e}") from None


def _remote_current_version(loc: BankLocation) -> str:
    try:
        name = loc.read_text(CURRENT_FILE).strip()
    except FileNotFoundError:
        raise BankNotFoundError(
            f"no bank at {loc}: nothing has been published there ({CURRENT_FILE} is missing)"
        ) from None
    except storage_errors() as e:
        raise BankNotFoundError(f"cannot read the bank at {loc}: {e}") from None
    if not _remote_isfile(loc.child(VERSIONS_DIR, name), MANIFEST_FILE):
        raise BankNotFoundError(f"bank at {loc} points at version {name!r}, which is missing")
    return name


def _remote_versions(loc: BankLocation) -> tuple[list[str], list[str]]:
    """(published, incomplete) version ids under ``versions/``; incomplete ones have no manifest."""
    published, incomplete = [], []
    for name in loc.listdir(VERSIONS_DIR):
        (published if _remote_isfile(loc.child(VERSIONS_DIR, name), MANIFEST_FILE) else incomplete).append(name)
    return published, incomplete


def _remote_list_versions(loc: BankLocation) -> list[str]:
    published, _ = _remote_versions(loc)
    # As for local banks: creation second, then the manifest written first (object stores: to the second).
    return sorted(published, key=lambda v: (v[:16], loc.child(VERSIONS_DIR, v).modified(MANIFEST_FILE), v))


class RemoteLock:
    """The writer lock of a bank on object storage: the object ``staging/.writer.lock``.

    It is created with a conditional PUT (``If-None-Match: *``), so of two builds only one gets it;
    the holder rewrites it every :data:`LOCK_REFRESH_SECONDS` from a daemon thread and deletes it
    when done. A lock whose holder died (same host and its pid is gone, or not refreshed for
    :data:`LOCK_STALE_SECONDS`) is taken over; two builds taking over the same stale lock at once
    can both succeed, the one race this leaves to the operator.
    """

    def __init__(self, root: BankLocation, holder: str) -> None:
        self.root = root
        self.rel = f"{STAGING_DIR}/{WRITER_LOCK}"
        self._body = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        for attempt in range(2):
            try:
                root.write_bytes(self.rel, self._payload(), exclusive=True)
                break
            except storage_errors() as e:
                if not isinstance(e, FileExistsError):
                    raise BankNotFoundError(f"cannot write to the bank at {root}: {e}") from None
                if attempt or not self._stale():
                    raise BankBusyError(
                        f"another build is writing to bank {root} ({self._describe_holder()}); wait for it to "
                        f"finish, or delete {root.key(self.rel)} if that build is dead"
                    ) from None
                log.warning("taking over the stale writer lock of %s (%s)", root, self._describe_holder())
                root.remove(self.rel)
        self._thread = threading.Thread(target=self._refresh, name="sims-bank-lock", daemon=True)
        self._thread.start()

    def _payload(self) -> bytes:
        return json.dumps({**self._body, "refreshed_at": time.time()}).encode()

    def _read(self) -> dict:
        try:
            return json.loads(self.root.read_bytes(self.rel))
        except (FileNotFoundError, ValueError):
            return {}

    def _describe_holder(self) -> str:
        d = self._read()
        return f"held by {d.get('holder', '?')}, pid {d.get('pid', '?')} on {d.get('host', '?')}"

    def _stale(self) -> bool:
        d = self._read()
        if not d:
            return True
        if d.get("host") == socket.gethostname() and isinstance(d.get("pid"), int) and not _pid_alive(d["pid"]):
            return True
        return time.time() - float(d.get("refreshed_at", 0)) > LOCK_STALE_SECONDS

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_SECONDS):
            try:
                self.root.write_bytes(self.rel, self._payload())
            except OSError as e:  # a lost refresh only shortens the lease; the next one may pass
                log.warning("could not refresh the writer lock of %s: %s", self.root, e)

    def release(self) -> None:
        """Stop refreshing and delete the lock (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.root.remove(self.rel)


#: How often a build rewrites its lock object, and after how long without that a lock is stale.
LOCK_REFRESH_SECONDS = 30.0
LOCK_STALE_SECONDS = 300.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteStaging:
    """:class:`Staging` for a bank on object storage: stage locally, upload on :meth:`publish`.

    The version is staged in a local temporary directory (``TMPDIR``) by the same code as a local
    build. Publishing uploads every file to ``versions/<id>/`` except ``manifest.json``, copies the
    parent's chunks named in :attr:`parent_copies` server-side, uploads the manifest (now the version
    is published) and PUTs ``CURRENT`` (now it is served). A build killed half-way leaves at most an
    incomplete version (no manifest) that readers ignore and ``gc`` deletes.
    """

    def __init__(self, root: BankLocation, version: str | None = None) -> None:
        self.root = root
        self.version = version or new_version_id()
        self._lock: RemoteLock | None = RemoteLock(root, self.version)
        self.removed_leftovers: list[str] = []  # nothing is staged remotely; gc removes incomplete versions
        self._tmp = Path(tempfile.mkdtemp(prefix=f"sims-staging-{self.version}-"))
        self.path = self._tmp / self.version
        self.path.mkdir()
        #: Files of the new version that are copies of a parent's: relative path -> source location.
        self.parent_copies: dict[str, BankLocation] = {}

    @property
    def target(self) -> BankLocation:
        return self.root.child(VERSIONS_DIR, self.version)

    def publish(self, already_synced: set[str] = frozenset()) -> BankLocation:
        """Upload the staged version, then make it current; returns its location."""
        del already_synced  # nothing to fsync: the upload reads the files
        self._upload_data()
        self._upload_manifest()
        self._switch_current()
        self.close()
        return self.target

    def _upload_data(self) -> None:
        target = self.target
        local, remote = [], []
        for dirpath, _, files in os.walk(self.path):
            for name in files:
                rel = (Path(dirpath) / name).relative_to(self.path).as_posix()
                if rel != MANIFEST_FILE:
                    local.append(os.path.join(dirpath, name))
                    remote.append(target.key(rel))
        if local:
            target.fs.put(local, remote)
        if self.parent_copies:  # server-side copies: no bytes pass through this machine
            rels = sorted(self.parent_copies)
            target.fs.copy([self.parent_copies[r].key(r) for r in rels], [target.key(r) for r in rels])

    def _upload_manifest(self) -> None:
        self.target.fs.put_file(str(self.path / MANIFEST_FILE), self.target.key(MANIFEST_FILE))

    def _switch_current(self) -> None:
        self.root.write_bytes(CURRENT_FILE, (self.version + "\n").encode())

    def abort(self) -> None:
        """Remove the staged files and whatever this build uploaded (for a failure it caught)."""
        try:
            if not self.target.isfile(MANIFEST_FILE):
                self.target.remove(recursive=True)
        except OSError as e:
            log.warning("could not remove the incomplete upload %s (gc will): %s", self.target, e)
        self.close()

    def close(self) -> None:
        """Release the writer lock and remove the local staging directory."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def open_staging(root: Path | str | BankLocation) -> Staging | RemoteStaging:
    """The staging area of a new version of the bank at ``root``: local or on object storage."""
    loc = locate(root)
    if loc.is_local:
        Path(loc.path).mkdir(parents=True, exist_ok=True)
        return Staging(Path(loc.path))
    return RemoteStaging(loc)


def _remote_gc(loc: BankLocation, keep: int, *, dry_run: bool) -> list[str]:
    """:func:`gc_versions` on object storage; also deletes incomplete versions (no manifest).

    A version is unpublished by deleting its manifest first, so a gc killed half-way leaves at
    most an incomplete version, which the next gc deletes.
    """
    served = _remote_current_version(loc)
    lock = RemoteLock(loc, "gc")  # an upload in progress is an incomplete version too: never beside one
    try:
        _, incomplete = _remote_versions(loc)
        doomed = [v for v in _remote_list_versions(loc)[:-keep] if v != served]
        doomed += [v for v in incomplete if v != served]
        if dry_run:
            return doomed
        for version in doomed:
            vloc = loc.child(VERSIONS_DIR, version)
            vloc.remove(MANIFEST_FILE)
            vloc.remove(recursive=True)
        if doomed:
            log.info("deleted %d old or incomplete versions of %s: %s", len(doomed), loc, ", ".join(doomed))
        return doomed
    finally:
        lock.release()
