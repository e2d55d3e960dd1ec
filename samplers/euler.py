"""Deterministic Euler step of the probability-flow ODE: x' = x + (sigma_next - sigma) v."""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import SigmaLike, StepOutput, as_column, compute_dtype


def euler_step(
    x: Tensor,
    v: Tensor,
    sigma: SigmaLike,
    sigma_next: SigmaLike,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
    noise_level: float | None = None,
) -> StepOutput:
    """Euler ODE step (std 0, log_prob 0). `noise`, `generator` and `noise_level` are accepted
    so every step kind shares one signature; they are ignored."""
    dtype = compute_dtype(x)
    x, v = x.to(dtype), v.to(dtype)
    s, s_next = as_column(sigma, x), as_column(sigma_next, x)
    mean = x + (s_next - s) * v
    out = mean if prev_sample is None else prev_sample.to(dtype)
    zero = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    return StepOutput(out, mean, torch.zeros((), dtype=dtype, device=x.device), zero)
