"""GPU levers, applied in the order that keeps the IP-Adapters working.

diffusers' `fuse_qkv_projections()` and any `set_attn_processor()` after `load_ip_adapter()` replace the adapters'
processors and silently drop them (diffusers issue #8872). So attention kernels are chosen before the adapters are
loaded, and Q/K/V fusion after, touching only the processors that are not IP-Adapter ones.

The draft LoRA (pipeline/loading.py) is loaded between the two, unfused. It wraps the attention projections in PEFT
layers; diffusers' `fuse_projections()` copies only their base weights into `to_qkv`, so a fused layer would draw
every draft page without the LoRA's Q/K/V part, silently. Fusion therefore also skips the layers the LoRA wraps.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)

from .config import ModelSettings

log = logging.getLogger(__name__)
ADAPTER_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)


def before_adapters(pipe, settings: ModelSettings) -> None:
    processor = AttnProcessor2_0 if settings.attention == "sdpa" else AttnProcessor
    for model in (pipe.unet, pipe.controlnet):
        model.set_attn_processor(processor())


def after_adapters(pipe, settings: ModelSettings) -> None:
    if settings.fuse_qkv:
        fuse_qkv_keeping_adapters(pipe.unet)
        fuse_qkv_keeping_adapters(pipe.controlnet)
    channels_last = settings.on_cuda if settings.channels_last is None else settings.channels_last
    if channels_last:
        for model in (pipe.unet, pipe.controlnet, pipe.vae):
            model.to(memory_format=torch.channels_last)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.cpu_offload:
        if not settings.on_cuda:
            raise ValueError("cpu_offload: model CPU offload moves models to a GPU when needed; it needs CUDA")
        pipe.enable_model_cpu_offload()
    if settings.compile:
        # Compiled after every other change to the modules, so the graphs see the final processors and layout.
        compile_options = {"mode": settings.compile_mode, "backend": settings.compile_backend}
        if settings.compile_backend != "inductor":
            compile_options.pop("mode")
        pipe.unet = torch.compile(pipe.unet, **compile_options)
        pipe.controlnet = torch.compile(pipe.controlnet, **compile_options)


def fuse_qkv_keeping_adapters(model) -> None:
    """Fused Q/K/V for the plain attention layers of the UNet's blocks; IP-Adapter and resampler layers, and layers
    whose projections a LoRA wraps, as they are."""
    processors = {}
    for name, processor in model.attn_processors.items():
        plain = not isinstance(processor, ADAPTER_PROCESSORS) and not name.startswith("encoder_hid_proj")
        if plain and _lora_wrapped(model.get_submodule(name.removesuffix(".processor"))):
            plain = False
        if plain:
            model.get_submodule(name.removesuffix(".processor")).fuse_projections(fuse=True)
        processors[name] = FusedAttnProcessor2_0() if plain else processor
    model.set_attn_processor(processors)


def _lora_wrapped(attention) -> bool:
    """A PEFT (LoRA) layer wraps one of this attention layer's Q/K/V projections."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no PEFT, no LoRA
        return False
    return any(isinstance(getattr(attention, p, None), BaseTunerLayer) for p in ("to_q", "to_k", "to_v"))
