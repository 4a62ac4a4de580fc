"""Worker configuration: one ``WorkerSettings`` object, read from ``SIMS_WORKER_*`` environment variables.

``sims worker`` flags override the environment. The in-process backend of ``sims serve
--with-worker`` reads the same variables; the service's ``SIMS_SYNTHESIS_WEIGHTS`` (``--weights``)
overrides the synthesis network's directory.

The networks default to the folders of one weights root (``weights_dir``, the repository's
``weights/`` unless set): the layout ``sims train all`` writes, so ``SIMS_WORKER_WEIGHTS_DIR=DIR``
(``--weights-dir``) serves a set of networks trained on your own data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval_service.types import DEFAULT_SYNTHESIS_TIMEOUT, SynthesisTimeout, ThreadCount, settings_env
from synthesis.canvas.elision import TEST_ELISION

ENV_PREFIX = "SIMS_WORKER_"
#: The folder of each network under ``weights_dir`` (the repository's ``weights/`` layout).
WEIGHTS_FOLDERS = {
    "weights": "synthesis",
    "refine_weights": "layout-refiner",
    "transform_weights": "transform",
    "ordering_weights": "ordering",
}


class WorkerSettings(BaseSettings):
    """Everything a synthesis worker can be configured with (env ``SIMS_WORKER_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    service_url: str = Field("http://127.0.0.1:8000", description="The retrieval service to retrieve from.")
    api_key: SecretStr | None = Field(
        None,
        description="X-API-Key sent to the retrieval service (env only): needed when the service has keys for "
        "`segments` (the worker reads segments with POST /segments/batch), or for `full` and mode=full syntheses.",
    )
    weights_dir: Path = Field(
        Path("weights"), description="Root of the network folders below (synthesis/, layout-refiner/, ...)."
    )
    # Their defaults are their WEIGHTS_FOLDERS under weights_dir (see _under_weights_dir).
    weights: Path = Field(description="Synthesis network directory.")
    refine_weights: Path | None = Field(description="Layout refiner directory, for coarse=true (None: coarse refused).")
    transform_weights: Path | None = Field(
        description="Transformation network T (None: segments stay where they were)."
    )
    ordering_weights: Path | None = Field(description="Ordering network (None: the layout rule orders segments).")
    elision_band: float = Field(
        TEST_ELISION.band,
        ge=0.0,
        le=0.25,
        description="Default boundary elision band of canvases, fraction of the height (requests may override; "
        "the paper's is 0.05).",
    )
    elision_rate: float = Field(
        TEST_ELISION.white_fraction, ge=0.0, le=1.0, description="Default share of the inside band elided."
    )
    seam_blend: bool = Field(
        True,
        description="Blend the seams after the network (synthesis/canvas/seams.py); false: the network's own output.",
    )
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8001, ge=0, le=65535, description="TCP port.")
    concurrency: int = Field(2, ge=1, description="Syntheses run at once; others queue.")
    # 0 by measurement (docs/service.md#overload): a waiting synthesis only doubles its latency and
    # risks its deadline; refused at once, its client retries when Retry-After says a slot frees.
    queue: int = Field(
        0, ge=0, description="Syntheses that may wait for a slot; more are refused with 503 and Retry-After."
    )
    timeout: SynthesisTimeout = Field(
        DEFAULT_SYNTHESIS_TIMEOUT,
        description="Seconds a synthesis may take (504 after; its work stops at the next step).",
    )
    threads: ThreadCount = Field(
        1,
        description="torch intra-op threads (0 = torch's default). One, like the retrieval engine: concurrent "
        "requests use the cores, and the same thread count as `sims serve --with-worker` gives bit-identical images "
        "(float sums depend on how the work is split).",
    )
    service_timeout: float = Field(30.0, gt=0, description="Seconds per request to the retrieval service.")
    device: str = Field("cpu", description="torch device of the networks.")
    log_level: str = Field("info", description="uvicorn and worker log level.")

    @model_validator(mode="before")
    @classmethod
    def _under_weights_dir(cls, data: Any) -> Any:
        """A network directory not given (flag or env) is its folder under ``weights_dir``."""
        if isinstance(data, dict):
            root = Path(data.get("weights_dir") or "weights")
            data = {**{name: root / folder for name, folder in WEIGHTS_FOLDERS.items()}, **data}
        return data

    @field_validator("refine_weights", "transform_weights", "ordering_weights", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """``none``, ``off`` or an empty string turn a network off."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "off") else value

    def to_env(self) -> dict[str, str]:
        """These settings as ``SIMS_WORKER_*`` environment variables (unset values are left out)."""
        return settings_env(self, ENV_PREFIX)
