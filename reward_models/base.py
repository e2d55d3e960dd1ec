"""The reward interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Reward(Protocol):
    name: str
    differentiable: bool

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> rewards [B] float32. `context` may carry `metadata`
        (GenEval-format rows, one per image)."""
