"""The picture check every drawn page passes before it leaves: diffusers' StableDiffusionSafetyChecker (CLIP
ViT-L/14 image embeddings compared with its concept embeddings), the classifier Stable Diffusion pipelines ship.

SDXL pipelines in diffusers carry no checker of their own, so Picture Book loads it beside them, from the pinned
`CompVis/stable-diffusion-safety-checker` revision (safetensors), through the one loading path. The `tiny` profile
has a tiny random checker of the same class, whose first concept is the embedding of `flagged_fixture()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


class PictureChecker:
    def __init__(self, checker, feature_extractor):
        self.checker = checker
        self.feature_extractor = feature_extractor

    @torch.inference_mode()
    def flagged(self, pictures: list[Image.Image]) -> list[bool]:
        """Whether each picture shows a concept the checker refuses."""
        pixels = self.feature_extractor(pictures, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.checker.device, dtype=self.checker.dtype)
        arrays = [np.asarray(picture) for picture in pictures]  # the checker blacks out flagged copies, not ours
        _, flags = self.checker(images=arrays, clip_input=pixels)
        return [bool(flag) for flag in flags]


def load_picture_checker(folder: Path, device: str, dtype) -> PictureChecker:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    # use_safetensors=True: the pinned revision's model.safetensors, never the pickled pytorch_model.bin.
    checker = StableDiffusionSafetyChecker.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
    checker.eval()
    return PictureChecker(checker.to(device), CLIPImageProcessor.from_pretrained(folder))


def flagged_fixture(size: int = 256) -> Image.Image:
    """The one picture the tiny checker is built to flag: magenta and black stripes no page of the tests draws."""
    picture = Image.new("RGB", (size, size), (255, 0, 255))
    draw = ImageDraw.Draw(picture)
    for x in range(0, size, size // 8):
        draw.rectangle([x, 0, x + size // 16, size], fill=(0, 0, 0))
    return picture
