"""Local object stores for tests, each started in the test process: moto's S3 server and a GCS emulator."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(server: Any, filesystem: Any) -> Iterator[None]:
    """The block on a fresh instance cache of ``filesystem``, then ``server`` stopped: fsspec caches
    filesystem instances, so none made for another server is used in the block or kept after it."""
    filesystem.clear_instance_cache()
    try:
        yield
    finally:
        filesystem.clear_instance_cache()
        server.stop()


@contextmanager
def moto_s3(mp: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a free loopback port, the AWS variables pointing at it; yields its URL."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with _serving(server, s3fs.S3FileSystem):
        yield endpoint


@contextmanager
def gcs_emulator(mp: pytest.MonkeyPatch) -> Iterator[str]:
    """A GCS emulator (gcp-storage-emulator, in memory) on a free loopback port, gcsfs pointed at
    it anonymously, in this process and in subprocesses; yields its URL."""
    # gcsfs's experimental zonal-bucket probe asks a gRPC endpoint the emulator does not have
    # (a minute's timeout per bucket); gcsfs reads this when first imported.
    mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    gcsfs = pytest.importorskip("gcsfs")
    mp.setattr(emulator, "_read_data", _read_data_keeping_bytes(emulator))
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    # Readers closing a connection early (fsspec's prefetch) are not errors worth a traceback.
    server._api._httpd.handle_error = lambda request, address: None
    endpoint = f"http://127.0.0.1:{port}"
    mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
    mp.setenv("FSSPEC_GS_TOKEN", "anon")  # subprocesses: fsspec reads FSSPEC_* when imported
    mp.setitem(fsspec.config.conf, "gs", {"token": "anon"})
    with _serving(server, gcsfs.GCSFileSystem):
        yield endpoint


def _read_data_keeping_bytes(emulator: Any) -> Any:
    """The emulator's request-body reader, with multipart uploads split at their own line breaks.

    gcsfs writes its multipart uploads with LF line breaks; the emulator (2026.7.19) parses them
    with the email parser, which takes a CR ending the file plus the LF before the closing
    delimiter for one CRLF and drops that last byte of the object."""
    original = emulator._read_data

    def read_data(handler: Any, query: dict) -> Any:
        content_type = handler.headers.get("Content-Type") or ""
        if not content_type.startswith("multipart/related"):
            return original(handler, query)
        raw = emulator._decode_raw_data(emulator._read_raw_data(handler), handler)
        boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
        first_line = raw.split(b"\n", 1)[0]
        eol = b"\r\n" if first_line.endswith(b"\r") else b"\n"
        parts = []
        for chunk in raw.split(eol + b"--" + boundary)[:2]:  # a delimiter starts with a line break
            chunk = chunk.removeprefix(b"--" + boundary).removeprefix(eol)
            head, _, body = chunk.partition(eol + eol)
            parts.append((head.decode(), body))
        (_, meta), (head, content) = parts
        headers = dict(h.split(":", 1) for h in head.split(eol.decode()) if ":" in h)
        kind = next((v.strip() for k, v in headers.items() if k.strip().lower() == "content-type"), "")
        return {"meta": json.loads(meta), "content": content, "content-type": kind or "application/octet-stream"}

    return read_data
