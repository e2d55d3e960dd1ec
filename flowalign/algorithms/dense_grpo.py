"""DenseGRPO (dense step rewards for flow-matching GRPO): every intermediate latent x_k gets a
reward R_k = R(ODE_n(x_k)) from its ODE completion, each step k earns the gain
dR_k = R_{k+1} - R_k, and the advantage of sample i at step k is its gain normalised over the G
samples of the same prompt at the same step. The loss is Flow-GRPO's clipped ratio (plus KL) with
these per-step advantages. Its exploration calibration (Algorithm 1) tunes the SDE's std psi(t)
per step before training: `flowalign calibrate CONFIG` writes psi.json, `sampler.psi` uses it."""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor
from tqdm import tqdm

import samplers

from ..advantages import group_advantages
from .base import decode_rewards, gathered
from .flow_grpo import FlowGRPO, Rollout


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
    def __init__(self, algo_cfg, sampler_cfg):
        super().__init__(algo_cfg, sampler_cfg)
        K = sampler_cfg.num_steps
        # states whose reward a trained step needs (k and k + 1); state K is the final image
        self.states = sorted({k for t in self.train_steps for k in (t, t + 1)} | {K})

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

    def advantages(self, ro: Rollout, rewards: Tensor, comm) -> tuple[Tensor, Tensor]:
        all_R, _, adv = gathered(comm, rewards, ro.group_ids, self.step_advantages)
        return all_R, adv


def initial_psi(algo_cfg, sampler_cfg, sigmas: Tensor) -> Tensor:
    """calib_initial_psi: a float (every step), a list (one per step), or None: Flow-GRPO's
    std_t = noise_level * sqrt(sigma / (1 - sigma))."""
    K = sigmas.numel() - 1
    init = algo_cfg.calib_initial_psi
    if init is None:
        return sampler_cfg.noise_level * samplers.flow_sde_std_scale(sigmas)
    psi = torch.as_tensor(list(init) if not isinstance(init, (int, float)) else [float(init)] * K, dtype=torch.float64)
    if psi.numel() != K:
        raise ValueError(f"algorithm.calib_initial_psi has {psi.numel()} values for sampler.num_steps={K}; "
                         "give one value or one per step.")
    return psi


def calibrate(cfg, progress: bool = True) -> str:
    """Run DenseGRPO's exploration calibration for `cfg` (algorithm.name=dense_grpo) with the base
    model (no LoRA) and write run.output_dir/psi.json. Returns its path."""
    from omegaconf import OmegaConf

    from reward_models import build_reward

    from ..data import iteration_prompts, load_prompt_rows
    from ..policies import load_policy

    if cfg.algorithm.name != "dense_grpo":
        raise ValueError(f"calibrate needs algorithm.name=dense_grpo, got {cfg.algorithm.name!r}.")
    if cfg.sampler.kind != "flow_sde":
        raise ValueError(f"calibrate tunes flow_sde's std; sampler.kind={cfg.sampler.kind!r} must be flow_sde.")
    a, m = cfg.algorithm, cfg.model
    device = cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(m.path, dtype=m.dtype, device=device, attention_backend=m.attention_backend,
                         max_sequence_length=m.max_sequence_length)
    height, width = m.height or policy.defaults.get("height"), m.width or policy.defaults.get("width")
    reward = build_reward(cfg.reward.name, **OmegaConf.to_container(cfg.reward.args))
    algo = DenseGRPO(a, cfg.sampler)
    algo.seed = cfg.run.seed
    rows = load_prompt_rows(cfg.data.train_prompts)
    sigmas = policy.sigmas(cfg.sampler.num_steps, height, width).to(torch.float64)
    psi = initial_psi(a, cfg.sampler, sigmas)
    history = [psi.tolist()]
    counts = []
    for r in tqdm(range(a.calib_rounds), desc="flowalign calibrate", disable=not progress):
        metas = iteration_prompts(rows, r, a.calib_trajectories, cfg.run.seed + 7919)
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + r)
        gids = torch.arange(len(metas))
        algo.iteration = r  # fresh shared noise every round (algorithm.shared_noise)
        ro = algo.rollout(policy, metas, gids, gen, height, width,
                          noise_level=samplers.psi_to_noise_levels(psi, sigmas))
        with torch.no_grad():
            gains = step_gains(algo.latent_rewards(policy, ro, reward).cpu())
        counts.append({"positive": (gains > 0).sum(0).tolist(), "negative": (gains < 0).sum(0).tolist()})
        psi = calibrate_psi(psi, gains, algo.train_steps, eps1=a.calib_eps1, eps2=a.calib_eps2)
        history.append(psi.tolist())
    os.makedirs(cfg.run.output_dir, exist_ok=True)
    path = os.path.join(cfg.run.output_dir, "psi.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"psi": psi.tolist(), "sigmas": sigmas.tolist(),
                   "noise_levels": samplers.psi_to_noise_levels(psi, sigmas).tolist(), "history": history,
                   "gain_counts": counts, "rounds": a.calib_rounds, "trajectories": a.calib_trajectories,
                   "eps1": a.calib_eps1, "eps2": a.calib_eps2, "model": m.path}, f, indent=1)
    os.replace(path + ".tmp", path)
    return path
