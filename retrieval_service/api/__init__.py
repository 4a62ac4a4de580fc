"""The retrieval service's HTTP API (FastAPI). Build it with :func:`retrieval_service.api.app.create_app`.

This package imports nothing heavy itself, so the client can use :mod:`.models` and
:mod:`.layouts` without loading the engine.
"""
