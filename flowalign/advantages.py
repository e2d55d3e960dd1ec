"""Group-relative advantages (GRPO)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_ids: Tensor, *, std_scope: str = "group", clip: float = 5.0,
                     eps: float = 1e-4) -> Tensor:
    """A = (r - mean over the sample's group) / (std + eps), std of the group or of the whole
    batch, clipped to +-clip. rewards [N], group_ids [N] -> [N]. Call on the gathered rewards of
    all processes: groups may span processes."""
    if std_scope not in ("group", "batch"):
        raise ValueError(f"std_scope {std_scope!r} is unknown; use 'group' or 'batch'.")
    r = rewards.double()
    adv = torch.empty_like(r)
    batch_std = r.std(unbiased=False)
    for g in torch.unique(group_ids):
        m = group_ids == g
        std = r[m].std(unbiased=False) if std_scope == "group" else batch_std
        adv[m] = (r[m] - r[m].mean()) / (std + eps)
    return adv.clamp(-clip, clip).to(rewards.dtype if rewards.dtype == torch.float64 else torch.float32)


def multi_reward_advantages(parts: Tensor, weights, group_ids: Tensor, *, std_scope: str = "group",
                            clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """Per-reward advantage aggregation: A = sum_i w_i A_i with A_i the group advantage of reward i
    alone (each reward normalised on its own scale before weighting), clipped to +-clip.
    parts [N, P] (one column per reward), weights [P], group_ids [N] -> [N]."""
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if parts.dim() != 2 or parts.shape[1] != w.numel():
        raise ValueError(f"parts of shape {tuple(parts.shape)} need one column per weight ({w.numel()}).")
    adv = torch.zeros(parts.shape[0], dtype=torch.float64)
    for i in range(w.numel()):
        adv += w[i] * group_advantages(parts[:, i], group_ids, std_scope=std_scope, clip=float("inf"), eps=eps).double()
    return adv.clamp(-clip, clip).to(torch.float32)
