"""DiffusionNFT (Zheng et al. 2025, NVlabs/DiffusionNFT): online RL on the forward process.

No log-likelihood of a sampler is needed: rollouts come from the *old* policy with any sampler
(deterministic DPM-Solver-2 by default, as the reference); each final image's reward becomes a
group-normalised advantage and then an optimality probability r in [0, 1]; the clean latent x0 is
re-noised at several of the rollout's grid timesteps (x_t = (1 - t) x0 + t eps, fresh eps) and the
policy is trained with the NFT loss (flowalign/losses.py:nft_loss), which pulls the implicit
positive policy v+ = (1 - beta) v_old + beta v_theta towards the data for r = 1 and the implicit
negative one v- = (1 + beta) v_old - beta v_theta for r = 0, plus kl_beta ||v_theta - v_ref||^2.

The old policy is a soft copy of the trained weights, kept by this algorithm between iterations
(its `state_dict` is checkpointed): it starts equal to them and after each iteration becomes
decay x old + (1 - decay) x current, decay = min(rate x max(0, steps - flat), max) over the
optimiser steps so far (the reference's decay_type 1 is [0, 0.001, 0.5], type 2 [75, 0.0075,
0.999]). Within an iteration the gradients of all minibatches and timesteps are accumulated into
`gradient_steps_per_iteration` optimiser steps (the reference's one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

import samplers

from ..advantages import group_advantages
from ..ema import swapped_weights
from ..losses import nft_loss, optimality_probability
from ..seeds import sample_seed
from .base import Advantages, decode_rewards, expand_groups, gathered, trainable_params
from .flow_grpo import Rollout


@dataclass
class NFTRollout(Rollout):
    generators: list[torch.Generator] = field(default_factory=list)  # each sample's own stream, from its index


@dataclass
class NFTConfig:
    """algorithm.* of nft; the defaults are the reference's (config/nft.py, base.py)."""

    name: str = "nft"
    group_size: int = 8  # images per prompt (G)
    prompts_per_iteration: int = 4  # distinct prompts per iteration, over all processes
    inner_epochs: int = 1  # passes over the batch of rollouts per iteration
    train_batch_size: int = 8  # samples per minibatch, per process
    adv_clip_max: float = 5.0  # advantages are clipped to +- this before becoming r
    std_scope: Literal["group", "batch"] = "batch"  # the reference's global_std
    beta: float = 1.0  # NFT's beta: how far the implicit policies sit from the old one
    kl_beta: float = 1e-4  # weight of mean (v_theta - v_ref)^2 (0: no reference pass)
    timestep_fraction: float = 0.99  # each sample trains at int(K f) of the K grid timesteps, in random order
    weighting: Literal["adaptive", "none"] = "adaptive"  # the paper's adaptive x0 weighting, or plain v-space MSE
    old_decay: list[float] = field(default_factory=lambda: [0.0, 0.001, 0.5])  # [flat, rate, max] of the old policy
    gradient_steps_per_iteration: int = 1  # optimiser steps per pass over the batch
    solver: Literal["dpm2", "ode", "sde"] = "dpm2"  # rollouts: DPM-Solver-2, Euler ODE, or sampler.kind SDE
    reward_aggregation: Literal["sum"] = "sum"  # one reward (a weighted reward's total)

    @classmethod
    def validate(cls, cfg) -> None:
        a = cfg.algorithm
        if a.group_size < 2:
            raise ValueError(f"algorithm.group_size={a.group_size} must be at least 2 for group-relative advantages.")
        for key in ("prompts_per_iteration", "inner_epochs", "train_batch_size", "gradient_steps_per_iteration"):
            if a[key] < 1:
                raise ValueError(f"algorithm.{key}={a[key]} must be at least 1.")
        if not 0 < a.timestep_fraction <= 1:
            raise ValueError(f"algorithm.timestep_fraction={a.timestep_fraction} must be in (0, 1].")
        if not a.beta > 0 or a.kl_beta < 0 or not a.adv_clip_max > 0:
            raise ValueError(f"algorithm.beta={a.beta} and algorithm.adv_clip_max={a.adv_clip_max} must be > 0 and "
                             f"algorithm.kl_beta={a.kl_beta} >= 0.")
        if len(a.old_decay) != 3 or a.old_decay[0] < 0 or a.old_decay[1] < 0 or not 0 <= a.old_decay[2] < 1:
            raise ValueError(f"algorithm.old_decay={list(a.old_decay)} must be [flat >= 0, rate >= 0, max in [0, 1)] "
                             "(the reference's decay_type 1 is [0, 0.001, 0.5]).")


def old_policy_decay(steps: int, flat: float, rate: float, cap: float) -> float:
    """The reference's return_decay: 0 for the first `flat` optimiser steps, then rate per step up to `cap`."""
    return 0.0 if steps < flat else min((steps - flat) * rate, cap)


class NFT:
    def __init__(self, algo_cfg, sampler_cfg, part_weights: Sequence[float] | None = None):
        self.cfg = algo_cfg
        self.sampler = sampler_cfg
        self.old: list[Tensor] | None = None  # the old policy's trainable weights (None: equal to the current ones)
        self.steps = 0  # optimiser steps so far (the old policy's decay schedule)
        K = sampler_cfg.num_steps
        self.train_timesteps = max(1, int(K * algo_cfg.timestep_fraction))

    # -- state between iterations ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"old": [w.detach().cpu().clone() for w in self.old] if self.old is not None else [],
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.old = [w.clone() for w in state["old"]] or None
        self.steps = int(state["steps"])

    def _old_weights(self, params: list[Tensor]) -> list[Tensor]:
        if self.old is None:
            self.old = [p.detach().clone() for p in params]
        return [w.to(p.device, p.dtype) for w, p in zip(self.old, params)]

    # -- the engine's calls ----------------------------------------------------------------------------
    def assign(self, metas: Sequence[dict], rank: int, world: int) -> tuple[list[dict], Tensor]:
        """Each prompt's group, split over processes; every sample's metadata carries its index in the
        whole batch (`sample_index`), which seeds its noise, so any number of processes draws alike."""
        mine, gids = expand_groups(metas, self.cfg.group_size, rank, world)
        first = rank * len(mine)
        return [{**m, "sample_index": first + i} for i, m in enumerate(mine)], gids

    def updates_per_iteration(self, n_local: int) -> int:
        return self.cfg.inner_epochs * self.cfg.gradient_steps_per_iteration

    @torch.no_grad()
    def rollout(self, policy, metadata: Sequence[dict], group_ids: Tensor, generator: torch.Generator,
                height: int | None = None, width: int | None = None, *, seed: int = 0, iteration: int = 0) -> Rollout:
        """Rollouts of the old policy (its weights swapped in) with algorithm.solver; each sample's
        initial noise (and later its timesteps and re-noising) comes from its own generator, seeded by
        (seed, iteration, sample_index); `generator` drives SDE steps (solver: sde) only."""
        prompts = [m["prompt"] for m in metadata]
        cond = policy.encode(prompts)
        gens = [torch.Generator().manual_seed(sample_seed(seed, iteration, int(m.get("sample_index", i))))
                for i, m in enumerate(metadata)]
        noise = torch.cat([policy.initial_noise(1, height, width, g) for g in gens])
        sigmas = policy.sigmas(self.sampler.num_steps, height, width)
        params = trainable_params(policy)
        with swapped_weights(params, self._old_weights(params)), policy.sampling_weights():
            vfn = policy.velocity_fn(cond, guidance=self.sampler.guidance)
            if self.cfg.solver == "dpm2":
                traj = samplers.dpm2_rollout(vfn, noise, sigmas)
            else:
                kinds = "ode" if self.cfg.solver == "ode" else samplers.step_kinds(
                    self.sampler.num_steps, self.sampler.kind,
                    window=tuple(self.sampler.sde_window) if self.sampler.sde_window is not None else None)
                traj = samplers.rollout(vfn, noise, sigmas, kinds, noise_level=self.sampler.noise_level,
                                        generator=generator)
        return NFTRollout(prompts, list(metadata), group_ids.to(noise.device), cond, traj, generators=gens)

    def score(self, policy, ro: Rollout, reward) -> Tensor:
        return decode_rewards(policy, reward, ro.traj.final, ro.prompts, ro.metadata)

    def final_latents(self, ro: Rollout) -> Tensor:
        return ro.traj.final

    def final_prompts(self, ro: Rollout) -> list[str]:
        return list(ro.prompts)

    def advantages(self, ro: Rollout, rewards: Tensor, comm, *, iteration: int = 0) -> Advantages:
        def fn(r: Tensor, g: Tensor) -> Tensor:
            return group_advantages(r, g, std_scope=self.cfg.std_scope, clip=self.cfg.adv_clip_max)

        all_rewards, _, adv = gathered(comm, rewards, ro.group_ids, fn)
        return Advantages(all_rewards, adv)

    def policy_step(self, policy, ro: NFTRollout, advantages: Advantages, update, generator: torch.Generator) -> dict:
        """inner_epochs passes over the local samples in minibatches of train_batch_size; each sample
        trains at int(K f) of the grid timesteps (a random order per sample, fresh noise each, both from
        the sample's own generator); the
        gradients are accumulated into gradient_steps_per_iteration optimiser steps per pass. Then the
        old policy moves towards the trained weights. `first_deviation` is mean (v_theta - v_old)^2 of
        the very first forward, 0 while the old policy equals the current one."""
        c = self.cfg
        x0_all, n = ro.traj.final, len(ro.prompts)
        grid = ro.traj.sigmas[:-1].to(x0_all.device)  # the K sampling timesteps (sigma > 0)
        r_all = optimality_probability(advantages.local.float().to(x0_all.device), c.adv_clip_max)
        params = update.params
        acc: dict[str, list[float]] = {}
        first_dev = None
        T = self.train_timesteps
        for _ in range(c.inner_epochs):
            perm = torch.randperm(n, generator=generator)
            batches = perm.split(c.train_batch_size)
            for group in torch.arange(len(batches)).tensor_split(c.gradient_steps_per_iteration):
                backwards = len(group) * T
                done = 0
                for b in group.tolist():
                    idx = batches[b].to(x0_all.device)
                    x0, r = x0_all[idx], r_all[idx]
                    gens = [ro.generators[i] for i in idx.tolist()]
                    order = torch.stack([torch.randperm(grid.numel(), generator=g)[:T] for g in gens])
                    ts = grid[order.to(grid.device)]  # [B, T]
                    eps = torch.stack([torch.randn((T, *x0.shape[1:]), generator=g) for g in gens]).to(x0)
                    xts = [(1 - ts[:, j].view(-1, *([1] * (x0.ndim - 1)))) * x0
                           + ts[:, j].view(-1, *([1] * (x0.ndim - 1))) * eps[:, j] for j in range(T)]
                    with torch.no_grad(), swapped_weights(params, self._old_weights(params)), \
                            policy.sampling_weights():
                        v_olds = [policy.velocity(xts[j], ts[:, j], ro.cond, guidance=self.sampler.guidance,
                                                  rows=idx) for j in range(T)]
                    for j in range(T):
                        t, xt = ts[:, j], xts[j]
                        v = policy.velocity(xt, t, ro.cond, guidance=self.sampler.guidance, rows=idx)
                        per_sample = nft_loss(v, v_olds[j], xt, x0, t, r, c.beta, c.weighting)
                        policy_loss = (per_sample * c.adv_clip_max / c.beta).mean()
                        loss, kl = policy_loss, 0.0
                        if c.kl_beta > 0:
                            with torch.no_grad(), policy.reference():
                                v_ref = policy.velocity(xt, t, ro.cond, guidance=self.sampler.guidance, rows=idx)
                            kl_t = ((v - v_ref) ** 2).mean()
                            loss, kl = loss + c.kl_beta * kl_t, kl_t.item()
                        dev = ((v.detach() - v_olds[j]) ** 2).mean().item()
                        if first_dev is None:
                            first_dev = dev
                        done += 1
                        update.backward(loss / backwards, last=done == backwards)
                        for key, val in (("loss", loss.item()), ("policy_loss", policy_loss.item()), ("kl", kl),
                                         ("old_deviation", dev), ("r_mean", r.mean().item())):
                            acc.setdefault(key, []).append(val)
                for key, val in update.step().items():
                    acc.setdefault(key, []).append(val)
                self.steps += 1
        decay = old_policy_decay(self.steps, *self.cfg.old_decay)
        with torch.no_grad():
            self.old = [w.to(p.device).mul_(decay).add_(p.detach().to(w.dtype), alpha=1 - decay)
                        for w, p in zip(self._old_weights(params), params)]
        stats = {k: sum(v) / len(v) for k, v in acc.items()}
        stats.update(first_deviation=first_dev, old_decay=decay)
        return stats
