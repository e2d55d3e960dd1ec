"""Flow-GRPO (Liu et al. 2025): GRPO on the SDE transitions of a flow-matching sampler.

Rollouts sample with an SDE on the trained steps (all steps, or an SDE window as in
Flow-GRPO-Fast, ODE elsewhere); rewards are normalised within each prompt's group; each trained
transition is re-scored under the current policy and optimised with PPO's clipped ratio, plus
beta times the KL to the reference model on the step mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

import samplers
from samplers import Trajectory

from ..advantages import group_advantages, multi_reward_advantages
from ..losses import grpo_objective
from ..seeds import group_noise_seed, sde_window_seed
from .base import Advantages, decode_rewards, expand_groups, gathered, sde_noise_levels


@dataclass
class FlowGRPOConfig:
    """algorithm.* of flow_grpo; the base schema of every GRPO-family algorithm."""

    name: str = "flow_grpo"
    group_size: int = 8  # images per prompt (G)
    prompts_per_iteration: int = 4  # distinct prompts per iteration, over all processes
    inner_epochs: int = 1  # policy updates per batch of rollouts
    train_batch_size: int = 8  # samples per optimiser minibatch, per process
    clip_range: float = 1e-4  # PPO ratio clip epsilon
    adv_clip_max: float = 5.0  # advantages are clipped to +- this
    # normalise a group's rewards by the std of the whole gathered batch (Flow-GRPO's configs,
    # global_std) or by the group's own std
    std_scope: Literal["group", "batch"] = "batch"
    kl_beta: float = 0.04  # weight of the KL to the reference model (0: no reference pass)
    # flow_grpo: Flow-GRPO's KL, ||mean - mean_ref||^2 / (2 std_t^2) with the step's std_t (no sqrt(-dt));
    # exact: the Gaussian transition KL, / (2 (std_t sqrt(-dt))^2), larger by 1 / (sigma - sigma_next)
    kl_form: Literal["flow_grpo", "exact"] = "flow_grpo"
    timestep_fraction: float = 1.0  # fraction of the SDE steps trained per sample
    # first: the first int(K f) SDE steps, in order (Flow-GRPO); random: a random round(K f) of them per minibatch
    timestep_selection: Literal["first", "random"] = "first"
    # samples whose advantage is 0 on every step leave the loss (Flow-GRPO); false keeps them (KL still acts)
    drop_zero_advantage: bool = True
    shared_noise: bool = False  # a prompt's G samples start from one initial noise (DanceGRPO), so the group's
    # spread comes from the SDE steps only
    reward_aggregation: Literal["sum", "advantage"] = "sum"  # weighted rewards: advantage of the sum, or sum of
    # the per-reward group advantages (flow_grpo / adv_grpo with reward.name=weighted)

    @classmethod
    def validate(cls, cfg) -> None:
        """Checks of cfg.algorithm against the rest of cfg, each one sentence naming the key and the fix."""
        a = cfg.algorithm
        if a.group_size < 2:
            raise ValueError(f"algorithm.group_size={a.group_size} must be at least 2 for group-relative advantages.")
        for key in ("prompts_per_iteration", "inner_epochs", "train_batch_size"):
            if a[key] < 1:
                raise ValueError(f"algorithm.{key}={a[key]} must be at least 1.")
        if not 0 < a.timestep_fraction <= 1:
            raise ValueError(f"algorithm.timestep_fraction={a.timestep_fraction} must be in (0, 1].")
        if a.clip_range <= 0 or a.kl_beta < 0:
            raise ValueError("algorithm.clip_range must be > 0 and algorithm.kl_beta >= 0.")
        if a.reward_aggregation == "advantage" and cfg.reward.name != "weighted":
            raise ValueError("algorithm.reward_aggregation=advantage needs reward.name=weighted (several rewards); "
                             "set reward_aggregation=sum for a single reward.")

    @staticmethod
    def require_sum_aggregation(cfg) -> None:
        """For algorithms whose advantages come from one reward per state or leaf."""
        a = cfg.algorithm
        if a.reward_aggregation != "sum":
            raise ValueError(f"algorithm.reward_aggregation={a.reward_aggregation!r} is for flow_grpo and adv_grpo; "
                             f"{a.name} needs reward_aggregation=sum.")


@dataclass
class Rollout:
    prompts: list[str]  # [n] local prompts
    metadata: list[dict]  # [n]
    group_ids: Tensor  # [n] global prompt index of each sample
    cond: object  # the policy's conditioning for `prompts`
    traj: Trajectory
    kinds: list[str] | None = None  # the step kinds of this rollout (a random SDE window), else the algorithm's


def group_noise(policy, group_ids: Tensor, seed: int, iteration: int, height: int | None, width: int | None) -> Tensor:
    """One initial noise per prompt group, the same on every process: sample i gets the noise drawn
    from a generator seeded by (seed, iteration, group_ids[i]). Returns [n, *latent]."""
    return torch.cat([policy.initial_noise(1, height, width,
                                           torch.Generator().manual_seed(group_noise_seed(seed, iteration, int(g))))
                      for g in group_ids.tolist()])


class FlowGRPO:
    def __init__(self, algo_cfg, sampler_cfg, part_weights: Sequence[float] | None = None):
        """`part_weights`: the weights of a weighted reward's parts, needed by
        algorithm.reward_aggregation=advantage (validated: the reward is then a weighted one)."""
        self.cfg = algo_cfg
        self.sampler = sampler_cfg
        self.part_weights = list(part_weights) if part_weights is not None else None
        if algo_cfg.reward_aggregation == "advantage" and self.part_weights is None:
            raise ValueError("algorithm.reward_aggregation=advantage needs the weighted reward's part weights.")
        K = sampler_cfg.num_steps
        window = tuple(sampler_cfg.sde_window) if sampler_cfg.sde_window is not None else None
        self.random_window = getattr(sampler_cfg, "sde_window_size", None) is not None
        if self.random_window:  # Flow-GRPO-Fast: placed per rollout; this is the first possible placement
            lo = sampler_cfg.sde_window_range[0]
            window = (lo, lo + sampler_cfg.sde_window_size)
        self.kinds = samplers.step_kinds(K, sampler_cfg.kind, window=window)
        self.train_steps = [k for k, kind in enumerate(self.kinds) if kind != "ode"]
        n, f = len(self.train_steps), algo_cfg.timestep_fraction
        # Flow-GRPO trains int(K f) steps (at least one here); the random option round(K f)
        self.steps_per_update = max(1, int(n * f) if algo_cfg.timestep_selection == "first" else round(n * f))

    def rollout_kinds(self, seed: int, iteration: int) -> list[str]:
        """The step kinds of the rollout at `iteration`: the fixed ones, or with sampler.sde_window_range
        Flow-GRPO-Fast's window [start, start + size) with start uniform in lo..hi - size (both ends
        included, as Python's random.randint in the reference), drawn from (seed, iteration) so that
        every process and a resumed run place it alike."""
        if not self.random_window:
            return self.kinds
        lo, hi = self.sampler.sde_window_range
        size = self.sampler.sde_window_size
        g = torch.Generator().manual_seed(sde_window_seed(seed, iteration))
        start = lo + int(torch.randint(hi - size - lo + 1, (1,), generator=g))
        return samplers.step_kinds(self.sampler.num_steps, self.sampler.kind, window=(start, start + size))

    def assign(self, metas: Sequence[dict], rank: int, world: int) -> tuple[list[dict], Tensor]:
        """Each prompt's group of G samples, split over processes (a group may span processes)."""
        return expand_groups(metas, self.cfg.group_size, rank, world)

    def updates_per_iteration(self, n_local: int) -> int:
        return self.cfg.inner_epochs * -(-n_local // self.cfg.train_batch_size)

    @torch.no_grad()
    def rollout(self, policy, metadata: Sequence[dict], group_ids: Tensor, generator: torch.Generator,
                height: int | None = None, width: int | None = None, *, seed: int = 0, iteration: int = 0,
                noise_level: Tensor | None = None) -> Rollout:
        """SDE rollouts of the local samples; `noise_level` ([K]) overrides the sampler's levels.
        (seed, iteration) seed the shared group noise of algorithm.shared_noise."""
        prompts = [m["prompt"] for m in metadata]
        cond = policy.encode(prompts)
        if self.cfg.shared_noise:
            noise = group_noise(policy, group_ids, seed, iteration, height, width)
        else:
            noise = policy.initial_noise(len(prompts), height, width, generator)
        sigmas = policy.sigmas(self.sampler.num_steps, height, width)
        kinds = self.rollout_kinds(seed, iteration)
        with policy.sampling_weights():
            traj = samplers.rollout(policy.velocity_fn(cond, guidance=self.sampler.guidance), noise, sigmas, kinds,
                                    noise_level=sde_noise_levels(self.sampler, sigmas) if noise_level is None
                                    else noise_level, generator=generator)
        return Rollout(prompts, list(metadata), group_ids.to(noise.device), cond, traj, list(kinds))

    def score(self, policy, ro: Rollout, reward) -> Tensor:
        """Reward of each final image, [n]; with algorithm.reward_aggregation=advantage, [n, P + 1]
        (each part of the weighted reward, then the weighted total)."""
        per_part = self.cfg.reward_aggregation == "advantage"  # validated: the reward is a WeightedReward
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

    def advantages(self, ro: Rollout, rewards: Tensor, comm, *, iteration: int = 0) -> Advantages:
        """Gather rewards over processes, normalise per prompt group."""
        all_rewards, _, adv = gathered(comm, rewards, ro.group_ids, self.group_advantages)
        return Advantages(all_rewards, adv)

    def step_loss(self, policy, ro: Rollout, idx: Tensor, k: int, adv: Tensor):
        """Loss of transition k for samples `idx`: clipped ratio + beta KL. `adv` is [n] (one advantage
        per sample) or [n, K] (one per sample and step). Returns (loss, stats)."""
        traj = ro.traj
        x, x_next = traj.latents[idx, k], traj.latents[idx, k + 1]
        s, sn = float(traj.sigmas[k]), float(traj.sigmas[k + 1])
        sig = torch.full((len(idx),), s, device=x.device)
        kinds = ro.kinds or self.kinds
        step = samplers.step_fn(kinds[k])
        level = float(traj.noise_level[k])
        v = policy.velocity(x, sig, ro.cond, guidance=self.sampler.guidance, rows=idx)
        out = step(x, v, s, sn, noise_level=level, prev_sample=x_next)
        a = adv[idx] if adv.dim() == 1 else adv[idx, k]
        kl = None
        if self.cfg.kl_beta > 0:
            with torch.no_grad(), policy.reference():
                v_ref = policy.velocity(x, sig, ro.cond, guidance=self.sampler.guidance, rows=idx)
                mean_ref = step(x, v_ref, s, sn, noise_level=level, prev_sample=x_next).mean
            kl = step_kl(self.cfg.kl_form, kinds[k], out.mean, mean_ref, out.std, s, sn)
        return grpo_objective(out.log_prob, traj.log_probs[idx, k], a, self.cfg.clip_range, kl, self.cfg.kl_beta)

    def policy_step(self, policy, ro: Rollout, advantages: Advantages, update, generator: torch.Generator) -> dict:
        """inner_epochs passes over the rollouts in minibatches (after dropping zero-advantage samples,
        algorithm.drop_zero_advantage); for each minibatch the first int(K f) SDE steps (or a random
        round(K f) of them, algorithm.timestep_selection) are trained, one gradient accumulation
        each, then `update()` (clip + optimiser step) is called. Returns mean statistics; `first_ratio` is the ratio of the
        very first transition, which must be 1 (on-policy)."""
        n, adv = len(ro.prompts), advantages.local
        acc: dict[str, list[float]] = {}
        first_ratio = None
        batches = -(-n // self.cfg.train_batch_size)
        keep = torch.ones(n, dtype=torch.bool)
        if self.cfg.drop_zero_advantage:
            keep = zero_advantage_mask(adv.cpu(), batches, generator)
        kept = torch.nonzero(keep).flatten()
        train_steps = [k for k, kind in enumerate(ro.kinds or self.kinds) if kind != "ode"]
        for _ in range(self.cfg.inner_epochs):
            perm = kept[torch.randperm(kept.numel(), generator=generator)]
            # Flow-GRPO splits the kept samples into the same number of minibatches; all kept: train_batch_size each
            chunks = perm.tensor_split(batches) if self.cfg.drop_zero_advantage else \
                perm.split(self.cfg.train_batch_size)
            for idx in chunks:
                if self.cfg.timestep_selection == "first":
                    steps = train_steps[: self.steps_per_update]
                else:
                    order = torch.randperm(len(train_steps), generator=generator)[: self.steps_per_update]
                    steps = [train_steps[i] for i in order.tolist()]
                for j, k in enumerate(steps):
                    loss, st = self.step_loss(policy, ro, idx, k, adv)
                    if first_ratio is None:
                        first_ratio = st["ratio"]
                    update.backward(loss / self.steps_per_update, last=j == self.steps_per_update - 1)
                    for key, val in st.items():
                        acc.setdefault(key, []).append(val)
                for key, val in update.step().items():
                    acc.setdefault(key, []).append(val)
        stats = {k: sum(v) / len(v) for k, v in acc.items()}
        stats.update(first_ratio=first_ratio, samples_trained=float(kept.numel()))
        return stats


def step_kl(form: str, kind: str, mean: Tensor, mean_ref: Tensor, std: Tensor, sigma: float,
            sigma_next: float) -> Tensor:
    """Per-sample KL term [B] of one transition (algorithm.kl_form): Flow-GRPO's, which divides by the
    step's std_t without the transition's noise scale, or the exact Gaussian transition KL."""
    if form == "exact":
        return samplers.gaussian_mean_kl(mean, mean_ref, std)
    return samplers.flow_grpo_kl(mean, mean_ref, std, samplers.transition_noise_scale(kind, sigma, sigma_next))


def zero_advantage_mask(adv: Tensor, batches: int, generator: torch.Generator) -> Tensor:
    """[n] bool: the samples that stay in the loss under Flow-GRPO's rule (scripts/train_sd3.py):
    drop samples whose advantage is 0 on every step, then put back randomly chosen dropped ones
    until the count divides into `batches` minibatches (when enough were dropped). Every process
    thus keeps `batches` minibatches and makes the same number of updates; if none survives, one
    sample per minibatch is kept (the reference would skip the update, which would stall the
    other processes)."""
    keep = (adv.abs().flatten(1).sum(dim=1) if adv.dim() > 1 else adv.abs()) != 0
    need = (-int(keep.sum())) % batches if int(keep.sum()) else batches
    dropped = torch.nonzero(~keep).flatten()
    if need and dropped.numel() >= need:
        keep[dropped[torch.randperm(dropped.numel(), generator=generator)[:need]]] = True
    return keep
