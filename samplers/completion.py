"""ODE completions: take intermediate latents at different noise levels to sigma = 0 in a few
batched Euler steps (DenseGRPO's latent reward R(ODE_n(x_t)))."""

from __future__ import annotations

import torch
from torch import Tensor

from .euler import euler_step
from .rollout import VelocityFn


def ode_complete(
    velocity_fn: VelocityFn,
    x: Tensor,
    sigma: Tensor | float,
    num_steps: int,
    *,
    rows: Tensor | None = None,
) -> Tensor:
    """x [N, *S] at per-sample sigma [N] -> x0 [N, *S] after `num_steps` Euler steps each, on the
    per-sample linear grid sigma_i (1 - j / num_steps), j = 0..num_steps, all samples in one batch.
    Samples already at sigma = 0 are returned unchanged."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be at least 1.")
    N = x.shape[0]
    sig0 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).flatten()
    if sig0.numel() == 1:
        sig0 = sig0.expand(N)
    if sig0.numel() != N:
        raise ValueError(f"sigma has {sig0.numel()} values for {N} latents; pass one per latent.")
    rows = torch.arange(N, device=x.device) if rows is None else rows
    for j in range(num_steps):
        s = sig0 * (1 - j / num_steps)
        s_next = sig0 * (1 - (j + 1) / num_steps)
        v = velocity_fn(x, s.to(torch.float32), rows)
        x = euler_step(x, v, s.to(x.dtype), s_next.to(x.dtype)).prev_sample
    return x


def complete_trajectory(velocity_fn: VelocityFn, latents: Tensor, sigmas: Tensor, num_steps: int,
                        *, steps: Tensor | None = None) -> Tensor:
    """Complete every intermediate state of a trajectory at once.

    latents [B, K+1, *S], sigmas [K+1] -> x0 [B, len(steps), *S] where `steps` (default 0..K-1)
    selects the states; row b's conditioning is row b."""
    B, K1 = latents.shape[:2]
    steps = torch.arange(K1 - 1) if steps is None else torch.as_tensor(steps)
    sel = latents[:, steps]  # [B, T, *S]
    flat = sel.reshape(B * len(steps), *latents.shape[2:])
    sig = sigmas.to(torch.float64)[steps].repeat(B)
    rows = torch.arange(B, device=latents.device).repeat_interleave(len(steps))
    out = ode_complete(velocity_fn, flat, sig, num_steps, rows=rows)
    return out.reshape(B, len(steps), *latents.shape[2:])
