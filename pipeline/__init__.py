"""The model half of Picture Book: SDXL + depth ControlNet + face/style IP-Adapters. No BentoML here.

Names that need torch are imported on first use, so the serving side can read `pipeline.page` and
`pipeline.config` (what a page is, which profile) without loading torch.
"""

from importlib import import_module

from .config import ModelSettings, Profile
from .faults import FaultSettings
from .page import MAX_CHARACTERS, MAX_SEED, ErrorKind, PageRequest, Quality, ResolvedPage

_NEEDS_TORCH = {
    "GenerationInterrupted": ".generator",
    "PageError": ".generator",
    "PageGenerator": ".generator",
    "PageResult": ".generator",
    "ModelPaths": ".loading",
    "load_page_generator": ".loading",
}

__all__ = [
    "MAX_CHARACTERS",
    "MAX_SEED",
    "ErrorKind",
    "FaultSettings",
    "ModelSettings",
    "PageRequest",
    "Quality",
    "ResolvedPage",
    "Profile",
    *_NEEDS_TORCH,
]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(import_module(_NEEDS_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
