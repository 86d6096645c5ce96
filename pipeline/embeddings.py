"""Image-encoder embeddings for the IP-Adapters, with an LRU cache for character pictures.

Characters appear on every page of a book, so their embeddings are cached by content hash; previous pages are
new every time and are encoded without the cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
from PIL import Image


def image_digest(image: Image.Image) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ImageEmbedder:
    """Penultimate hidden states of the CLIP vision encoder: what IP-Adapter *plus* resamplers read.

    Matches diffusers' `encode_image(..., output_hidden_states=True)`, including its negative (an all-zero image).
    """

    def __init__(self, image_encoder, feature_extractor, cache_size: int):
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._negative: torch.Tensor | None = None
        self.hits = 0
        self.misses = 0

    @property
    def _device(self):
        return self.image_encoder.device

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.feature_extractor(images, return_tensors="pt").pixel_values
        return pixels.to(device=self._device, dtype=self.image_encoder.dtype)

    @torch.inference_mode()
    def _hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """(len(images), tokens, width), uncached."""
        return self._hidden_states(self._pixels([image.convert("RGB") for image in images]))

    def negative(self) -> torch.Tensor:
        """(1, tokens, width): the embedding of an all-zero image, as diffusers uses for classifier-free guidance."""
        if self._negative is None:
            pixels = self._pixels([Image.new("RGB", (224, 224))])
            self._negative = self._hidden_states(torch.zeros_like(pixels))
        return self._negative

    def encode_cached(self, images: list[Image.Image]) -> torch.Tensor:
        """Like `encode`, but each distinct picture is encoded once while it stays in the LRU cache."""
        keys = [image_digest(image) for image in images]
        with self._lock:
            missing = {key: image for key, image in zip(keys, images) if key not in self._cache}
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        if missing:
            fresh = self.encode(list(missing.values()))
            with self._lock:
                for key, embedding in zip(missing, fresh):
                    self._cache[key] = embedding
                    self._cache.move_to_end(key)
        with self._lock:
            found = [self._cache[key] if key in self._cache else None for key in keys]
            for key in keys:
                if key in self._cache:
                    self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if any(embedding is None for embedding in found):  # evicted meanwhile (cache smaller than the request)
            return self.encode(images)
        return torch.stack(found)
