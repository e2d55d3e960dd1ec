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


@runtime_checkable
class LearnedReward(Reward, Protocol):
    """A reward that trains during the run (Adv-GRPO's discriminator): the engine calls `update`
    after every batch with that batch's images, and saves/restores its state with each checkpoint.
    `learns` is False for a container (a weighted reward) none of whose parts learn."""

    learns: bool

    def update(self, images: Tensor, prompts: Sequence[str] | None = None, *, iteration: int = 0, **context) -> dict:
        """One training round on a batch of generated images (when the reward's schedule trains at
        `iteration`); returns statistics to log."""

    def trains_generator(self, iteration: int) -> bool:
        """Whether the policy is updated at `iteration` (a schedule may reserve iterations for the reward)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def learned(reward) -> LearnedReward | None:
    """`reward` when it trains during the run, else None."""
    return reward if isinstance(reward, LearnedReward) and reward.learns else None


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
