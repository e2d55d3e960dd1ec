"""Tree rollouts for BranchGRPO (Li et al. 2025): a trajectory that splits into
`branch_factor` children at chosen steps, sharing the prefix computation.

Every state is a node. Node n holds x at sigmas[step[n]]; the edge parent[n] -> n is one step
with behaviour log-prob log_probs[n]. A split step gives each parent `branch_factor` children
that share mean and std and differ in the noise:
- "correlated" (the paper): xi_b = (xi_0 + s eta_b) / sqrt(1 + s^2), so each child has exactly
  the marginal of an ordinary SDE step while siblings stay correlated;
- "independent" (the released code): xi_b = s eta_b, an independent draw scaled by s, which
  widens each child's transition by a factor s (its marginal is not an ordinary step's).
Log-probs are always under the nominal transition N(mean, std^2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .gaussian import randn
from .rollout import VelocityFn, noise_levels, normalise_kinds, step_fn


@dataclass
class TreeTrajectory:
    latents: Tensor  # [N, *S] state of each node
    step: Tensor  # [N] long: node n holds x at sigmas[step[n]]
    parent: Tensor  # [N] long: parent node, -1 for roots
    depth: Tensor  # [N] long: number of splits between the root and node n
    root: Tensor  # [N] long: index of the root (conditioning row) the node descends from
    log_probs: Tensor  # [N] behaviour log p of the edge parent[n] -> n; 0 for roots and ODE edges
    sde_mask: Tensor  # [N] bool: the edge into n was stochastic
    sigmas: Tensor  # [K+1]
    leaves: Tensor  # [L] node indices at step K, grouped by root

    @property
    def num_nodes(self) -> int:
        return self.step.numel()

    def edges(self) -> Tensor:
        """[E] indices of the non-root nodes (one per edge)."""
        return torch.nonzero(self.parent >= 0).flatten()

    def leaf_path(self, leaf: int) -> list[int]:
        """Node indices from the root to `leaf` (inclusive)."""
        path = [leaf]
        while int(self.parent[path[-1]]) >= 0:
            path.append(int(self.parent[path[-1]]))
        return path[::-1]

    def leaf_log_prob(self) -> Tensor:
        """[L] sum of edge log-probs along each leaf's path (for BranchGRPO's path weights)."""
        total = self.log_probs.clone()
        for k in range(1, int(self.step.max()) + 1):  # accumulate down the tree level by level
            idx = torch.nonzero(self.step == k).flatten()
            total[idx] = total[idx] + total[self.parent[idx]]
        return total[self.leaves]


def tree_rollout(
    velocity_fn: VelocityFn,
    noise: Tensor,
    sigmas: Tensor,
    *,
    split_steps: Sequence[int],
    branch_factor: int = 2,
    kinds: str | Sequence[str] = "flow_sde",
    noise_level: float | Sequence[float] | Tensor = 0.7,
    split_noise_scale: float = 1.0,
    mode: Literal["correlated", "independent"] = "correlated",
    generator: torch.Generator | None = None,
) -> TreeTrajectory:
    """Roll out from `noise` ([R, *S], one root per row) and branch at `split_steps`.

    kinds: step kind per step (split steps must be stochastic); noise_level scalar or [K]."""
    sigmas = torch.as_tensor(sigmas).flatten()
    K = sigmas.numel() - 1
    kinds = normalise_kinds(kinds, K)
    levels = noise_levels(noise_level, K)
    splits = sorted(set(int(s) for s in split_steps))
    if any(not 0 <= s < K for s in splits):
        raise ValueError(f"split_steps {list(split_steps)} must lie in [0, {K}) for {K} steps.")
    if any(kinds[s] == "ode" for s in splits):
        raise ValueError(f"split step(s) {[s for s in splits if kinds[s] == 'ode']} are ODE steps; "
                         "a split needs a stochastic kind there.")
    if branch_factor < 1:
        raise ValueError(f"branch_factor={branch_factor} must be at least 1.")
    if mode not in ("correlated", "independent"):
        raise ValueError(f"mode {mode!r} is unknown; use 'correlated' or 'independent'.")

    R = noise.shape[0]
    dev = noise.device
    x = noise
    ids = torch.arange(R, device=dev)
    lat, stp, par, dep, roo, lps, sde = [x], [torch.zeros(R, dtype=torch.long)], [torch.full((R,), -1)], \
        [torch.zeros(R, dtype=torch.long)], [torch.arange(R)], [torch.zeros(R)], [torch.zeros(R, dtype=torch.bool)]
    cur_root, cur_depth, next_id = torch.arange(R), torch.zeros(R, dtype=torch.long), R
    for k in range(K):
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        v = velocity_fn(x, torch.full((x.shape[0],), s, device=dev), cur_root.to(dev))
        fn = step_fn(kinds[k])
        if k in splits:
            nb = branch_factor
            parents = ids.repeat_interleave(nb)
            x_rep, v_rep = x.repeat_interleave(nb, 0), v.repeat_interleave(nb, 0)
            eta = randn(x_rep.shape, generator, dev, x_rep.dtype)
            if mode == "correlated":
                xi0 = randn(x.shape, generator, dev, x.dtype).repeat_interleave(nb, 0)
                xi = (xi0 + split_noise_scale * eta) / math.sqrt(1 + split_noise_scale**2)
            else:
                xi = split_noise_scale * eta
            out = fn(x_rep, v_rep, s, s_next, noise_level=float(levels[k]), noise=xi)
            cur_root, cur_depth = cur_root.repeat_interleave(nb), cur_depth.repeat_interleave(nb) + 1
        else:
            parents = ids
            out = fn(x, v, s, s_next, noise_level=float(levels[k]), generator=generator)
        x = out.prev_sample
        n = x.shape[0]
        ids = torch.arange(next_id, next_id + n, device=dev)
        next_id += n
        lat.append(x)
        stp.append(torch.full((n,), k + 1, dtype=torch.long))
        par.append(parents.cpu())
        dep.append(cur_depth.clone())
        roo.append(cur_root.clone())
        lps.append(out.log_prob.detach().cpu().to(torch.float32) if kinds[k] != "ode" else torch.zeros(n))
        sde.append(torch.full((n,), kinds[k] != "ode"))
    return TreeTrajectory(
        latents=torch.cat([t.to(lat[-1].dtype) for t in lat]),
        step=torch.cat(stp),
        parent=torch.cat(par).long(),
        depth=torch.cat(dep),
        root=torch.cat(roo),
        log_probs=torch.cat(lps),
        sde_mask=torch.cat(sde),
        sigmas=sigmas,
        leaves=ids.cpu(),
    )
