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


def grpo_objective(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float,
                   kl: Tensor | None = None, kl_beta: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The GRPO-family loss of a batch of transitions: the clipped surrogate plus kl_beta times the
    mean of `kl` (per-transition KL to the reference policy; None: no KL term). Returns the loss and
    its detached statistics (ratio, clip_fraction, kl, policy_loss, log_prob, loss)."""
    pg = grpo_clipped_loss(log_prob, old_log_prob, advantages, clip_range)
    loss, kl_val = pg.loss, 0.0
    if kl is not None:
        kl_mean = kl.mean()
        loss = loss + kl_beta * kl_mean
        kl_val = kl_mean.item()
    return loss, {"ratio": pg.ratio_mean, "clip_fraction": pg.clip_fraction, "kl": kl_val,
                  "policy_loss": pg.loss.item(), "log_prob": log_prob.mean().item(), "loss": loss.item()}
