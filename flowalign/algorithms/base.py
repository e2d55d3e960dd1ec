"""What every algorithm shares with the trainer.

An algorithm is built as `Algorithm(algo_cfg, sampler_cfg, part_weights=None)` and used by the
trainer as
    metas, gids = algo.assign(prompts, rank, world)       # this process's units (samples or trees)
    ro = algo.rollout(policy, metas, gids, generator, height, width, seed=s, iteration=i)   # no grad
    rewards = algo.score(policy, ro, reward)              # local rewards ([n], [n, T] or [leaves])
    adv = algo.advantages(ro, rewards, comm, iteration=i) # an Advantages; comm: gather, process_index
    stats = algo.policy_step(policy, ro, adv, updater, generator)
Every call gets what it needs as arguments: no call reads state another call left behind, except
what an algorithm declares with `state_dict()` / `load_state_dict()` (DiffusionNFT's old policy),
which the trainer checkpoints and restores. The helpers below are the pieces the algorithms have
in common."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import samplers


@dataclass
class Advantages:
    """What `advantages()` hands to `policy_step()`."""

    all_rewards: Tensor  # every process's rewards (for logging): [N], [N, T] or [N, P + 1]
    local: Tensor  # this process's advantages: [n] per sample, [n, K] per sample and step, or [nodes]
    train_mask: Tensor | None = None  # [nodes] bool: the tree edges in the loss (BranchGRPO); None: all


class LocalComm:
    """The single-process stand-in for the Accelerator's `gather` and `process_index`."""

    process_index = 0

    @staticmethod
    def gather(t: Tensor) -> Tensor:
        return t


def trainable_params(policy) -> list[torch.nn.Parameter]:
    """The parameters training changes, in the order the trainer optimises and checkpoints them."""
    return [p for p in policy.transformer.parameters() if p.requires_grad]


def expand_groups(metas: Sequence[dict], group_size: int, rank: int, world: int) -> tuple[list[dict], Tensor]:
    """Repeat each prompt `group_size` times and give this process its contiguous share: a prompt's
    group may span processes. Returns (metadata per local sample, global prompt index per sample)."""
    expanded = [(g, m) for g, m in enumerate(metas) for _ in range(group_size)]
    if len(expanded) % world:
        raise ValueError(f"algorithm.prompts_per_iteration x group_size = {len(expanded)} samples must divide "
                         f"evenly over {world} processes; change prompts_per_iteration or group_size.")
    n = len(expanded) // world
    mine = expanded[rank * n:(rank + 1) * n]
    return [m for _, m in mine], torch.tensor([g for g, _ in mine], dtype=torch.long)


def gathered(comm, rewards: Tensor, group_ids: Tensor, fn: Callable[[Tensor, Tensor], Tensor]):
    """Gather every process's rewards and prompt ids (rank order), apply `fn(all_rewards, all_ids)`
    over the whole batch (groups may span processes) and return (all rewards, all advantages, this
    process's slice of the advantages). Each process holds the same number of rows."""
    all_r, all_g = comm.gather(rewards), comm.gather(group_ids.to(rewards.device))
    adv_all = fn(all_r.cpu(), all_g.cpu())
    n, rank = rewards.shape[0], comm.process_index
    return all_r, adv_all, adv_all[rank * n:(rank + 1) * n].to(rewards.device)


def sde_noise_levels(sampler_cfg, sigmas: Tensor) -> Tensor:
    """Per-step noise levels [K] of a rollout: sampler.noise_level, or DenseGRPO's calibrated psi(t)
    (sampler.psi, a list or a psi.json path) converted to flow_sde noise levels."""
    psi = sampler_cfg.psi
    if psi is None:
        return torch.full((sigmas.numel() - 1,), float(sampler_cfg.noise_level), dtype=torch.float64)
    if isinstance(psi, str):
        import json

        with open(psi) as f:
            psi = json.load(f)["psi"]
    return samplers.psi_to_noise_levels(list(psi), sigmas)


def decode_rewards(policy, reward, latents: Tensor, prompts: Sequence[str], metadata: Sequence[dict],
                   chunk: int = 64, parts: bool = False) -> Tensor:
    """Decode latents [n, *S] and score them with `reward` in chunks -> [n] float32. With
    `parts=True` (a WeightedReward) -> [n, P + 1]: each part's value, then the weighted total.
    A reward with `submit()` (a served reward) scores each chunk in the background while the next
    one decodes."""
    out = []
    background = hasattr(reward, "submit") and not parts
    with torch.no_grad():
        for i in range(0, latents.shape[0], chunk):
            images = policy.decode(latents[i:i + chunk])
            if background:
                out.append(reward.submit(images, list(prompts[i:i + chunk]), metadata=list(metadata[i:i + chunk])))
                continue
            total = reward(images, list(prompts[i:i + chunk]), metadata=list(metadata[i:i + chunk])).float()
            if parts:
                cols = [reward.last_parts[k].float().to(total.device) for k in reward.weights]
                total = torch.stack([*cols, total], dim=1)
            out.append(total)
    if background:
        out = [f.result().float() for f in out]
    return torch.cat(out).to(latents.device)
