"""One ``POST /synthesize`` in process: the layout is decoded, validated and cut once (issue 30)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memory_bank import Bank
from memory_bank import png as png_module
from memory_bank.png import encode_layout_png
from retrieval_service import query as query_module
from retrieval_service.api.routes import synthesize as synthesize_route
from synthesis.canvas import builder as builder_module
from synthesis.worker import runtime
from tests.test_overload import Calls, service

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_in_process_synthesis_decodes_validates_and_cuts_its_layout_once(
    val_bank: Bank, val_bank_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = encode_layout_png(np.asarray(val_bank.labels[3]))
    with service(val_bank_path, tiny_weights, monkeypatch) as c:
        assert c.post("/synthesize", files={"layout": ("l.png", png, "image/png")}).status_code == 200  # warm
        route, worker = Calls(synthesize_route.decode_layout), Calls(runtime.decode_layout)
        cuts = Calls(query_module.extract_segments)
        checks = {m: Calls(m.check_label_map) for m in (png_module, query_module, builder_module)}
        for module, calls in checks.items():
            monkeypatch.setattr(module, "check_label_map", calls)
        monkeypatch.setattr(synthesize_route, "decode_layout", route)
        monkeypatch.setattr(runtime, "decode_layout", worker)
        monkeypatch.setattr(query_module, "extract_segments", cuts)
        r = c.post("/synthesize", files={"layout": ("l.png", png, "image/png")})
        assert r.status_code == 200, r.text
        assert (route.n, worker.n, cuts.n) == (1, 0, 1)
        assert sum(c.n for c in checks.values()) == 1  # the decoder's
        # A bad layout is still told by the route, before any synthesis slot is taken.
        bad = encode_layout_png(np.full((4, 4), 3, np.uint8))
        r = c.post("/synthesize", files={"layout": ("l.png", bad, "image/png")})
        assert r.status_code == 422 and r.json()["error"] == "wrong_layout_size", r.text
        assert worker.n == 0
