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
    return adv.clamp(-clip, clip).to(torch.float32)
