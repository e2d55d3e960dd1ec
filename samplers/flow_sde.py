"""Flow-GRPO's SDE step (Liu et al. 2025, "Flow-GRPO", eq. 9): the reverse SDE whose
marginals match the flow ODE, with diffusion std_t = a sqrt(sigma / (1 - sigma))."""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import SigmaLike, StepOutput, as_column, compute_dtype, finish_step


def _std_scale(s: Tensor, s_next: Tensor) -> Tensor:
    """sqrt(sigma / (1 - sigma)), with sigma = 1 replaced by sigma_next in the denominator."""
    return torch.sqrt(s / (1 - torch.where(s == 1, s_next, s)))


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
    std_t = noise_level * _std_scale(s, s_next)
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    std = std_t * torch.sqrt(-dt)
    return finish_step(mean, std, noise=noise, generator=generator, prev_sample=prev_sample)


def flow_sde_std_scale(sigmas: Tensor) -> Tensor:
    """sqrt(sigma / (1 - sigma)) of each step k of a grid [K+1] (sigma = 1 uses the next grid value in
    the denominator): Flow-GRPO's std_t = a * scale_k. Returns [K] float64."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    return _std_scale(s[:-1], s[1:])


def psi_to_noise_levels(psi, sigmas: Tensor) -> Tensor:
    """DenseGRPO's per-step diffusion std psi(t) ([K], used as std_t directly) -> the per-step
    noise levels a_k = psi_k / scale_k that make flow_sde_step use std_t = psi_k. Returns [K] float64."""
    scale = flow_sde_std_scale(sigmas)
    psi = torch.as_tensor(psi, dtype=torch.float64).flatten()
    if psi.numel() != scale.numel():
        raise ValueError(f"psi has {psi.numel()} values for {scale.numel()} steps; pass one per step "
                         "(calibrate with the same sampler.num_steps).")
    if (psi < 0).any():
        raise ValueError(f"psi {psi.tolist()} has negative values; a diffusion std must be >= 0.")
    return psi / scale
