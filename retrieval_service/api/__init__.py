"""The retrieval service's HTTP API (FastAPI). Build it with :func:`retrieval_service.api.app.create_app`.

Clients and synthesis workers never import this package: the models they share with it are in
:mod:`retrieval_service.http_models` and :mod:`retrieval_service.types`, the PNG codecs in
:mod:`memory_bank.png` and the error handlers in :mod:`retrieval_service.http_errors`.
"""
