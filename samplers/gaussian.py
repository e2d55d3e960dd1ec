"""Shared pieces of every step kind: the StepOutput record, broadcasting of sigmas, and
the Gaussian transition density (fp32 or wider, averaged over non-batch dimensions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

SigmaLike = float | Tensor


@dataclass
class StepOutput:
    """One transition x_sigma -> x_sigma_next."""

    prev_sample: Tensor  # [B, *S] the new state x at sigma_next
    mean: Tensor  # [B, *S] mean of the Gaussian transition
    std: Tensor  # broadcastable to [B, *S]; 0 for a deterministic step
    log_prob: Tensor  # [B] log-density of prev_sample, mean over non-batch dims; 0 if std == 0


def compute_dtype(x: Tensor) -> torch.dtype:
    """Step maths run in fp32 at least (fp64 stays fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def as_column(sigma: SigmaLike, like: Tensor) -> Tensor:
    """A float or a [B] tensor of sigmas, shaped to broadcast against `like` ([B, *S])."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        return s
    if s.ndim != 1 or s.shape[0] != like.shape[0]:
        raise ValueError(
            f"sigma has shape {tuple(s.shape)}; pass a float or a [B] tensor with B = {like.shape[0]}."
        )
    return s.view(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(sample; mean, std^2) per element, averaged over non-batch dims -> [B].

    Where std == 0 the step is deterministic and the log-prob is defined as 0."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean)
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    lp = -((sample.detach() - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _LOG_SQRT_2PI
    lp = torch.where(positive, lp, torch.zeros_like(lp))
    return lp.flatten(1).mean(dim=1)


def randn(shape, generator: torch.Generator | None, device, dtype) -> Tensor:
    """Standard normal noise on `device`, drawn where `generator` lives: a CPU generator (the
    trainer's, so that a run draws the same noise on any device) fills a CPU tensor that is then
    moved; without a generator the global RNG of `device` draws it."""
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def finish_step(
    mean: Tensor,
    std: Tensor,
    *,
    noise: Tensor | None,
    generator: torch.Generator | None,
    prev_sample: Tensor | None,
) -> StepOutput:
    """Sample (or re-score) x' = mean + std * noise and return its StepOutput."""
    if prev_sample is None:
        if noise is None:
            noise = randn(mean.shape, generator, mean.device, mean.dtype)
        elif noise.shape != mean.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; it must match x's shape {tuple(mean.shape)}.")
        prev_sample = mean + std * noise.to(mean.dtype)
    else:
        if prev_sample.shape != mean.shape:
            raise ValueError(
                f"prev_sample has shape {tuple(prev_sample.shape)}; it must match x's shape {tuple(mean.shape)}."
            )
        prev_sample = prev_sample.to(mean.dtype)
    std_t = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return StepOutput(prev_sample, mean, std_t, gaussian_log_prob(prev_sample, mean, std_t))


def gaussian_mean_kl(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """KL between two Gaussians of equal std: ||mean - mean_ref||^2 averaged over non-batch
    dims / (2 std^2) -> [B] (Flow-GRPO's KL to the reference model)."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    sq = ((mean - mean_ref) ** 2) / (2 * std**2)
    return sq.flatten(1).mean(dim=1)


def flow_grpo_kl(mean: Tensor, mean_ref: Tensor, std: Tensor, noise_scale: float | Tensor) -> Tensor:
    """Flow-GRPO's KL term (its scripts/train_sd3.py): ||mean - mean_ref||^2 averaged over
    non-batch dims / (2 std_t^2), where std_t is the step's std before the transition's noise
    scale: std = std_t * noise_scale (noise_scale = sqrt(sigma - sigma_next) for flow_sde and
    dance_sde, 1 for cps). Equals gaussian_mean_kl(...) * noise_scale^2 -> [B]."""
    return gaussian_mean_kl(mean, mean_ref, torch.as_tensor(std, dtype=mean.dtype, device=mean.device) / noise_scale)
