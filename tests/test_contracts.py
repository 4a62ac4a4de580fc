"""One contract per concept: what HTTP-only processes import, the status names, the error table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from memory_bank.errors import (
    LayoutError,
    LayoutTooLargeError,
    SimsError,
    TimedOutError,
    UnavailableError,
    UpstreamError,
)
from retrieval_service.http_errors import sims_error_headers, sims_error_status
from retrieval_service.http_models import RetrieveRequest
from retrieval_service.types import DEFAULT_CANDIDATES, RetrievalOptions, Status, StatusName

REPO = Path(__file__).resolve().parents[1]


def imported_after(*modules: str) -> list[str]:
    """The modules loaded by a fresh interpreter that imports ``modules``."""
    code = f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_types_import_nothing_heavy() -> None:
    loaded = imported_after("retrieval_service.types", "retrieval_service.http_models")
    banned = ("retrieval_service.engine", "retrieval_service.api", "faiss", "torch", "numba", "fastapi", "memory_bank")
    assert [m for m in loaded if m.startswith(banned)] == []


def test_synthesis_over_http_imports_no_service_app_and_no_engine() -> None:
    # The worker and `sims synthesize` reach the service through its types, codecs and client only.
    # (torch is theirs: they run networks; numba too: memory_bank cuts query layouts into components.)
    loaded = imported_after("synthesis.worker.app", "synthesis.remote", "synthesis.synthesize_files")
    banned = ("retrieval_service.api", "retrieval_service.engine", "faiss")
    assert [m for m in loaded if m.startswith(banned)] == []


def synthesis_modules() -> list[str]:
    """Every module of the ``synthesis`` package, by dotted name."""
    root = REPO / "synthesis"
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
    )


def test_no_synthesis_module_imports_the_service_api() -> None:
    # Layers point one way: synthesis may use the engine, types and client, never the HTTP layer.
    # (The Dask replicas load banks through retrieval_service.bank_state, below the API.)
    modules = synthesis_modules()
    assert "synthesis.worker.cluster" in modules
    loaded = imported_after(*modules)
    assert [m for m in loaded if m.startswith("retrieval_service.api")] == []


def test_the_client_imports_no_web_framework_torch_or_engine() -> None:
    loaded = imported_after("retrieval_service.client")
    banned = ("retrieval_service.api", "retrieval_service.engine", "faiss", "torch", "fastapi", "starlette")
    assert [m for m in loaded if m.startswith(banned)] == []


def test_status_names_are_the_statuses() -> None:
    assert set(get_args(StatusName)) == {s.value for s in Status}


def test_candidates_are_in_process_only() -> None:
    assert RetrievalOptions(candidates=64).candidates == 64
    assert "candidates" not in RetrieveRequest.model_fields and RetrieveRequest.candidates == DEFAULT_CANDIDATES
    with pytest.raises(ValueError, match="candidates"):
        RetrieveRequest.model_validate_json('{"layout_png": "x", "candidates": 64}')


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (LayoutError("bad"), 422, "invalid_layout"),
        (LayoutError("bad", kind="wrong_layout_size"), 422, "wrong_layout_size"),
        (LayoutTooLargeError("big"), 413, "layout_too_large"),
        (UnavailableError("later", kind="worker_not_ready"), 503, "worker_not_ready"),
        (TimedOutError("slow", kind="synthesis_timeout"), 504, "synthesis_timeout"),
        (UpstreamError("refused", kind="boom", status=409), 409, "boom"),
        (UpstreamError("not ready", kind="not_ready", status=503), 503, "not_ready"),
        (UpstreamError("broke", kind="internal_error", status=500), 502, "internal_error"),
        (UpstreamError("broke", kind="synthesis_failed"), 502, "synthesis_failed"),
        (SimsError("other"), 400, "sims_error"),
    ],
)
def test_one_table_maps_sims_errors_to_statuses(error: SimsError, status: int, kind: str) -> None:
    assert sims_error_status(error) == (status, kind)


def test_retry_after_comes_with_unavailable_errors() -> None:
    assert sims_error_headers(UnavailableError("later", retry_after=1)) == {"Retry-After": "1"}
    assert sims_error_headers(UnavailableError("later")) is None
    assert sims_error_headers(LayoutError("bad")) is None
