"""The hot-swappable bank: which (bank, engine) the service answers with, and how it changes.

A request takes :attr:`BankHolder.current` once and uses that :class:`BankState` to the end,
so a reload never changes the bank under a request in flight. A reload opens the bank's
newest published version (its ``CURRENT``), builds and warms a new engine in a worker thread,
then swaps one reference; the old state is freed when its last request finishes. Reloads
are serialised. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread

from memory_bank import Bank, current_version, list_versions, open_bank
from memory_bank.errors import UnavailableError
from memory_bank.storage import locate
from retrieval_service.bank_state import BankState, load_state
from retrieval_service.http_errors import ApiError

log = logging.getLogger(__name__)

#: Other versions kept open for segment fetches that name one (``?version=``).
_OTHER_VERSIONS = 4


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did."""

    reloaded: bool
    previous_version: str | None
    version: str
    seconds: float


class BankHolder:
    """The current :class:`BankState` of one bank root, swapped atomically on reload.

    ``root`` is a directory or an fsspec URL (``s3://bucket/prefix``; options from ``SIMS_STORAGE_OPTIONS``).
    """

    def __init__(self, root: Path | str, loader: Callable[[Path | str, str | None], BankState] = load_state) -> None:
        location = locate(root)
        self.root: Path | str = location.local_path or location.url
        self.name = location.name
        self._loader = loader
        self._state: BankState | None = None
        self.error: str | None = None  # why the last load or reload failed, if it did
        self._reload_lock = asyncio.Lock()
        self._others: OrderedDict[str, Bank] = OrderedDict()
        self._others_lock = threading.Lock()
        self.listeners: list[Callable[[BankState], None]] = []

    @property
    def current(self) -> BankState | None:
        """The state serving requests now, or None before the first load."""
        return self._state

    def require(self) -> BankState:
        """The current state; :class:`UnavailableError` (503 ``not_ready``) while there is none."""
        state = self._state
        if state is None:
            why = f"loading the bank failed: {self.error}" if self.error else "the bank is still loading"
            raise UnavailableError(why, kind="not_ready", retry_after=1)
        return state

    async def reload(self) -> ReloadOutcome:
        """Serve the bank's newest published version; no-op if it is already served.

        A failed load leaves the previous state serving and re-raises.
        """
        async with self._reload_lock:
            start = time.perf_counter()
            old = self._state
            try:
                newest = await to_thread.run_sync(current_version, self.root)
                if old is not None and newest == old.version:
                    return ReloadOutcome(False, old.version, newest, time.perf_counter() - start)
                state = await to_thread.run_sync(self._loader, self.root, newest)
            except Exception as e:
                self.error = str(e)
                raise
            self._state = state  # the swap: requests that already took `old` keep it
            self.error = None
            for listener in self.listeners:
                listener(state)
            if old is not None:
                log.info("reloaded bank: %s -> %s", old.version, state.version)
            return ReloadOutcome(True, old.version if old else None, state.version, time.perf_counter() - start)

    async def watch(self, interval: float) -> None:
        """Reload whenever the bank's ``CURRENT`` changes, polling every ``interval`` seconds.

        With ``--workers N`` each worker process watches for itself, which is how a publish
        reaches all of them (``/admin/reload`` reaches only the worker that got the request).
        """
        while True:
            await asyncio.sleep(interval)
            try:
                newest = await to_thread.run_sync(current_version, self.root)
                state = self._state
                if state is None or newest != state.version:
                    await self.reload()
            except Exception as e:  # keep watching: a half-written bank or a full disk may pass
                log.warning("bank watcher: %s", e)

    def available_versions(self) -> list[str]:
        """Published versions of the bank, oldest first."""
        return list_versions(self.root)

    def bank_for(self, version: str | None) -> Bank:
        """The served bank, or another published version of it (opened on demand, a few kept open)."""
        state = self.require()
        if version is None or version == state.version:
            return state.bank
        with self._others_lock:
            bank = self._others.get(version)
            if bank is not None:
                self._others.move_to_end(version)
                return bank
        # Only names listed under versions/ are opened, so `version` can never point elsewhere.
        if version not in list_versions(self.root):
            raise ApiError(404, "version_not_found", f"bank {self.name} has no published version {version!r}")
        bank = open_bank(self.root, version)
        with self._others_lock:
            self._others[version] = bank
            while len(self._others) > _OTHER_VERSIONS:
                self._others.popitem(last=False)
        return bank
