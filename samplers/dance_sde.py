"""DanceGRPO's SDE step (Xue et al. 2025): Euler plus the score correction for a constant
diffusion eta, std = eta sqrt(sigma - sigma_next)."""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import SigmaLike, StepOutput, as_column, compute_dtype, finish_step


def dance_sde_step(
    x: Tensor,
    v: Tensor,
    sigma: SigmaLike,
    sigma_next: SigmaLike,
    *,
    noise_level: float = 0.3,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """mean = x + dt v - 0.5 eta^2 score dt, score = -(x - (1 - sigma) x0_hat) / sigma^2,
    x0_hat = x - sigma v; x' = mean + eta sqrt(-dt) eps (eta = noise_level)."""
    dtype = compute_dtype(x)
    x, v = x.to(dtype), v.to(dtype)
    s, s_next = as_column(sigma, x), as_column(sigma_next, x)
    dt = s_next - s
    x0_hat = x - s * v
    score = -(x - (1 - s) * x0_hat) / s**2
    mean = x + dt * v - 0.5 * noise_level**2 * score * dt
    std = noise_level * torch.sqrt(-dt)
    return finish_step(mean, std, noise=noise, generator=generator, prev_sample=prev_sample)
