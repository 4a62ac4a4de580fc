"""A loaded bank version and its warmed engine: what every process that answers from a bank holds.

The service's hot-swappable holder (:mod:`retrieval_service.api.state`) and the Dask synthesis
replicas (:mod:`synthesis.worker.cluster`) both load a version through :func:`load_state`. No web
framework is imported here, so that synthesis can load a bank without the HTTP layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from memory_bank import Bank, open_bank
from retrieval_service.engine import LayoutEngine, RetrievalEngine
from retrieval_service.types import RetrievalOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankState:
    """One loaded bank version and its engine."""

    bank: Bank
    engine: LayoutEngine
    loaded_at: datetime
    load_seconds: float

    @property
    def version(self) -> str:
        return self.bank.version


def load_state(
    root: Path | str, version: str | None = None, engines: Callable[[Bank], LayoutEngine] = RetrievalEngine.from_bank
) -> BankState:
    """Open a bank version, build its engine with ``engines`` (default: in this process) and warm it
    (blocking; call from a worker thread)."""
    start = time.perf_counter()
    bank = open_bank(root, version)
    engine = engines(bank)
    engine.warm_up()  # every class's FAISS index, so no request pays for it (or races to build it)
    bank.column("image_id")  # the segment-table columns are cached on first use
    if bank.num_images:
        # One real retrieval: first calls into torch and FAISS are much slower than the rest.
        engine.retrieve(np.asarray(bank.labels[0]), RetrievalOptions(k=1, mode="fast"))
    seconds = time.perf_counter() - start
    log.info("loaded bank %s (%d segments) in %.2f s", bank.version, bank.num_segments, seconds)
    return BankState(bank, engine, datetime.now(UTC), seconds)
