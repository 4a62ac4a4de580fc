"""Where a bank lives: a local directory or a prefix on object storage, behind one small type.

A bank root is given as a local path (``/data/banks/camvid``) or an fsspec URL
(``s3://bucket/banks/camvid``, ``gs://...``, ``memory://...``). :func:`locate` turns either into
a :class:`BankLocation`: an fsspec filesystem plus a path inside it. Local banks keep today's
``pathlib`` code everywhere (fsync, rename, flock); only remote ones go through fsspec.

Credentials and endpoints are fsspec's (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, or fsspec's config files). Extra filesystem options can be passed as
``storage_options`` wherever an API takes a URL, or to every process through the environment
variable ``SIMS_STORAGE_OPTIONS`` (a JSON object, e.g. ``{"anon": true}``); explicit options win.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.local import LocalFileSystem

from memory_bank.errors import BankNotFoundError

#: JSON object of fsspec storage options applied to every remote bank URL (explicit options win).
STORAGE_OPTIONS_ENV = "SIMS_STORAGE_OPTIONS"


def is_url(where: object) -> bool:
    """True for ``proto://...`` strings other than ``file://`` (those are local paths)."""
    return isinstance(where, str) and "://" in where and not where.startswith("file://")


def env_storage_options() -> dict[str, Any]:
    """The storage options of ``SIMS_STORAGE_OPTIONS`` (empty when unset)."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise BankNotFoundError(f"{STORAGE_OPTIONS_ENV} is not valid JSON: {e}") from None
    if not isinstance(options, dict):
        raise BankNotFoundError(f"{STORAGE_OPTIONS_ENV} must be a JSON object, not {type(options).__name__}")
    return options


@dataclass(frozen=True)
class BankLocation:
    """A directory of a bank (its root, or one version) on some filesystem.

    ``path`` is the filesystem's own path (no protocol); ``storage_options`` are what made ``fs``
    (kept for zarr, which opens its own asynchronous instance).
    """

    fs: fsspec.AbstractFileSystem
    path: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def local(cls, path: str | Path) -> BankLocation:
        return cls(LocalFileSystem(), str(Path(path)))

    # Identity
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        """The directory as a :class:`Path` for local banks, None for remote ones."""
        return Path(self.path) if self.is_local else None

    @property
    def url(self) -> str:
        """The location as a user would write it: a path, or ``proto://...``."""
        return self.path if self.is_local else self.fs.unstrip_protocol(self.path)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path.rstrip("/")).name

    def __str__(self) -> str:
        return self.url

    def child(self, *parts: str) -> BankLocation:
        """The location of a subdirectory."""
        return BankLocation(self.fs, self.key(*parts), self.storage_options)

    def key(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under this location."""
        return "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts if p)])

    # Reading
    def exists(self, rel: str = "") -> bool:
        return bool(self.fs.exists(self.key(rel)))

    def isfile(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.key(rel))  # another process may have written it since a listing
        return bool(self.fs.isfile(self.key(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """The whole object; FileNotFoundError if it is missing."""
        return self.fs.cat_file(self.key(rel))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def modified(self, rel: str) -> datetime:
        return self.fs.modified(self.key(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names of the entries directly under ``rel`` (empty if there is none)."""
        self.fs.invalidate_cache(self.key(rel))  # listings are cached; other processes publish
        try:
            entries = self.fs.ls(self.key(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(PurePosixPath(str(e).rstrip("/")).name for e in entries)

    def files(self) -> list[str]:
        """POSIX paths, relative to this location, of every file under it."""
        base = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        return sorted(p[len(base) :] for p in self.fs.find(self.path) if p.startswith(base))

    def size(self) -> int:
        """Bytes of every file under this location."""
        return int(sum(self.fs.du(self.path, total=False).values())) if self.exists() else 0

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """A Parquet file through pyarrow (local: its own filesystem; remote: this fsspec one)."""
        if self.is_local:
            return pq.read_table(Path(self.path) / rel, columns=columns)
        return pq.read_table(self.key(rel), columns=columns, filesystem=self.fs)

    def open_group(self, rel: str) -> zarr.Group:
        """A Zarr v3 group, read only."""
        if self.is_local:
            return zarr.open_group(Path(self.path) / rel, mode="r", zarr_format=3)
        # zarr wants an asynchronous filesystem; wrapping this (sync) instance shares its
        # connections and settings, and its own finalizer closes them at exit.
        fs = AsyncFileSystemWrapper(self.fs, asynchronous=True)
        store = zarr.storage.FsspecStore(fs, read_only=True, path=self.key(rel))
        return zarr.open_group(store, mode="r", zarr_format=3)

    def sha256(self, rel: str) -> str:
        """SHA-256 (hex) of one file, streamed."""
        h = hashlib.sha256()
        with self.fs.open(self.key(rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    # Writing (remote banks only: local ones keep their fsync + rename code in store.py)
    def write_bytes(self, rel: str, data: bytes, *, exclusive: bool = False) -> None:
        """One PUT of the whole object; ``exclusive`` fails with FileExistsError if it exists.

        Exclusive writes are conditional PUTs (``If-None-Match: *``) where the filesystem has them
        (s3fs, memory); elsewhere an existence check then a write, which two writers can race.
        """
        if not exclusive:
            self.fs.pipe_file(self.key(rel), data)
            return
        try:
            self.fs.pipe_file(self.key(rel), data, mode="create")
        except TypeError:  # a filesystem without conditional writes
            if self.exists(rel):
                raise FileExistsError(self.key(rel)) from None
            self.fs.pipe_file(self.key(rel), data)
        except OSError as e:
            if _is_precondition_failure(e):
                raise FileExistsError(self.key(rel)) from e
            raise

    def remove(self, rel: str = "", *, recursive: bool = False) -> None:
        """Delete a file (or, ``recursive``, everything under a prefix); missing is not an error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(rel), recursive=recursive)
        self.fs.invalidate_cache()


def storage_errors() -> tuple[type[BaseException], ...]:
    """What reading a remote bank can raise besides OSError: botocore's own errors (no credentials,
    unreachable endpoint) are not OSErrors. For ``except`` clauses that turn them into one line."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


def _is_precondition_failure(e: BaseException) -> bool:
    text = f"{e!r} {getattr(e, '__cause__', '')!r}"
    return isinstance(e, FileExistsError) or "PreconditionFailed" in text or "412" in text


def locate(where: str | Path | BankLocation, storage_options: Mapping[str, Any] | None = None) -> BankLocation:
    """The :class:`BankLocation` of a local path or an fsspec URL.

    ``storage_options`` (merged over ``SIMS_STORAGE_OPTIONS``) configure a remote filesystem.
    """
    if isinstance(where, BankLocation):
        return where
    if not is_url(where):
        text = str(where)
        return BankLocation.local(text.removeprefix("file://"))
    options = {**env_storage_options(), **(storage_options or {})}
    try:
        fs, path = fsspec.core.url_to_fs(str(where), **options)
    except (ImportError, ValueError) as e:  # e.g. s3fs not installed, or an unknown protocol
        raise BankNotFoundError(f"cannot open {where}: {e}") from None
    return BankLocation(fs, path, options)


__all__ = ["STORAGE_OPTIONS_ENV", "BankLocation", "env_storage_options", "is_url", "locate", "storage_errors"]
