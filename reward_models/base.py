"""The reward interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


def to_uint8_hwc(images: Tensor) -> np.ndarray:
    """images [B, 3, H, W] in [0, 1] -> uint8 array [B, H, W, 3] (rounded, clamped)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@runtime_checkable
class Reward(Protocol):
    name: str
    differentiable: bool

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> rewards [B] float32. `context` may carry `metadata`
        (GenEval-format rows, one per image)."""
