"""Which engine serves each bank version: one in this process (the default), or shards on Dask.

With ``shards`` or ``cluster`` set (``sims serve --shards N``, ``--cluster ADDRESS``), the first load
starts the Dask client (and with ``shards``, a local cluster of that many worker processes), once
per service process, and every bank version loaded, at startup and on each reload,
gets a :class:`~retrieval_service.sharded.ShardedEngine` whose shards load that version on the
workers. The routes see the same :class:`~retrieval_service.engine.LayoutEngine` either way.
"""

from __future__ import annotations

import logging
import threading

from memory_bank import Bank
from memory_bank.storage import env_storage_options
from retrieval_service.api.settings import Settings
from retrieval_service.engine import LayoutEngine, RetrievalEngine

log = logging.getLogger(__name__)


class Engines:
    """Makes the engine of a bank version, as the settings say (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Connect to (or start) the Dask cluster of a sharded service, once; blocking."""
        with self._lock:
            if not self.settings.sharded or self.cluster is not None:
                return
            from retrieval_service.shard_cluster import ShardCluster  # Dask only where it is used

            self.cluster = ShardCluster(self.settings.shards, self.settings.cluster)
        log.info("sharded retrieval: %d shards on %d Dask workers", self.cluster.shards, self.cluster.num_workers)

    def __call__(self, bank: Bank) -> LayoutEngine:
        """The engine of ``bank``: loaded (every shard, when sharded) but not yet warmed."""
        if not self.settings.sharded:
            return RetrievalEngine.from_bank(bank)
        self.start()
        from retrieval_service.shard_cluster import DaskShards
        from retrieval_service.shard_plan import plan_shards
        from retrieval_service.shard_server import BankShardSource
        from retrieval_service.sharded import ShardedEngine

        source = BankShardSource.of(bank, env_storage_options())
        cluster = self.cluster
        assert cluster is not None
        plan = plan_shards(source.class_sizes(), cluster.shards, self.settings.shard_max_part or None)
        shards = DaskShards(cluster.client, source, plan, timeout=self.settings.shard_timeout)
        return ShardedEngine(source, shards)

    def close(self) -> None:
        """Close the Dask client (and the local cluster it started)."""
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
