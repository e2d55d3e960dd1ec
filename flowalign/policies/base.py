"""The policy interface every model family implements."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from samplers import VelocityFn


@runtime_checkable
class FlowPolicy(Protocol):
    """A flow-matching generator wrapped for RL: x -> velocity at noise level sigma."""

    def encode(self, prompts: Sequence[str]) -> Any:
        """Text conditioning for `prompts` (cached), with the negative prompt for CFG."""

    def velocity(self, x: Tensor, sigma: Tensor, cond: Any, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v = eps - x0 predicted at x [B, *S], sigma [B]; fp32."""

    def velocity_fn(self, cond: Any, *, guidance: float = 1.0) -> VelocityFn:
        """A samplers.VelocityFn bound to `cond`."""

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images [B, 3, H, W] (or video [B, F, 3, H, W]) in [0, 1]."""

    def reference(self) -> AbstractContextManager:
        """Within this context the base model (LoRA disabled) is evaluated, for KL."""

    def sigmas(self, num_steps: int, **size: int) -> Tensor:
        """The model's own [num_steps + 1] sigma schedule."""
