"""Service configuration: one ``Settings`` object, read from ``SIMS_*`` environment variables.

``sims serve`` flags override the environment. The settings are exported back to the
environment before uvicorn starts (:meth:`Settings.to_env`), so that every worker process of
``--workers N`` builds the same configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SIMS_"


class Settings(BaseSettings):
    """Everything the retrieval service can be configured with (env ``SIMS_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    bank: Path | None = Field(None, description="Bank root directory to serve (its CURRENT version).")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes; each holds its own copy of the index.")
    api_key: SecretStr | None = Field(
        None, description="Key required in X-API-Key by /admin/*; without one the admin API is disabled."
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
    retrieve_threads: int = Field(
        0, ge=0, description="Retrievals run at once in the thread pool (0 = number of CPU cores); others queue."
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
    synthesis_weights: Path | None = Field(
        None, description="Synthesis network directory for an in-process backend (default: its own, weights/synthesis)."
    )
    synthesis_timeout: float = Field(
        60.0, gt=0.0, description="Seconds a synthesis may take before /synthesize answers 504."
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

    @property
    def retrieve_concurrency(self) -> int:
        """Retrievals allowed to run at once."""
        return self.retrieve_threads or os.cpu_count() or 1

    def to_env(self) -> dict[str, str]:
        """These settings as ``SIMS_*`` environment variables (unset values are left out)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + name.upper()] = str(value)
        return env
