"""The synthesis worker: the pipeline behind ``POST /synthesize``.

- :mod:`~synthesis.worker.settings`: ``WorkerSettings`` (flags of ``sims worker``, env ``SIMS_WORKER_*``).
- :mod:`~synthesis.worker.runtime`: loading the networks and running one request.
- :mod:`~synthesis.worker.reply`: a synthesis as PNG, JSON or multipart.
- :mod:`~synthesis.worker.app`: the worker's FastAPI app (``sims worker``), which retrieves over HTTP.
- :mod:`~synthesis.worker.backend`: the same pipeline inside the retrieval service, no HTTP hop
  (``sims serve --with-worker``).
"""
