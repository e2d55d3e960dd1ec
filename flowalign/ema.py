"""Exponential moving average of a list of parameters, and swapping other weights into them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    def swapped(self) -> contextlib.AbstractContextManager:
        """Within the context the parameters hold the EMA weights."""
        return swapped_weights(self.params, self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)


@contextlib.contextmanager
def swapped_weights(params: list[torch.nn.Parameter], weights: list[torch.Tensor]) -> Iterator[None]:
    """Within the context `params` hold `weights` (EMA weights, DiffusionNFT's old policy); their
    own values come back on exit, also after an exception."""
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
