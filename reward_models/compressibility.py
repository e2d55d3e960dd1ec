"""DDPO's JPEG (in)compressibility reward (Black et al. 2023): the size of the image saved as a
JPEG at quality 95, in kilobytes; negated for compressibility. Needs no model: the RL sanity
check of the field, usable for any images."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from .base import to_uint8_hwc


def jpeg_kilobytes(images: Tensor, quality: int = 95) -> Tensor:
    """images [B, 3, H, W] in [0, 1] -> JPEG sizes in kB, [B] float32."""
    arr = to_uint8_hwc(images)
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegCompressibility:
    differentiable = False

    def __init__(self, incompressible: bool = False, quality: int = 95):
        self.sign = 1.0 if incompressible else -1.0
        self.quality = quality
        self.name = "jpeg_incompressibility" if incompressible else "jpeg_compressibility"

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        return self.sign * jpeg_kilobytes(images, self.quality)
