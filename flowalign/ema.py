"""Exponential moving average of a list of parameters, and swapping other weights into them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def warmup_decay(step: int, decay: float) -> float:
    """The decay of the n-th optimiser step with the references' warm-up: min((1 + n) / (10 + n), decay),
    so the average follows the weights closely at first (0.18 at n = 1) and reaches `decay` later
    (n >= 80 for 0.9). The EMA of yifan123/flow_grpo and NVlabs/DiffusionNFT (`flow_grpo/ema.py`,
    `EMAModuleWrapper.get_current_decay`)."""
    return min((1 + step) / (10 + step), decay)


class EMA:
    """The trainable weights' EMA, advanced once per optimiser step.

    With the defaults (the references' `EMAModuleWrapper`) the n-th step (n counted from 1) moves
    the average by 1 - min((1 + n) / (10 + n), decay) towards the weights when (n + 1) is a multiple
    of `update_every` (flow_grpo's scripts use 8, DiffusionNFT's 1). `warmup=False` uses `decay`
    from the first step."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, update_every: int = 1,
                 warmup: bool = True):
        if update_every < 1:
            raise ValueError(f"optim.ema_update_every={update_every} must be at least 1.")
        self.params = params
        self.decay = decay
        self.update_every = update_every
        self.warmup = warmup
        self.steps = 0  # optimiser steps seen
        self.shadow = [p.detach().clone() for p in params]

    def current_decay(self) -> float:
        return warmup_decay(self.steps, self.decay) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Called after every optimiser step."""
        self.steps += 1
        if (self.steps + 1) % self.update_every:
            return
        weight = 1 - self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), weight)

    def swapped(self) -> contextlib.AbstractContextManager:
        """Within the context the parameters hold the EMA weights."""
        return swapped_weights(self.params, self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "update_every": self.update_every, "warmup": self.warmup,
                "steps": self.steps, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.update_every = int(state.get("update_every", 1))
        # a checkpoint written before the warm-up existed kept a fixed decay: it resumes that way
        self.warmup = bool(state.get("warmup", False))
        self.steps = int(state.get("steps", 0))
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
