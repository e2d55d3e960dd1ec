"""DenseGRPO (Deng et al., "DenseGRPO: From Sparse to Dense Reward for Flow Matching Model Alignment",
arXiv 2601.20218, ICLR 2026; no released code, so the formulas below are the paper's, as the
project's design notes transcribe them; equation numbers are not cited because the paper could not
be read from this machine): every intermediate latent x_k gets a
reward R_k = R(ODE_n(x_k)) from its ODE completion, each step k earns the gain
dR_k = R_{k+1} - R_k, and the advantage of sample i at step k is its gain normalised over the G
samples of the same prompt at the same step. The loss is Flow-GRPO's clipped ratio (plus KL) with
these per-step advantages. Its exploration calibration (Algorithm 1) tunes the SDE's std psi(t)
per step before training: `flowalign calibrate CONFIG` (flowalign/calibration.py) writes psi.json,
`sampler.psi` uses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import samplers

from ..advantages import group_advantages
from .base import Advantages, decode_rewards, gathered
from .flow_grpo import FlowGRPO, FlowGRPOConfig, Rollout


@dataclass
class DenseGRPOConfig(FlowGRPOConfig):
    name: str = "dense_grpo"
    std_scope: Literal["group", "batch"] = "group"  # the paper normalises each step's gains within the group
    completion_steps: int | None = None  # Euler steps of each latent's ODE completion; None: all remaining steps
    completion_batch_size: int = 128  # latents per model call of the completions (memory bound)
    # exploration calibration (`flowalign calibrate`), DenseGRPO's Algorithm 1
    calib_rounds: int = 10  # calibration rounds
    calib_trajectories: int = 32  # trajectories per round (over all processes)
    calib_eps1: float = 2.0  # |#(gain > 0) - #(gain < 0)| below this: the step explores too little -> raise psi
    calib_eps2: float = 0.01  # psi change per round
    calib_initial_psi: Any = None  # float or list; None: Flow-GRPO's std with sampler.noise_level

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        a = cfg.algorithm
        if a.completion_steps is not None and a.completion_steps < 1:
            raise ValueError(f"algorithm.completion_steps={a.completion_steps} must be at least 1, or null for "
                             "all remaining steps.")
        for key, low, ok in (("calib_rounds", 1, a.calib_rounds >= 1), ("calib_trajectories", 2, a.calib_trajectories >= 2)):
            if not ok:
                raise ValueError(f"algorithm.{key}={a[key]} must be at least {low}.")
        if a.calib_eps2 <= 0:
            raise ValueError(f"algorithm.calib_eps2={a.calib_eps2} must be > 0.")
        cls.require_sum_aggregation(cfg)


def step_gains(latent_rewards: Tensor) -> Tensor:
    """Rewards of the states 0..K of each trajectory [N, K+1] -> step gains [N, K],
    dR_k = R_{k+1} - R_k (the reward after the step minus the reward before it)."""
    return latent_rewards[:, 1:] - latent_rewards[:, :-1]


def dense_advantages(gains: Tensor, group_ids: Tensor, steps, *, std_scope: str = "group", clip: float = 5.0,
                     eps: float = 1e-4) -> Tensor:
    """Per-step advantages [N, K]: for each trained step k in `steps`, the gains of step k normalised
    over each prompt's group (A_ik = (dR_ik - mean_group dR_k) / (std_group dR_k + eps)), clipped to
    +-clip; 0 on the other steps."""
    adv = torch.zeros(gains.shape, dtype=torch.float32)
    for k in steps:
        adv[:, k] = group_advantages(gains[:, k], group_ids, std_scope=std_scope, clip=clip, eps=eps)
    return adv


def calibrate_psi(psi: Tensor, gains: Tensor, steps, *, eps1: float, eps2: float) -> Tensor:
    """One round of DenseGRPO's exploration calibration. psi [K], gains [M, K] of M calibration
    trajectories: on each step in `steps`, if |#(gain > 0) - #(gain < 0)| < eps1 the step's
    outcomes are balanced, so psi(t) += eps2 (explore more); otherwise psi(t) -= eps2. psi stays >= 0."""
    psi = psi.clone().to(torch.float64)
    for k in steps:
        pos, neg = int((gains[:, k] > 0).sum()), int((gains[:, k] < 0).sum())
        psi[k] = psi[k] + eps2 if abs(pos - neg) < eps1 else max(0.0, float(psi[k]) - eps2)
    return psi


class DenseGRPO(FlowGRPO):
    def __init__(self, algo_cfg, sampler_cfg, part_weights=None):
        super().__init__(algo_cfg, sampler_cfg, part_weights)
        K = sampler_cfg.num_steps
        # states whose reward a trained step needs (k and k + 1); state K is the final image
        self.states = sorted({k for t in self.train_steps for k in (t, t + 1)} | {K})

    def _completions(self, vel, traj, inner: list[int], n: int, per: int) -> list[Tensor]:
        """ODE completions of the states `inner` of every sample, `per` samples per batched call."""
        parts = []
        for lo in range(0, n, per):
            rows = torch.arange(lo, min(n, lo + per), device=traj.latents.device)

            def v_rows(x, sigma, r, rows=rows):  # completion rows index this chunk; map back to the batch
                return vel(x, sigma, rows[r])

            if self.cfg.completion_steps is None:
                parts.append(samplers.complete_on_grid(v_rows, traj.latents[rows], traj.sigmas, inner))
            else:
                parts.append(samplers.complete_trajectory(v_rows, traj.latents[rows], traj.sigmas,
                                                          self.cfg.completion_steps,
                                                          steps=torch.tensor(inner, dtype=torch.long)))
        return parts

    @torch.no_grad()
    def latent_rewards(self, policy, ro: Rollout, reward) -> Tensor:
        """R [n, K+1]: rewards of the ODE completions of the states the trained steps need (NaN for
        the others); the final state is the image itself. All completions of all samples are batched:
        one model call per grid step (n = all remaining steps) or per completion step."""
        traj = ro.traj
        n, K = traj.latents.shape[0], traj.num_steps
        inner = [k for k in self.states if k < K]
        vel = policy.velocity_fn(ro.cond, guidance=self.sampler.guidance)
        T = len(inner)
        per = max(1, self.cfg.completion_batch_size // max(1, T))  # samples per batched completion
        with policy.sampling_weights():
            parts = self._completions(vel, traj, inner, n, per)
        x0 = torch.cat(parts) if T else traj.latents[:, :0]  # [n, T, *S]
        flat = torch.cat([x0.reshape(n * T, *x0.shape[2:]), traj.final]) if T else traj.final
        prompts = [p for p in ro.prompts for _ in range(T)] + list(ro.prompts)
        metas = [m for m in ro.metadata for _ in range(T)] + list(ro.metadata)
        r = decode_rewards(policy, reward, flat, prompts, metas)
        R = torch.full((n, K + 1), float("nan"), device=r.device)
        if T:
            R[:, inner] = r[: n * T].reshape(n, T)
        R[:, K] = r[n * T:]
        return R

    def score(self, policy, ro: Rollout, reward) -> Tensor:
        return self.latent_rewards(policy, ro, reward)

    def step_advantages(self, R: Tensor, group_ids: Tensor) -> Tensor:
        """Gathered latent rewards [N, K+1] -> per-step advantages [N, K]."""
        return dense_advantages(step_gains(R), group_ids, self.train_steps, std_scope=self.cfg.std_scope,
                                clip=self.cfg.adv_clip_max)

    def advantages(self, ro: Rollout, rewards: Tensor, comm, *, iteration: int = 0) -> Advantages:
        all_R, _, adv = gathered(comm, rewards, ro.group_ids, self.step_advantages)
        return Advantages(all_R, adv)
