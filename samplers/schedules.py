"""Sigma schedules of flow-matching models, as diffusers' FlowMatchEulerDiscreteScheduler
computes them (default path: no Karras/exponential/beta conversion, no terminal stretch)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def shift_sigmas(sigmas: Tensor | np.ndarray, shift: float):
    """Static shift (SD3): s' = shift s / (1 + (shift - 1) s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: Tensor | np.ndarray, mu: float, kind: str = "exponential"):
    """Dynamic (resolution-dependent) shift (FLUX): exp(mu) / (exp(mu) + (1/s - 1)), or the
    linear variant mu / (mu + (1/s - 1))."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    if kind == "linear":
        return mu / (mu + (1 / sigmas - 1))
    raise ValueError(f"time_shift kind {kind!r} is unknown; use 'exponential' or 'linear'.")


def dynamic_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu interpolated linearly in the number of image tokens (diffusers' calculate_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flow_match_sigmas(
    num_steps: int,
    *,
    shift: float = 1.0,
    mu: float | None = None,
    time_shift_kind: str = "exponential",
    num_train_timesteps: int = 1000,
) -> Tensor:
    """[num_steps + 1] float32 sigmas from 1 towards 0, ending with 0.

    With `mu` the dynamic shift is used (and `shift` ignored), otherwise the static `shift`.
    Matches FlowMatchEulerDiscreteScheduler.set_timesteps, which spaces the grid between
    sigma_max = 1 and the shifted training sigma_min and then shifts it again."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be at least 1.")
    n = num_train_timesteps
    train = np.linspace(1, n, n, dtype=np.float32)[::-1].copy() / n
    if mu is None:
        train = shift_sigmas(torch.from_numpy(train), shift).numpy()
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    sig = np.linspace(sigma_max * n, sigma_min * n, num_steps) / n
    if mu is not None:
        sig = time_shift(sig, mu, time_shift_kind)
    else:
        sig = shift_sigmas(sig, shift)
    sig = torch.from_numpy(np.asarray(sig)).to(torch.float32)
    return torch.cat([sig, torch.zeros(1)])


def linear_sigmas(num_steps: int, *, shift: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """[num_steps + 1] sigmas linear from 1 to 0, optionally shifted: the plain grid used by the
    tests and by ODE completions."""
    sig = torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    return shift_sigmas(sig, shift) if shift != 1.0 else sig
