"""Flow-GRPO's SDE step (Liu et al. 2025, "Flow-GRPO", eq. 9): the reverse SDE whose
marginals match the flow ODE, with diffusion std_t = a sqrt(sigma / (1 - sigma))."""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import SigmaLike, StepOutput, as_column, compute_dtype, finish_step


def flow_sde_step(
    x: Tensor,
    v: Tensor,
    sigma: SigmaLike,
    sigma_next: SigmaLike,
    *,
    noise_level: float = 0.7,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """mean = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt,
    x' = mean + std_t sqrt(-dt) eps. At sigma == 1 the denominator 1 - sigma uses sigma_next."""
    dtype = compute_dtype(x)
    x, v = x.to(dtype), v.to(dtype)
    s, s_next = as_column(sigma, x), as_column(sigma_next, x)
    dt = s_next - s
    denom_sigma = torch.where(s == 1, s_next, s)
    std_t = noise_level * torch.sqrt(s / (1 - denom_sigma))
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    std = std_t * torch.sqrt(-dt)
    return finish_step(x, mean, std, noise=noise, generator=generator, prev_sample=prev_sample)
