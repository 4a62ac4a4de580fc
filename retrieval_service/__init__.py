"""SIMS retrieval service: the retrieval engine and the HTTP API."""
