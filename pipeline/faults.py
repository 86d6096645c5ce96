"""TEST ONLY: failures injected from configuration, to exercise the failure paths on a CPU.

Kept apart from the user's knobs (`PICTUREBOOK_FAULT_*`, this class only). Unset, nothing happens.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FaultSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICTUREBOOK_FAULT_", extra="ignore")

    oom_batch_over: int | None = Field(
        None, ge=1, description="TEST ONLY: a diffusion call with more pages than this raises out-of-memory."
    )
    oom_prompt_marker: str | None = Field(
        None, description="TEST ONLY: a diffusion call including a prompt that contains this raises out-of-memory."
    )

    flag_prompt_marker: str | None = Field(
        None, description="TEST ONLY: a page whose prompt contains this is flagged by the picture check, every time."
    )
    flag_seed: int | None = Field(
        None, description="TEST ONLY: a page drawn with this seed is flagged by the picture check (a redraw passes)."
    )

    def flags(self, prompt: str, seed: int) -> bool:
        return bool(self.flag_prompt_marker and self.flag_prompt_marker in prompt) or seed == self.flag_seed

    def inject(self, prompts: list[str]) -> None:
        import torch

        limit, marker = self.oom_batch_over, self.oom_prompt_marker
        if (limit is not None and len(prompts) > limit) or (marker and any(marker in prompt for prompt in prompts)):
            raise torch.OutOfMemoryError(f"injected out-of-memory for a call of {len(prompts)} page(s)")
