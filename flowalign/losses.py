"""Policy-gradient losses, as pure functions returning detached statistics."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GRPOLoss(NamedTuple):
    loss: Tensor  # scalar, differentiable
    ratio_mean: float
    clip_fraction: float  # share of samples whose ratio left [1 - eps, 1 + eps]


def grpo_clipped_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> GRPOLoss:
    """PPO's clipped surrogate: mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))), r = exp(logp - logp_old).
    All inputs [B]."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        frac = ((ratio - 1.0).abs() > clip_range).float().mean().item()
    return GRPOLoss(loss, ratio.detach().mean().item(), frac)
