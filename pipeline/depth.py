"""Depth maps from the previous page: a MiDaS DPT network run through controlnet-aux's MidasDetector.

Both profiles build the network skeleton, then load the checkpoint with torch's `weights_only` loader (never a
full unpickle), then hand it to the same detector, so pre- and post-processing are controlnet-aux's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from controlnet_aux import MidasDetector
from controlnet_aux.midas.midas import vit as midas_vit
from controlnet_aux.midas.midas.base_model import BaseModel
from controlnet_aux.midas.midas.blocks import Interpolate, _make_scratch
from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel, _make_fusion_block
from PIL import Image
from torch import nn


class TinyDPTDepthModel(DPTDepthModel):
    """DPT (the MiDaS 3 family behind `dpt_hybrid`) with a small ViT backbone, for the offline profile.

    It reuses controlnet-aux's DPT reassemble blocks, fusion blocks, head and forward pass; only the backbone is
    narrower and shallower than ViT-B.
    """

    FEATURES = 32
    VIT_WIDTH = 64
    STAGE_CHANNELS = (16, 32, 64, 64)

    def __init__(self):
        import timm.models.vision_transformer as timm_vit

        BaseModel.__init__(self)
        self.channels_last = False
        backbone = timm_vit.VisionTransformer(
            img_size=384, patch_size=16, embed_dim=self.VIT_WIDTH, depth=4, num_heads=2, num_classes=0
        )
        self.pretrained = midas_vit._make_vit_b16_backbone(
            backbone,
            features=list(self.STAGE_CHANNELS),
            hooks=[0, 1, 2, 3],
            vit_features=self.VIT_WIDTH,
            use_readout="project",
        )
        self.scratch = _make_scratch(list(self.STAGE_CHANNELS), self.FEATURES, groups=1, expand=False)
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", _make_fusion_block(self.FEATURES, False))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(self.FEATURES, self.FEATURES // 2, kernel_size=3, stride=1, padding=1),
            Interpolate(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(self.FEATURES // 2, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(True),
            nn.Identity(),
        )


def _dpt_hybrid() -> nn.Module:
    # The architecture controlnet-aux builds for lllyasviel/Annotators' dpt_hybrid checkpoint (timm, no download).
    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


ARCHITECTURES = {"dpt_hybrid": _dpt_hybrid, "dpt_tiny": TinyDPTDepthModel}


def build_depth_network(architecture: str) -> nn.Module:
    return ARCHITECTURES[architecture]()


def load_depth_estimator(checkpoint: Path, architecture: str, device: str) -> DepthEstimator:
    network = build_depth_network(architecture)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    network.eval()
    return DepthEstimator(MidasDetector(network.to(device)))


class DepthEstimator:
    def __init__(self, detector: MidasDetector):
        self.detector = detector

    @torch.inference_mode()
    def __call__(self, image: Image.Image, width: int, height: int, detect_resolution: int) -> Image.Image:
        depth = self.detector(
            image.convert("RGB"),
            detect_resolution=detect_resolution,
            image_resolution=max(width, height),
            output_type="pil",
        )
        return depth.convert("RGB").resize((width, height), Image.BICUBIC)
