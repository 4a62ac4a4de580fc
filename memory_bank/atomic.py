"""Files that appear whole or not at all: written beside their place, then renamed over it.

One writer for the bank's ``CURRENT`` and manifest, the canvas cache, model directories and training
runs, so that a process killed mid-write never leaves a half-written file under the real name;
and :func:`read_json`, which reads such a JSON file back and names a missing or malformed one in a
:class:`~memory_bank.errors.SimsError` of the caller's kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from memory_bank.errors import SimsError


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """A file open for writing that replaces ``path`` when the block ends without an error.

    The temporary file ``.<name>.<random>.tmp`` sits in the same directory (a rename is atomic only
    within one filesystem) and is removed if the block raises. ``fsync`` flushes it to disk before
    the rename, for files whose loss after a crash matters (the bank's ``CURRENT``). The file gets
    the usual permissions (``open``'s, with the umask), not ``mkstemp``'s owner-only ones.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` as indented JSON with a final newline, through :func:`atomic_file`."""
    with atomic_file(path) as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def read_json(path: str | Path, error: type[SimsError], missing: str = "{path} is missing") -> Any:
    """The JSON document in ``path``.

    A missing file raises ``error(missing.format(path=path))``, a file that is not JSON ``error("<path> is
    not valid JSON: <why>")``.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(missing.format(path=path)) from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from e


__all__ = ["atomic_file", "read_json", "write_json_atomic"]
