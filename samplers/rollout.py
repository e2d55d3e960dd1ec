"""Flat rollouts: integrate from initial noise along explicit sigmas with a per-step kind, so
ODE-only sampling, full SDE sampling and SDE windows (Flow-GRPO-Fast, MixGRPO) are one call."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cps import cps_step
from .dance_sde import dance_sde_step
from .euler import euler_step
from .flow_sde import flow_sde_step
from .gaussian import StepOutput

# velocity_fn(x [B, *S], sigma [B], rows [B] long) -> v [B, *S]; `rows` says which conditioning
# row (prompt) each sample belongs to, so tree rollouts and completions can reuse one function.
VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
StepFn = Callable[..., StepOutput]

STEP_KINDS: dict[str, StepFn] = {
    "ode": euler_step,
    "flow_sde": flow_sde_step,
    "dance_sde": dance_sde_step,
    "cps": cps_step,
}


def step_fn(kind: str) -> StepFn:
    """The step function of a kind name ('ode', 'flow_sde', 'dance_sde', 'cps')."""
    try:
        return STEP_KINDS[kind]
    except KeyError:
        raise ValueError(f"step kind {kind!r} is unknown; use one of {sorted(STEP_KINDS)}.") from None


def transition_noise_scale(kind: str, sigma: float, sigma_next: float) -> float:
    """How a step kind's transition std relates to its per-step std_t: std = std_t * scale, with
    scale = sqrt(sigma - sigma_next) for flow_sde and dance_sde (noise enters as std_t sqrt(-dt))
    and 1 for cps (its std is sigma_next sin(a pi / 2) itself)."""
    step_fn(kind)
    if kind == "ode":
        raise ValueError("an ODE step has no transition noise.")
    return 1.0 if kind == "cps" else math.sqrt(sigma - sigma_next)


def step_kinds(num_steps: int, sde_kind: str = "flow_sde", window: tuple[int, int] | None = None) -> list[str]:
    """Per-step kinds: `sde_kind` on steps [start, end) of `window` (all steps if None), 'ode' elsewhere."""
    step_fn(sde_kind)
    start, end = (0, num_steps) if window is None else window
    if not 0 <= start < end <= num_steps:
        raise ValueError(f"SDE window {window} must satisfy 0 <= start < end <= num_steps={num_steps}.")
    return [sde_kind if start <= k < end else "ode" for k in range(num_steps)]


def normalise_kinds(kinds: str | Sequence[str], num_steps: int) -> list[str]:
    kinds = [kinds] * num_steps if isinstance(kinds, str) else list(kinds)
    if len(kinds) != num_steps:
        raise ValueError(f"got {len(kinds)} step kinds for {num_steps} steps; pass one kind per step.")
    for k in kinds:
        step_fn(k)
    return kinds


def noise_levels(noise_level: float | Sequence[float] | Tensor, num_steps: int) -> Tensor:
    """A scalar or one value per step -> [num_steps] float64."""
    lv = torch.as_tensor(noise_level, dtype=torch.float64).flatten()
    if lv.numel() == 1:
        lv = lv.expand(num_steps)
    if lv.numel() != num_steps:
        raise ValueError(f"noise_level has {lv.numel()} values for {num_steps} steps; pass one or one per step.")
    return lv.clone()


@dataclass
class Trajectory:
    """Everything a policy-gradient update needs about a batch of rollouts."""

    latents: Tensor  # [B, K+1, *S] x at sigmas[0..K]
    log_probs: Tensor  # [B, K] behaviour log p(x_{k+1} | x_k); 0 on ODE steps
    x0_preds: Tensor  # [B, K, *S] x0_hat = x - sigma v at each step
    sigmas: Tensor  # [K+1]
    sde_mask: Tensor  # [K] bool: stochastic (trainable) steps
    kinds: tuple[str, ...]  # [K] step kind names
    noise_level: Tensor  # [K] noise level of each step

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def final(self) -> Tensor:
        """[B, *S] the clean sample at sigma = sigmas[K]."""
        return self.latents[:, -1]

    def transition(self, k: int) -> tuple[Tensor, Tensor, float, float]:
        """(x_k, x_{k+1}, sigma_k, sigma_{k+1}) of step k, for re-scoring."""
        return self.latents[:, k], self.latents[:, k + 1], float(self.sigmas[k]), float(self.sigmas[k + 1])


def rollout(
    velocity_fn: VelocityFn,
    noise: Tensor,
    sigmas: Tensor,
    kinds: str | Sequence[str] = "ode",
    *,
    noise_level: float | Sequence[float] | Tensor = 0.7,
    generator: torch.Generator | None = None,
    step_noise: Tensor | None = None,
    rows: Tensor | None = None,
    progress: Callable | None = None,
) -> Trajectory:
    """Integrate x from `noise` ([B, *S], at sigmas[0]) along `sigmas` ([K+1]).

    kinds: one kind for all steps or one per step; noise_level: scalar or [K];
    step_noise: optional [B, K, *S] standard normal noise per step (else drawn from `generator`);
    rows: conditioning row of each sample (default arange(B)); progress: optional iterable wrapper."""
    sigmas = torch.as_tensor(sigmas).flatten()
    K = sigmas.numel() - 1
    kinds = normalise_kinds(kinds, K)
    levels = noise_levels(noise_level, K)
    B = noise.shape[0]
    rows = torch.arange(B, device=noise.device) if rows is None else rows
    if step_noise is not None and tuple(step_noise.shape[:2]) != (B, K):
        raise ValueError(f"step_noise has shape {tuple(step_noise.shape)}; it must be [B={B}, K={K}, *S].")
    x = noise
    latents, log_probs, x0s = [x], [], []
    steps = range(K) if progress is None else progress(range(K))
    for k in steps:
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        v = velocity_fn(x, torch.full((B,), s, device=x.device), rows)
        x0s.append(x.to(v.dtype) - s * v)
        out = step_fn(kinds[k])(
            x,
            v,
            s,
            s_next,
            noise_level=float(levels[k]),
            noise=None if step_noise is None else step_noise[:, k],
            generator=generator,
        )
        x = out.prev_sample
        latents.append(x)
        log_probs.append(out.log_prob)
    return Trajectory(
        latents=torch.stack(latents, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        x0_preds=torch.stack(x0s, dim=1),
        sigmas=sigmas,
        sde_mask=torch.tensor([k != "ode" for k in kinds]),
        kinds=tuple(kinds),
        noise_level=levels,
    )
