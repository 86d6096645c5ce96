"""The serving side's settings: port, limits, access, batching and timeouts. `PICTUREBOOK_*` variables.

Model settings (profile, device, levers, adapter scales) are pipeline.ModelSettings; both read the same namespace,
and the README's configuration table lists every field of both (tests/test_docs.py checks it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .prompt_filter import DEFAULT_SAFE_NEGATIVE_PROMPT


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICTUREBOOK_", extra="ignore")

    port: int = Field(8000, ge=1, le=65535, description="HTTP port of `bentoml serve` (the seed's backend used 8000).")
    max_batch_size: int = Field(
        4, ge=1, description="Adaptive batching: most pages in one diffusion call; 1 turns the batcher off."
    )
    max_latency_ms: int = Field(
        60_000, ge=1, description="Adaptive batching: latency budget a request may wait in the batch queue plus run."
    )
    batch_wait_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Adaptive batching: most a lone request waits for batch-mates, as a fraction of a one-page "
        "call's time (BentoML's estimate); bounds what a lone request costs over its page.",
    )
    request_timeout_s: int = Field(120, ge=1, description="Seconds a /generate request may take end to end.")
    max_concurrency: int = Field(16, ge=1, description="Requests the front service admits at once; more get 429/503.")

    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest decoded size of one request image.")
    max_image_pixels: int = Field(
        16_000_000, ge=4096, description="Most pixels in one request image, checked before decoding."
    )
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt or negative prompt accepted.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest /generate body; larger ones get 413 before they are read whole."
    )
    header_timeout_s: float = Field(
        10,
        gt=0,
        description="Seconds a connection may take to send a request's headers (from opening it or "
        "from its last response); then it is closed.",
    )
    max_connections: int = Field(1000, ge=1, description="Open connections per worker; more are closed at once.")
    body_read_min_s: float = Field(
        10.0, gt=0, description="Seconds a /generate body may take to arrive, plus the next setting's; 408 after."
    )
    body_read_s_per_mib: float = Field(
        5.0, ge=0, description="Further seconds a body may take per MiB received so far (a minimum rate); 408 after."
    )
    max_image_side: int = Field(
        1024, ge=64, description="Request pictures are scaled down to this longest side before the model sees them."
    )
    max_image_aspect_ratio: float = Field(
        4.0, ge=1.0, description="Request pictures longer than this ratio are stretched to it (what the model scales)."
    )
    retry_after_s: int = Field(5, ge=1, description="`Retry-After` seconds sent with 429/503 when overloaded.")
    max_book_pages: int = Field(24, ge=1, le=200, description="Most pages in one book job.")
    max_books: int = Field(
        4, ge=1, description="Books one replica draws at once; submit gets 429 with `Retry-After` when all are taken."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for book jobs shared by every replica (`redis://host:6379/0`); unset: books live in the "
        "one front process (one replica only).",
    )
    book_retention_s: int = Field(86_400, ge=60, description="Seconds a book (pages, PDF) is kept after its last page.")
    book_heartbeat_s: int = Field(
        10, ge=1, description="With Redis: a book whose replica has not been heard of this long is taken over."
    )
    book_store_retry_s: float = Field(
        30, ge=0, description="How long a book job retries an unreachable Redis before failing the book."
    )

    prompt_filter: bool = Field(True, description="Refuse prompts, page texts and titles the blocklists match (422).")
    blocklist_dir: Path | None = Field(
        None, description="A folder of extra blocklist files (`*.txt`) added to serving/blocklists/."
    )
    blocklist_categories_off: str = Field(
        "",
        description="Comma-separated blocklist categories (list sections) to switch off, e.g. 'profanity,violence'; "
        "a name no list has stops the start.",
    )
    safe_negative_prompt: str = Field(
        DEFAULT_SAFE_NEGATIVE_PROMPT,
        description="Put in front of every page's negative prompt; empty turns it off.",
    )

    api_key: SecretStr | None = Field(
        None, description="When set, /generate requires `Authorization: Bearer <key>`; health and metrics stay open."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (JSON list, e.g. '[\"https://a.example\"]'); empty = CORS off.",
    )
    bento_model: str | None = Field(
        None,
        description="Tag of a BentoML model holding all model folders "
        "(made by `python -m serving.bento_models import`); the offline alternative to hub downloads for `sdxl`.",
    )

    @property
    def blocklist_off(self) -> list[str]:
        return [name.strip() for name in self.blocklist_categories_off.split(",") if name.strip()]

    @property
    def image_limits(self) -> dict[str, int | float]:
        return {
            "max_bytes": self.max_image_bytes,
            "max_pixels": self.max_image_pixels,
            "max_side": self.max_image_side,
            "max_aspect_ratio": self.max_image_aspect_ratio,
        }

    @property
    def body_limits(self) -> dict[str, int | float]:
        return {
            "max_bytes": self.max_body_bytes,
            "min_read_s": self.body_read_min_s,
            "read_s_per_mib": self.body_read_s_per_mib,
            # Bodies being received are not admitted yet: their memory stays within what admission allowed before.
            "max_buffered_bytes": self.max_concurrency * self.max_body_bytes,
            "retry_after_s": self.retry_after_s,
        }


# Read once per process, at import: BentoML reads the service classes' options from them at import time too.
serving_settings = ServingSettings()


def environment_knobs() -> dict[str, type[BaseSettings]]:
    """Every `PICTUREBOOK_*` variable the service reads, and the settings class that reads it."""
    from pipeline.config import ModelSettings
    from pipeline.faults import FaultSettings

    return {
        f"{cls.model_config['env_prefix']}{name.upper()}": cls
        for cls in (ModelSettings, ServingSettings, FaultSettings)
        for name in cls.model_fields
    }
