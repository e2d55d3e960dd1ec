"""Deterministic multistep DPM-Solver++(2M) on a flow-matching sigma grid (alpha = 1 - sigma), the
sampler DiffusionNFT rolls out with (`solver: dpm2`, deterministic): the first and the last step
are DDIM steps with eta 0 (for a flow, the Euler step); in between, the second-order update from
the x0 predictions of this and the previous step,

    x_{k+1} = (s_{k+1} / s_k) x_k - a_{k+1} (exp(-h) - 1) (D0 + D1 / 2),
    D0 = x0_k, D1 = (x0_k - x0_{k-1}) h / h_prev,

with lambda = log(a / s), h = lambda_{k+1} - lambda_k, h_prev = lambda_k - lambda_{k-1} (in float64;
from sigma = 1, lambda = -inf makes D1 = 0, a first-order step)."""

from __future__ import annotations

import torch
from torch import Tensor

from .rollout import Trajectory, VelocityFn


def _lam(sigma: Tensor) -> Tensor:
    return torch.log(1 - sigma) - torch.log(sigma)


def dpm2_rollout(velocity_fn: VelocityFn, noise: Tensor, sigmas: Tensor, *, rows: Tensor | None = None) -> Trajectory:
    """Integrate from `noise` ([B, *S] at sigmas[0]) along `sigmas` ([K+1], ending at 0) with
    DPM-Solver++(2M); a Trajectory of ODE steps (log-probs 0)."""
    sigmas = torch.as_tensor(sigmas).flatten()
    s64 = sigmas.to(torch.float64)
    K = sigmas.numel() - 1
    B = noise.shape[0]
    rows = torch.arange(B, device=noise.device) if rows is None else rows
    x = noise.to(torch.float32)
    latents, x0s = [x], []
    for k in range(K):
        s, s_next = s64[k], s64[k + 1]
        v = velocity_fn(x, torch.full((B,), float(sigmas[k]), device=x.device), rows)
        x0 = x - float(s) * v.float()  # convert_model_output: the x0 prediction
        x0s.append(x0)
        if k == 0 or k == K - 1:  # DDIM with eta 0 = Euler for a flow
            x_next = x + float(s_next - s) * v.float()
        else:
            h = _lam(s_next) - _lam(s)
            h_prev = _lam(s) - _lam(s64[k - 1])
            d1 = (x0 - x0s[-2]) / (h_prev / h)
            coef = (1 - s_next) * (torch.exp(-h) - 1.0)
            x_next = float(s_next / s) * x - float(coef) * x0 - 0.5 * float(coef) * d1
        x = x_next.to(torch.float32)
        latents.append(x)
    return Trajectory(latents=torch.stack(latents, dim=1), log_probs=torch.zeros(B, K, device=noise.device),
                      x0_preds=torch.stack(x0s, dim=1), sigmas=sigmas, sde_mask=torch.zeros(K, dtype=torch.bool),
                      kinds=("ode",) * K, noise_level=torch.zeros(K, dtype=torch.float64))
