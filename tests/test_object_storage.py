"""Banks on object storage: fsspec URLs for build, add, open, verify, gc and the service.

The store-agnostic tests run twice, on moto's S3 server and on a GCS emulator (gcp-storage-emulator),
both started in the test process. The emulator ignores conditional writes (``ifGenerationMatch``),
so the writer lock's exclusion is tested on fsspec's memory filesystem, which has them, as S3 does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from fastapi.testclient import TestClient

from indexers.build import build_bank
from indexers.readers import create_reader
from memory_bank import Bank, BankBusyError, BankNotFoundError, current_version, list_versions, open_bank
from memory_bank.png import encode_layout_png
from memory_bank.storage import STORAGE_OPTIONS_ENV, env_storage_options, is_url, locate
from memory_bank.store import CURRENT_FILE, MANIFEST_FILE, VERSIONS_DIR, RemoteLock, RemoteStaging, gc_versions
from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings
from sims.cli import main
from tests.object_stores import gcs_emulator, moto_s3
from tests.test_api_reload import publish

REPO = Path(__file__).resolve().parents[1]
KEY = "storage-key"
ADMIN = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """An in-process moto S3 server, with the AWS variables pointing at it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(STORAGE_OPTIONS_ENV, raising=False)
        with moto_s3(mp) as endpoint:
            yield endpoint


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    """An in-process GCS emulator, with gcsfs pointed at it."""
    with pytest.MonkeyPatch.context() as mp, gcs_emulator(mp) as endpoint:
        yield endpoint


@pytest.fixture(scope="module", params=["s3", "gs"])
def store(request: pytest.FixtureRequest) -> str:
    """The protocol of an object store the test runs against, with its server started."""
    request.getfixturevalue({"s3": "s3", "gs": "gcs"}[request.param])
    return request.param


def new_bucket(protocol: str) -> str:
    """A new, empty bucket, as the URL ``proto://name``."""
    name = f"sims-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem(protocol).mkdir(name)
    return f"{protocol}://{name}"


@pytest.fixture
def bucket(store: str) -> str:
    return new_bucket(store)


def build_val(out: str | Path, sample_root: Path) -> None:
    build_bank(create_reader("camvid", sample_root, ["val"]), out, workers=1, progress=False)


@pytest.fixture(scope="module")
def remote_val(store: str, sample_root: Path) -> str:
    """The sample val bank built straight to the store (read-only for tests)."""
    url = f"{new_bucket(store)}/banks/val"
    build_val(url, sample_root)
    return url


def retrieve(client: TestClient, layout: np.ndarray) -> dict:
    r = client.post("/retrieve", files={"layout": ("l.png", encode_layout_png(layout), "image/png")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    body.pop("bank_version", None)
    body.pop("timings_ms", None)
    return body


# 1. The storage module, on fsspec's in-memory filesystem


def test_locations_of_paths_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_url("s3://b/p") and is_url("memory://x") and not is_url("file:///x") and not is_url(str(tmp_path))
    assert locate(tmp_path).is_local and locate(tmp_path).local_path == tmp_path
    assert locate(f"file://{tmp_path}").local_path == tmp_path
    mem = locate(f"memory://sims-{uuid.uuid4().hex}/bank")
    assert not mem.is_local and mem.local_path is None and mem.url.startswith("memory://")
    mem.write_bytes("a/b.txt", b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        mem.write_bytes("a/b.txt", b"two", exclusive=True)
    mem.write_bytes("c.txt", b"three")
    assert mem.read_text("a/b.txt") == "one" and mem.files() == ["a/b.txt", "c.txt"]
    assert mem.listdir() == ["a", "c.txt"] and mem.listdir("missing") == [] and mem.size() == 8
    mem.remove("a", recursive=True)
    assert mem.files() == ["c.txt"]
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, '{"anon": true}')
    assert env_storage_options() == {"anon": True}
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "[1]")
    with pytest.raises(BankNotFoundError, match="JSON object"):
        env_storage_options()


def test_a_bank_in_memory_reads_like_the_local_one(sample_root: Path, val_bank: Bank) -> None:
    url = f"memory://sims-{uuid.uuid4().hex}/bank"
    build_val(url, sample_root)
    bank = open_bank(url)
    assert bank.verify() == [] and bank.manifest.checksums == val_bank.manifest.checksums
    got, want = bank.segment(5), val_bank.segment(5)
    np.testing.assert_array_equal(got.crop, want.crop)
    np.testing.assert_array_equal(got.context, want.context)
    locate(bank.path).write_bytes("segments.parquet", b"tampered")
    assert bank.num_segments == val_bank.num_segments  # the open bank keeps the table it read ...
    assert bank.verify() == ["changed: segments.parquet"]  # ... and verify reads the objects again


def test_no_bank_at_a_url_is_a_one_line_error() -> None:
    with pytest.raises(BankNotFoundError, match="CURRENT is missing"):
        open_bank(f"memory://sims-{uuid.uuid4().hex}/nothing")
    with pytest.raises(BankNotFoundError, match="cannot open"):
        open_bank("nosuchprotocol://x/y")


def test_remote_writer_lock_excludes_a_second_writer_and_a_dead_ones_is_taken_over() -> None:
    root = locate(f"memory://sims-{uuid.uuid4().hex}/bank")
    lock = RemoteLock(root, "first")
    with pytest.raises(BankBusyError, match="another build is writing"):
        RemoteLock(root, "second")
    lock.release()
    RemoteLock(root, "third").release()
    # A lock left by a process of this host that is gone: stale at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root.write_bytes(
        "staging/.writer.lock", f'{{"holder": "x", "host": "{socket.gethostname()}", "pid": {dead.pid}}}'.encode()
    )
    RemoteLock(root, "fourth").release()
    assert not root.exists("staging/.writer.lock")


def test_an_unreachable_store_is_a_one_line_error(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIMS_STORAGE_OPTIONS reaches s3fs: here an endpoint where nothing listens.
    monkeypatch.setenv(
        STORAGE_OPTIONS_ENV, '{"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}'
    )
    with pytest.raises(BankNotFoundError, match=r"cannot read the bank at s3://b-x/bank: .*127\.0\.0\.1:9"):
        current_version("s3://b-x/bank")


# 2. Build, open, verify and serve a bank on S3 and GCS


def test_a_bank_built_to_a_store_equals_the_local_one(remote_val: str, val_bank_path: Path) -> None:
    remote, local = open_bank(remote_val), open_bank(val_bank_path)
    assert remote.path == f"{remote_val}/versions/{remote.version}" and remote.location.url == remote.path
    assert remote.verify() == []
    assert remote.manifest.checksums == local.manifest.checksums  # the same bytes, file by file
    assert remote.num_segments == local.num_segments > 0
    np.testing.assert_array_equal(np.asarray(remote.photos[3]), np.asarray(local.photos[3]))
    assert remote.faiss_index_bytes(0) == local.faiss_index_path(0).read_bytes()
    assert list_versions(remote_val) == [remote.version]
    assert open_bank(remote.path).version == remote.version  # a version URL opens too


def test_retrieve_through_the_service_is_identical(remote_val: str, val_bank_path: Path) -> None:
    layouts = [np.asarray(open_bank(val_bank_path).labels[i]) for i in range(open_bank(val_bank_path).num_images)]
    with (
        TestClient(create_app(Settings(bank=remote_val, wait_for_bank=True))) as on_store,
        TestClient(create_app(Settings(bank=val_bank_path, wait_for_bank=True))) as on_disk,
    ):
        assert on_store.get("/bank").json()["version"] == current_version(remote_val)
        for layout in layouts:
            got, want = retrieve(on_store, layout), retrieve(on_disk, layout)
            assert got == want and got["components"]


@pytest.mark.parametrize("failure", ["os", "botocore"])
def test_storage_failing_mid_request_is_a_503_with_retry_after(
    remote_val: str, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    with TestClient(create_app(Settings(bank=remote_val, wait_for_bank=True))) as client:
        assert client.get("/segments/0").status_code == 200

        async def outage(*args: object, **kwargs: object) -> bytes:
            if failure == "os":
                raise ConnectionResetError("connection reset by peer")
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        # Every array read of a bank on a URL goes through zarr's fsspec store.
        monkeypatch.setattr(zarr.storage.FsspecStore, "get", outage)
        r = client.get("/segments/1")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        body = r.json()
        assert body["error"] == "storage_unavailable" and "\n" not in body["message"]
        assert body["message"].startswith("reading the bank failed (")
        monkeypatch.undo()
        assert client.get("/segments/1").status_code == 200  # the store is back: so is the service


#: Every route that reads the bank's arrays while it answers (issue 29, item 5): (method, path, request options).
READING_ROUTES = {
    "segment batch": ("POST", "/segments/batch", {"json": {"ids": [2, 3, 70]}}),
    "thumbnail": ("GET", "/segments/4/thumbnail", {}),
    "photo": ("GET", "/images/5/photo", {}),
    "image layout": ("GET", "/images/6/layout", {}),
    "full retrieval": ("POST", "/retrieve", {"data": {"mode": "full"}}),
    "synthesis": ("POST", "/synthesize", {}),
}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("route", sorted(READING_ROUTES))
def test_storage_failing_under_any_route_is_a_503_never_a_500(
    remote_val: str, route: str, tiny_weights: Path, val_bank_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    for k in ("REFINE", "TRANSFORM", "ORDERING"):
        monkeypatch.setenv(f"SIMS_WORKER_{k}_WEIGHTS", "none")
    method, path, options = READING_ROUTES[route]
    if method == "POST" and "json" not in options:  # a layout upload
        png = encode_layout_png(np.asarray(open_bank(val_bank_path).labels[7]))
        options = {**options, "files": {"layout": ("l.png", png, "image/png")}}
    settings = Settings(
        bank=remote_val, wait_for_bank=True, synthesis_backend="in_process", synthesis_weights=tiny_weights
    )
    with TestClient(create_app(settings)) as client:

        async def outage(*args: object, **kwargs: object) -> bytes:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        monkeypatch.setattr(zarr.storage.FsspecStore, "get", outage)
        r = client.request(method, path, **options)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "storage_unavailable" and r.headers["retry-after"] == "5"
        assert (
            body["message"].startswith("reading the bank failed (EndpointConnectionError")
            and "\n" not in body["message"]
        )
        monkeypatch.undo()
        assert client.request(method, path, **options).status_code == 200  # the store is back


def test_cli_on_a_url(remote_val: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "verify", remote_val]) == 0
    assert "files match their checksums" in capsys.readouterr().out
    assert main(["index", "info", remote_val]) == 0
    out = capsys.readouterr().out
    assert f"bank      {remote_val}" in out and "images    8 at" in out


def test_settings_keep_urls_and_paths_apart(tmp_path: Path) -> None:
    assert Settings(bank="s3://b/p").bank == "s3://b/p"
    assert Settings(bank=str(tmp_path)).bank == tmp_path


# 3. New versions: add, crashes, reload and gc


def test_add_publishes_a_new_version_on_a_store(bucket: str, sample_root: Path, extra_data: Path) -> None:
    url = f"{bucket}/bank"
    build_val(url, sample_root)
    v1 = current_version(url)
    v2 = publish(url, extra_data)
    new, old = open_bank(url), open_bank(url, v1)
    assert v2 != v1 and new.manifest.parent_version == v1 and list_versions(url) == [v1, v2]
    assert new.num_images == old.num_images + 2 and new.verify() == []
    # The parent's chunks were copied server-side: same bytes, same checksums.
    np.testing.assert_array_equal(np.asarray(new.photos[0]), np.asarray(old.photos[0]))
    chunk = "arrays.zarr/photos/c/0/0/0/0"
    assert old.manifest.checksums[chunk] == new.manifest.checksums[chunk]
    assert not locate(url).exists("staging/.writer.lock")


def test_a_failed_upload_leaves_the_previous_version(
    bucket: str, sample_root: Path, extra_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{bucket}/bank"
    build_val(url, sample_root)
    v1 = current_version(url)

    def fail(self: RemoteStaging) -> None:
        raise OSError("connection reset while uploading the manifest")

    monkeypatch.setattr(RemoteStaging, "_upload_manifest", fail)
    with pytest.raises(OSError, match="connection reset"):
        publish(url, extra_data)
    assert current_version(url) == v1 and open_bank(url).verify() == []
    assert locate(url).listdir(VERSIONS_DIR) == [v1]  # the caught failure removed its partial upload
    monkeypatch.undo()
    assert publish(url, extra_data) != v1  # and released the lock


def test_a_build_killed_mid_upload_leaves_the_previous_version(
    bucket: str, sample_root: Path, extra_data: Path, tmp_path: Path
) -> None:
    url = f"{bucket}/bank"
    build_val(url, sample_root)
    v1 = current_version(url)
    marker = tmp_path / "uploaded"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from indexers.build import add_to_bank
        from indexers.readers import create_reader
        from memory_bank.store import RemoteStaging

        def hang(self):  # the data is up, the manifest is not: wait here to be killed
            Path({str(marker)!r}).touch()
            time.sleep(600)

        RemoteStaging._upload_manifest = hang
        add_to_bank(create_reader("camvid", Path({str(extra_data)!r}), ["train"]), {url!r}, workers=1, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the build never reached the manifest upload"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    root = locate(url)
    incomplete = [v for v in root.listdir(VERSIONS_DIR) if v != v1]
    assert len(incomplete) == 1 and not root.isfile(f"{VERSIONS_DIR}/{incomplete[0]}/{MANIFEST_FILE}")
    assert root.files()  # the dead build's data and lock are there ...
    assert current_version(url) == v1 and list_versions(url) == [v1]  # ... but readers see only v1
    assert open_bank(url).verify() == []
    # gc takes over the dead build's lock and deletes the incomplete version; v1 stays served.
    assert gc_versions(url, keep=1) == incomplete
    assert root.listdir(VERSIONS_DIR) == [v1] and open_bank(url).version == v1


def test_reload_picks_up_a_version_published_to_a_store(bucket: str, sample_root: Path, extra_data: Path) -> None:
    url = f"{bucket}/bank"
    build_val(url, sample_root)
    v1 = current_version(url)
    with TestClient(create_app(Settings(bank=url, api_key=KEY, wait_for_bank=True))) as client:
        assert client.post("/admin/reload", headers=ADMIN).json()["reloaded"] is False
        v2 = publish(url, extra_data)
        body = client.post("/admin/reload", headers=ADMIN).json()
        assert (body["reloaded"], body["previous_version"], body["version"]) == (True, v1, v2)
        assert client.get("/bank").json()["version"] == v2
        assert client.get(f"/segments/0/meta?version={v1}").status_code == 200  # an older version by id


def test_gc_on_a_store_keeps_the_newest_and_the_served(
    bucket: str, sample_root: Path, extra_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{bucket}/bank"
    build_val(url, sample_root)
    v1 = current_version(url)
    v2 = publish(url, extra_data)
    root = locate(url)
    root.write_bytes(f"{VERSIONS_DIR}/v20000101T000000Z-dead00/segments.parquet", b"partial")  # a crashed upload
    root.write_bytes(CURRENT_FILE, f"{v1}\n".encode())  # roll back: v1 is served, v2 the newest
    assert main(["index", "gc", url, "--keep", "1", "--dry-run"]) == 0
    assert "would delete 1 version(s): v20000101T000000Z-dead00" in capsys.readouterr().out
    assert gc_versions(url, keep=1) == ["v20000101T000000Z-dead00"]
    assert list_versions(url) == [v1, v2]
    root.write_bytes(CURRENT_FILE, f"{v2}\n".encode())
    assert gc_versions(url, keep=1) == [v1]
    assert list_versions(url) == [v2] and root.listdir(VERSIONS_DIR) == [v2]
    assert open_bank(url).verify() == []


@pytest.mark.usefixtures("one_torch_thread")
def test_in_process_synthesis_on_a_store_equals_local(
    remote_val: str, val_bank_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in {
        "SIMS_WORKER_REFINE_WEIGHTS": "none",
        "SIMS_WORKER_TRANSFORM_WEIGHTS": "none",
        "SIMS_WORKER_ORDERING_WEIGHTS": "none",
    }.items():
        monkeypatch.setenv(k, v)
    png = encode_layout_png(np.asarray(open_bank(val_bank_path).labels[3]))
    images = []
    for bank in (remote_val, val_bank_path):
        settings = Settings(
            bank=bank, wait_for_bank=True, synthesis_backend="in_process", synthesis_weights=tiny_weights
        )
        with TestClient(create_app(settings)) as client:
            r = client.post("/synthesize", files={"layout": ("l.png", png, "image/png")}, data={"seed": "1"})
            assert r.status_code == 200, r.text
            images.append(r.content)
    assert images[0] == images[1]
