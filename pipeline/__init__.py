"""The model half of Picture Book: SDXL + depth ControlNet + face/style IP-Adapters. No BentoML here."""

from .config import Profile, Settings
from .generator import MAX_CHARACTERS, MAX_SEED, GenerationInterrupted, PageError, PageGenerator, PageRequest, PageResult
from .loading import ModelPaths, load_from_settings, load_page_generator, resolve_model_paths

__all__ = [
    "MAX_CHARACTERS",
    "MAX_SEED",
    "GenerationInterrupted",
    "ModelPaths",
    "PageError",
    "PageGenerator",
    "PageRequest",
    "PageResult",
    "Profile",
    "Settings",
    "load_from_settings",
    "load_page_generator",
    "resolve_model_paths",
]
