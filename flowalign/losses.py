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


def optimality_probability(advantages: Tensor, adv_clip_max: float) -> Tensor:
    """DiffusionNFT's r in [0, 1] from advantages: clip to +-adv_clip_max, map linearly onto
    [0, 1] (A = 0 -> 1/2, A = +-adv_clip_max -> 1 / 0), written as the map followed by one clip to
    [0, 1], which is the same."""
    return (advantages / adv_clip_max / 2 + 0.5).clamp(0, 1)


def nft_loss(v_theta: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor, r: Tensor, beta: float,
             weighting: str = "adaptive") -> Tensor:
    """DiffusionNFT's per-sample loss [B]: r L(v+) + (1 - r) L(v-) with the implicit positive and
    negative policies v+ = (1 - beta) v_old + beta v_theta and v- = (1 + beta) v_old - beta v_theta
    (v_old detached). x_t = (1 - t) x0 + t eps. L is, per sample,
      adaptive: mean((x0_hat - x0)^2) / mean|x0_hat - x0| with x0_hat = x_t - t v and the weight
                detached (the paper's adaptive weighting, NVlabs/DiffusionNFT train_nft_sd3.py);
      none:     mean((v - (eps - x0))^2), the plain flow-matching error.
    v_theta, v_old, x_t, x0: [B, *S]; t, r: [B]."""
    v_old = v_old.detach()
    pos = beta * v_theta + (1 - beta) * v_old
    neg = (1 + beta) * v_old - beta * v_theta
    dims = tuple(range(1, x0.ndim))
    tt = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))

    def error(v: Tensor) -> Tensor:
        if weighting == "none":
            target = (x_t - x0) / tt  # eps - x0
            return ((v - target) ** 2).mean(dim=dims)
        if weighting != "adaptive":
            raise ValueError(f"weighting {weighting!r} is unknown; use 'adaptive' or 'none'.")
        x0_hat = x_t - tt * v
        with torch.no_grad():
            w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        return ((x0_hat - x0) ** 2 / w).mean(dim=dims)

    return r * error(pos) + (1 - r) * error(neg)
