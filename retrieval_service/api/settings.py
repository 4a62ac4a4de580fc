"""Service configuration: one ``Settings`` object, read from ``SIMS_*`` environment variables.

``sims serve`` flags override the environment. The settings are exported back to the
environment before uvicorn starts (:meth:`Settings.to_env`), so that every worker process of
``--workers N`` builds the same configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import limits
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memory_bank.storage import is_url
from retrieval_service.types import DEFAULT_SYNTHESIS_TIMEOUT, SynthesisTimeout, ThreadCount, settings_env

ENV_PREFIX = "SIMS_"

#: The route classes a key can open: what costs seconds of CPU (``segments`` is ``POST /segments/batch``),
#: and what changes the service.
RouteClass = Literal["synthesize", "full", "segments", "admin"]
ROUTE_CLASSES: tuple[RouteClass, ...] = get_args(RouteClass)


def parse_route_keys(text: str) -> dict[RouteClass, frozenset[str]]:
    """``"synthesize:k1,*:k2"`` -> the keys of each route class (``*`` = every class); ValueError if malformed."""
    keys: dict[RouteClass, set[str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        route_class, sep, key = entry.partition(":")
        if not sep or not key or route_class not in (*ROUTE_CLASSES, "*"):
            raise ValueError(
                # The entry itself is not quoted: it may be a key.
                f"SIMS_API_KEYS entries are class:key with class one of {', '.join(ROUTE_CLASSES)} or *"
            )
        for c in ROUTE_CLASSES if route_class == "*" else (route_class,):
            keys.setdefault(c, set()).add(key)
    return {c: frozenset(k) for c, k in keys.items()}


class Settings(BaseSettings):
    """Everything the retrieval service can be configured with (env ``SIMS_<NAME>``)."""

    # hide_input_in_errors: a malformed key setting must not print the keys.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True)

    bank: Path | str | None = Field(
        None,
        description="Bank root to serve (its CURRENT version): a directory, or an fsspec URL such as "
        "`s3://bucket/prefix` (credentials as fsspec reads them; extra options as JSON in SIMS_STORAGE_OPTIONS).",
    )
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes; each holds its own copy of the index.")
    api_key: SecretStr | None = Field(
        None,
        description="Key required in X-API-Key by /admin/* (as an `admin:` entry of api_keys); without an admin "
        "key the admin API is disabled.",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Keys per route class, comma-separated `class:key` entries; classes `synthesize` (/synthesize), "
        "`full` (mode=full retrieval), `segments` (POST /segments/batch), `admin` (/admin/*) and `*` (all four), "
        "e.g. `synthesize:k1,full:k1,segments:k1,admin:k2`. A class with a key needs one in X-API-Key; one without "
        "stays open (admin: disabled). Other retrieval and single-segment reads are always open.",
    )
    rate_limit: str | None = Field(
        None,
        description="Per-client rate limit of the API (not /livez, /readyz, /metrics), in the `limits` notation, "
        "e.g. `20/second;600/minute`; unset = off. 429 with Retry-After above it.",
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where the rate-limit counters live: `memory://` (per worker process) or a shared store such "
        "as `redis://host:6379`.",
    )
    limit_concurrency: int = Field(
        256,
        ge=0,
        description="Connections (and requests) a worker process serves at once; above it uvicorn answers 503 "
        "(0 = unbounded).",
    )
    timeout_keep_alive: float = Field(5.0, gt=0.0, description="Seconds an idle keep-alive connection stays open.")
    header_timeout: float = Field(
        10.0, gt=0.0, description="Seconds a connection may take to send a complete request head (then closed)."
    )
    body_timeout: float = Field(
        30.0, gt=0.0, description="Seconds the service waits for each chunk of a request body (then 408)."
    )
    watch_interval: float = Field(
        0.0, ge=0.0, description="Poll the bank's CURRENT every this many seconds and reload on change (0 = off)."
    )
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    max_layout_pixels: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Largest layout (width x height) accepted (413 above), read from its header.",
    )
    retrieve_threads: ThreadCount = Field(
        0, description="Retrievals run at once in the thread pool (0 = number of CPU cores); others queue."
    )
    wait_for_bank: bool = Field(
        False, description="Load the bank before accepting connections instead of in the background."
    )
    synthesis_url: str | None = Field(
        None,
        description="Synthesis worker URL(s), comma-separated, tried in turn; /synthesize answers 503 without a "
        "worker (or a synthesis_backend).",
    )
    synthesis_backend: str | None = Field(
        None,
        description="Run synthesis in this process with the named backend (an entry point of the "
        "`sims.synthesis_backends` group, e.g. `in_process`: what `sims serve --with-worker` sets); "
        "takes precedence over synthesis_url.",
    )
    synthesis_cluster: str | None = Field(
        None,
        description="Dask scheduler address (e.g. `tcp://127.0.0.1:8786`, from `sims cluster up`) whose synthesis "
        "workers (Dask resource `synthesis`) answer /synthesize; takes precedence over synthesis_url.",
    )
    synthesis_weights: Path | None = Field(
        None, description="Synthesis network directory for an in-process backend (default: its own, weights/synthesis)."
    )
    synthesis_timeout: SynthesisTimeout = Field(
        DEFAULT_SYNTHESIS_TIMEOUT, description="Seconds a synthesis may take before /synthesize answers 504."
    )
    max_batch_pixels: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="Most crop pixels one POST /segments/batch returns (the sum of its segments' box areas, known "
        "before any is read; 413 above). A layout's segments hold about 0.3 Mpx at 360x480.",
    )
    segments_timeout: float = Field(
        10.0,
        gt=0.0,
        description="Seconds a POST /segments/batch may take: one predicted to take longer (behind the batches "
        "running or queued, at the measured rate) is refused with 503 segments_busy and Retry-After.",
    )
    refusal_hold: float = Field(
        0.2,
        ge=0.0,
        le=5.0,
        description="Seconds a refused /synthesize or /segments/batch (503 *_busy, decided at once from the "
        "request head) waits before it is sent, holding no body and no CPU: clients that retry at once, ignoring "
        "Retry-After, then cannot spin the service. 0 answers at once.",
    )
    synthesis_max_in_flight: int = Field(
        0,
        ge=0,
        description="Syntheses forwarded to the workers at once (0 = 4 per worker URL; on a cluster, each "
        "replica's one plus SIMS_WORKER_QUEUE); more get 503 synthesis_busy with Retry-After before their upload "
        "is read.",
    )
    shards: int = Field(
        0,
        ge=0,
        description="Shard the bank over this many local Dask worker processes (docs/scaling.md); 0 = one process "
        "holds the whole index (with `cluster`: as many shards as the cluster has workers).",
    )
    cluster: str | None = Field(
        None, description="Address of a running Dask scheduler (`tcp://host:8786`) whose workers hold the shards."
    )
    shard_timeout: float = Field(
        10.0, gt=0.0, description="Seconds a shard may take to answer before /retrieve answers 503 naming it."
    )
    shard_max_part: int = Field(
        0,
        ge=0,
        description="Most segments of one class a shard holds (larger classes are cut into row ranges); 0 = an "
        "even share of the bank.",
    )
    log_level: str = Field("info", description="uvicorn and service log level.")
    cors_origins: str | None = Field(
        None,
        description="Origins allowed to call the API from a browser page served elsewhere, comma-separated "
        "(e.g. `http://localhost:5173`; `*` for any); unset = no CORS headers (the page at `/` needs none).",
    )

    @property
    def synthesis_urls(self) -> list[str]:
        """The configured worker URLs (without trailing slashes)."""
        return [u.strip().rstrip("/") for u in (self.synthesis_url or "").split(",") if u.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        """The configured CORS origins (without trailing slashes); empty = CORS off."""
        return [o.strip().rstrip("/") for o in (self.cors_origins or "").split(",") if o.strip()]

    @field_validator("bank", mode="before")
    @classmethod
    def _bank_path_or_url(cls, value: object) -> object:
        # A URL stays a str (Path would fold `s3://` into `s3:/`); anything else is a directory.
        return value if value is None or is_url(value) else Path(str(value))

    @field_validator("synthesis_cluster", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes `VAR: ${VAR:-}` as an empty string: the same as not set.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_route_keys(value.get_secret_value())  # fail at startup, not on the first request
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        if value:
            limits.parse_many(value)  # a ValueError names what it could not parse
        return value or None

    def route_keys(self, route_class: RouteClass) -> frozenset[str]:
        """The keys that open ``route_class`` (empty: none configured)."""
        keys = parse_route_keys(self.api_keys.get_secret_value()) if self.api_keys else {}
        found = keys.get(route_class, frozenset())
        if route_class == "admin" and self.api_key is not None and self.api_key.get_secret_value():
            found |= {self.api_key.get_secret_value()}
        return found

    @property
    def sharded(self) -> bool:
        """Whether the index is held by shards on Dask workers instead of this process."""
        return self.shards > 0 or self.cluster is not None

    @property
    def retrieve_concurrency(self) -> int:
        """Retrievals allowed to run at once."""
        return self.retrieve_threads or os.cpu_count() or 1

    def to_env(self) -> dict[str, str]:
        """These settings as ``SIMS_*`` environment variables (unset values are left out)."""
        return settings_env(self, ENV_PREFIX)
