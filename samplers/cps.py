"""Coefficient-preserving sampling (CPS, Wang & Yu 2025): re-noise the predicted x0 with the
predicted eps and fresh noise so that the coefficients of x0 and of the noise match the forward
process at sigma_next exactly. Not a consistent SDE discretisation: with a posterior-mean
velocity at a fixed noise level the marginals drift (see docs/algorithms.md, "Samplers")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian import SigmaLike, StepOutput, as_column, compute_dtype, finish_step


def cps_step(
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
    """std = sigma_next sin(a pi / 2); mean = x0_hat (1 - sigma_next) + eps_hat sqrt(sigma_next^2 - std^2)
    with x0_hat = x - sigma v and eps_hat = x + (1 - sigma) v. The log-prob is the true Gaussian
    density (Flow-GRPO's code drops the normaliser, so clip ranges differ)."""
    dtype = compute_dtype(x)
    x, v = x.to(dtype), v.to(dtype)
    s, s_next = as_column(sigma, x), as_column(sigma_next, x)
    std = s_next * math.sin(noise_level * math.pi / 2)
    x0_hat = x - s * v
    eps_hat = x + (1 - s) * v
    mean = x0_hat * (1 - s_next) + eps_hat * torch.sqrt(torch.clamp(s_next**2 - std**2, min=0))
    return finish_step(mean, std, noise=noise, generator=generator, prev_sample=prev_sample)
