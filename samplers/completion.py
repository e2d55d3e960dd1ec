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


def complete_on_grid(velocity_fn: VelocityFn, latents: Tensor, sigmas: Tensor, steps) -> Tensor:
    """Complete chosen states of trajectories with Euler steps along the rest of their own grid
    (DenseGRPO's default n = all remaining steps). latents [B, K+1, *S], sigmas [K+1], steps: state
    indices in [0, K] -> x0 [B, len(steps), *S]. Every grid step j is one model call over all states
    still to be completed (those with index <= j), so completing T states costs K - min(steps) calls."""
    B, K1 = latents.shape[:2]
    K = K1 - 1
    steps = [int(s) for s in steps]
    if any(not 0 <= s <= K for s in steps):
        raise ValueError(f"states {steps} must lie in [0, {K}].")
    T = len(steps)
    x = latents[:, steps].reshape(B * T, *latents.shape[2:]).clone()
    start = torch.tensor(steps, device=latents.device).repeat(B)
    rows = torch.arange(B, device=latents.device).repeat_interleave(T)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    for j in range(min(steps, default=K), K):
        act = torch.nonzero(start <= j).flatten()
        s, s_next = float(sig[j]), float(sig[j + 1])
        v = velocity_fn(x[act], torch.full((act.numel(),), s, dtype=x.dtype, device=x.device), rows[act])
        x[act] = euler_step(x[act], v, s, s_next).prev_sample.to(x.dtype)
    return x.reshape(B, T, *latents.shape[2:])
