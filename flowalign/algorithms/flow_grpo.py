"""Flow-GRPO (Liu et al. 2025): GRPO on the SDE transitions of a flow-matching sampler.

Rollouts sample with an SDE on the trained steps (all steps, or an SDE window as in
Flow-GRPO-Fast, ODE elsewhere); rewards are normalised within each prompt's group; each trained
transition is re-scored under the current policy and optimised with PPO's clipped ratio, plus
beta times the KL to the reference model on the step mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import samplers
from samplers import Trajectory

from ..advantages import group_advantages, multi_reward_advantages
from ..losses import grpo_clipped_loss
from .base import decode_rewards, expand_groups, gathered, sde_noise_levels


@dataclass
class Rollout:
    prompts: list[str]  # [n] local prompts
    metadata: list[dict]  # [n]
    group_ids: Tensor  # [n] global prompt index of each sample
    cond: object  # the policy's conditioning for `prompts`
    traj: Trajectory


def group_noise(policy, group_ids: Tensor, seed: int, iteration: int, height: int | None, width: int | None) -> Tensor:
    """One initial noise per prompt group, the same on every process: sample i gets the noise drawn
    from a generator seeded by (seed, iteration, group_ids[i]). Returns [n, *latent]."""
    base = (seed * 1_000_003 + iteration) * 100_003
    return torch.cat([policy.initial_noise(1, height, width, torch.Generator().manual_seed(base + int(g)))
                      for g in group_ids.tolist()])


class FlowGRPO:
    iteration = 0  # set by the trainer before each iteration
    seed = 0  # run.seed, set by whoever builds the algorithm (trainer, calibrate)

    def __init__(self, algo_cfg, sampler_cfg):
        self.cfg = algo_cfg
        self.sampler = sampler_cfg
        K = sampler_cfg.num_steps
        window = tuple(sampler_cfg.sde_window) if sampler_cfg.sde_window is not None else None
        self.kinds = samplers.step_kinds(K, sampler_cfg.kind, window=window)
        self.train_steps = [k for k, kind in enumerate(self.kinds) if kind != "ode"]
        self.steps_per_update = max(1, round(len(self.train_steps) * algo_cfg.timestep_fraction))

    def assign(self, metas: Sequence[dict], rank: int, world: int) -> tuple[list[dict], Tensor]:
        """Each prompt's group of G samples, split over processes (a group may span processes)."""
        return expand_groups(metas, self.cfg.group_size, rank, world)

    def updates_per_iteration(self, n_local: int) -> int:
        return self.cfg.inner_epochs * -(-n_local // self.cfg.train_batch_size)

    @torch.no_grad()
    def rollout(self, policy, metadata: Sequence[dict], group_ids: Tensor, generator: torch.Generator,
                height: int | None = None, width: int | None = None, noise_level: Tensor | None = None) -> Rollout:
        """SDE rollouts of the local samples; `noise_level` ([K]) overrides the sampler's levels."""
        prompts = [m["prompt"] for m in metadata]
        cond = policy.encode(prompts)
        if self.cfg.shared_noise:
            noise = group_noise(policy, group_ids, self.seed, self.iteration, height, width)
        else:
            noise = policy.initial_noise(len(prompts), height, width, generator)
        sigmas = policy.sigmas(self.sampler.num_steps, height, width)
        traj = samplers.rollout(policy.velocity_fn(cond, guidance=self.sampler.guidance), noise, sigmas, self.kinds,
                                noise_level=sde_noise_levels(self.sampler, sigmas) if noise_level is None else noise_level,
                                generator=generator)
        return Rollout(prompts, list(metadata), group_ids.to(noise.device), cond, traj)

    def score(self, policy, ro: Rollout, reward) -> Tensor:
        """Reward of each final image, [n]; with algorithm.reward_aggregation=advantage, [n, P + 1]
        (each part of the weighted reward, then the weighted total)."""
        per_part = self.cfg.reward_aggregation == "advantage"  # validated: the reward is a WeightedReward
        if per_part:
            self.part_weights = list(reward.weights.values())
        return decode_rewards(policy, reward, ro.traj.final, ro.prompts, ro.metadata, parts=per_part)

    def final_latents(self, ro: Rollout) -> Tensor:
        return ro.traj.final

    def final_prompts(self, ro: Rollout) -> list[str]:
        return list(ro.prompts)

    def group_advantages(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        """Global rewards [N] (or [N, P + 1] per reward part and total) and prompt ids [N] (gathered
        over processes) -> advantages [N]."""
        if rewards.dim() == 2:  # per-reward aggregation: sum_i w_i A_i
            return multi_reward_advantages(rewards[:, :-1], self.part_weights, group_ids, std_scope=self.cfg.std_scope,
                                           clip=self.cfg.adv_clip_max)
        return group_advantages(rewards, group_ids, std_scope=self.cfg.std_scope, clip=self.cfg.adv_clip_max)

    def advantages(self, ro: Rollout, rewards: Tensor, comm) -> tuple[Tensor, Tensor]:
        """Gather rewards over processes, normalise per prompt group. Returns (all rewards, local advantages)."""
        all_rewards, _, adv = gathered(comm, rewards, ro.group_ids, self.group_advantages)
        return all_rewards, adv

    def step_loss(self, policy, ro: Rollout, idx: Tensor, k: int, adv: Tensor):
        """Loss of transition k for samples `idx`: clipped ratio + beta KL. `adv` is [n] (one advantage
        per sample) or [n, K] (one per sample and step). Returns (loss, stats)."""
        traj = ro.traj
        x, x_next = traj.latents[idx, k], traj.latents[idx, k + 1]
        s, sn = float(traj.sigmas[k]), float(traj.sigmas[k + 1])
        sig = torch.full((len(idx),), s, device=x.device)
        step = samplers.step_fn(self.kinds[k])
        level = float(traj.noise_level[k])
        v = policy.velocity(x, sig, ro.cond, guidance=self.sampler.guidance, rows=idx)
        out = step(x, v, s, sn, noise_level=level, prev_sample=x_next)
        a = adv[idx] if adv.dim() == 1 else adv[idx, k]
        pg = grpo_clipped_loss(out.log_prob, traj.log_probs[idx, k], a, self.cfg.clip_range)
        loss, kl_val = pg.loss, 0.0
        if self.cfg.kl_beta > 0:
            with torch.no_grad(), policy.reference():
                v_ref = policy.velocity(x, sig, ro.cond, guidance=self.sampler.guidance, rows=idx)
                mean_ref = step(x, v_ref, s, sn, noise_level=level, prev_sample=x_next).mean
            kl = samplers.gaussian_mean_kl(out.mean, mean_ref, out.std).mean()
            loss = loss + self.cfg.kl_beta * kl
            kl_val = kl.item()
        return loss, {"ratio": pg.ratio_mean, "clip_fraction": pg.clip_fraction, "kl": kl_val,
                      "policy_loss": pg.loss.item(), "log_prob": out.log_prob.mean().item()}

    def policy_step(self, policy, ro: Rollout, adv: Tensor, update, generator: torch.Generator) -> dict:
        """inner_epochs passes over the rollouts in minibatches; for each minibatch a random subset of
        the SDE steps (timestep_fraction) is trained, one gradient accumulation each, then `update()`
        (clip + optimiser step) is called. Returns mean statistics; `first_ratio` is the ratio of the
        very first transition, which must be 1 (on-policy)."""
        n = len(ro.prompts)
        acc: dict[str, list[float]] = {}
        first_ratio = None
        for _ in range(self.cfg.inner_epochs):
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, self.cfg.train_batch_size):
                idx = perm[start:start + self.cfg.train_batch_size]
                order = torch.randperm(len(self.train_steps), generator=generator)[: self.steps_per_update]
                for j, k in enumerate(self.train_steps[i] for i in order.tolist()):
                    loss, st = self.step_loss(policy, ro, idx, k, adv)
                    if first_ratio is None:
                        first_ratio = st["ratio"]
                    update.backward(loss / self.steps_per_update, last=j == self.steps_per_update - 1)
                    for key, val in st.items():
                        acc.setdefault(key, []).append(val)
                    acc.setdefault("loss", []).append(loss.item())
                for key, val in update.step().items():
                    acc.setdefault(key, []).append(val)
        stats = {k: sum(v) / len(v) for k, v in acc.items()}
        stats["first_ratio"] = first_ratio
        return stats
