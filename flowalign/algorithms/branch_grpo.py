"""BranchGRPO (Li et al. 2025): tree rollouts that share prefixes, tree-based credit assignment and
pruning.

One tree per prompt: the rollout branches into `branch_factor` children at each split step, so a
tree has branch_factor ** len(split_steps) leaves (the prompt's group). Leaf rewards are fused
upwards (beta = 0: a node's reward is the mean of its descendant leaves; beta > 0: softmax-weighted
by edge or path log-probs, `fuse_rewards`), normalised per tree over the nodes at the same step
(depth; `depthwise_advantages`), and every edge takes its child's advantage. Pruning removes edges from the loss only:
- width ("parent_top1"): below the last split keep, for each parent at the last split, the edges of
  its best child's branch; ("extreme"): keep the `width_keep` best and worst leaves' branches;
- depth: the edges into the steps listed in `depth_pruning`, optionally a window sliding one step
  earlier every `depth_pruning_interval` iterations until `depth_pruning_stop`.
BranchGRPO-Mix (`mix`): ODE on every step that is neither a split step nor in sampler.sde_window,
so only stochastic edges are trained. Training computes one velocity per parent node and scores all
of its children with it; a rollout makes one model call per node per step, batched over the
frontier (samplers.tree_rollout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

import samplers
from samplers import TreeTrajectory

from ..losses import grpo_objective
from .base import Advantages, decode_rewards, sde_noise_levels
from .flow_grpo import FlowGRPOConfig, step_kl


@dataclass
class BranchGRPOConfig(FlowGRPOConfig):
    name: str = "branch_grpo"
    group_size: int = 8  # leaves per tree: must equal branch_factor ** len(split_steps)
    split_steps: list[int] = field(default_factory=lambda: [2, 5, 8])  # steps at which every node branches
    branch_factor: int = 2  # children per split
    split_noise_scale: float = 1.0  # s of the split noise
    split_mode: Literal["correlated", "independent"] = "correlated"  # paper | released code
    reward_beta: float = 0.0  # reward fusion temperature; 0 = the mean of the node's leaves
    # beta > 0: edge = the released code's recursive softmax over the child edges' log-probs;
    # path = a softmax over the descendant leaves' whole-path log-probs
    reward_fusion: Literal["edge", "path"] = "edge"
    # reference: unbiased std, eps 1e-8, zero where std < 1e-6 (the released code); population: std + 1e-4
    depth_std: Literal["reference", "population"] = "reference"
    mix: bool = False  # BranchGRPO-Mix: ODE on every step that is neither a split nor in sampler.sde_window
    width_pruning: Literal["none", "parent_top1", "extreme"] = "none"  # on the edges below the last split
    width_keep: int = 1  # extreme: keep the b best and b worst leaves' edges per tree
    depth_pruning: list[int] = field(default_factory=list)  # steps whose incoming edges leave the loss
    depth_pruning_slide: bool = False  # slide the pruned steps one earlier every depth_pruning_interval iterations
    depth_pruning_interval: int = 1
    depth_pruning_stop: int | None = None  # the slide stops here (default: the last split step)
    train_batch_size: int = 16  # tree nodes (parents) per forward pass in training

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        cls.require_sum_aggregation(cfg)
        a, s = cfg.algorithm, cfg.sampler
        splits = list(a.split_steps)
        if not splits or any(not 0 <= k < s.num_steps for k in splits) or len(set(splits)) != len(splits):
            raise ValueError(f"algorithm.split_steps={splits} must be distinct steps in [0, sampler.num_steps="
                             f"{s.num_steps}).")
        if a.branch_factor < 2:
            raise ValueError(f"algorithm.branch_factor={a.branch_factor} must be at least 2.")
        leaves = a.branch_factor ** len(splits)
        if a.group_size != leaves:
            raise ValueError(f"algorithm.group_size={a.group_size} must equal branch_factor ** len(split_steps) = "
                             f"{leaves} (the leaves of one tree); set algorithm.group_size={leaves}.")
        if s.sde_window is not None and not a.mix:
            lo, hi = s.sde_window
            outside = [k for k in splits if not lo <= k < hi]
            if outside:
                raise ValueError(f"algorithm.split_steps {outside} lie outside sampler.sde_window="
                                 f"{list(s.sde_window)}; splits need SDE steps (or set algorithm.mix=true).")
        if a.shared_noise:
            raise ValueError("algorithm.shared_noise is for per-sample algorithms; a branch_grpo tree already starts "
                             "its group from one noise, so remove algorithm.shared_noise.")
        if a.width_keep < 1:
            raise ValueError(f"algorithm.width_keep={a.width_keep} must be at least 1.")
        if a.depth_pruning_interval < 1:
            raise ValueError(f"algorithm.depth_pruning_interval={a.depth_pruning_interval} must be at least 1.")
        bad = [k for k in a.depth_pruning if not 1 <= k <= s.num_steps]
        if bad:
            raise ValueError(f"algorithm.depth_pruning steps {bad} must lie in [1, sampler.num_steps={s.num_steps}] "
                             "(the step of an edge's child).")


# -- the maths, as pure functions of a tree --------------------------------------------------------
def descendant_leaves(tree: TreeTrajectory) -> Tensor:
    """[N, L] bool: node n lies on the path of leaf l (n is l or one of its ancestors)."""
    desc = torch.zeros(tree.num_nodes, tree.leaves.numel(), dtype=torch.bool)
    for j, leaf in enumerate(tree.leaves.tolist()):
        desc[tree.leaf_path(leaf), j] = True
    return desc


def fuse_rewards(tree: TreeTrajectory, leaf_rewards: Tensor, beta: float = 0.0, form: str = "edge") -> Tensor:
    """Node rewards [N] from the leaf rewards. beta = 0: the mean of the node's descendant leaves
    (BranchGRPO's default). beta > 0, form "edge" (the released code's tree_prob_weighted, with
    temperature beta): bottom-up, a node with several children takes sum_c softmax(beta log p(edge
    into c)) r(c), a node with one child passes its child's reward up. Form "path": sum over the
    node's descendant leaves of softmax(beta log p_path(l)) r_l, with the log-prob of the whole path."""
    rewards = leaf_rewards.to(torch.float64).cpu()
    if beta and form == "edge":
        return _edge_softmax_fusion(tree, rewards, beta)
    if form not in ("edge", "path"):
        raise ValueError(f"reward fusion form {form!r} is unknown; use edge or path.")
    desc = descendant_leaves(tree)
    logits = beta * tree.leaf_log_prob().to(torch.float64) if beta else torch.zeros(tree.leaves.numel(),
                                                                                    dtype=torch.float64)
    w = torch.where(desc, logits.expand_as(desc), torch.tensor(float("-inf"), dtype=torch.float64)).softmax(dim=1)
    return w @ rewards


def _edge_softmax_fusion(tree: TreeTrajectory, leaf_rewards: Tensor, beta: float) -> Tensor:
    node = torch.full((tree.num_nodes,), float("nan"), dtype=torch.float64)
    node[tree.leaves] = leaf_rewards
    lp = tree.log_probs.to(torch.float64).cpu()
    for k in range(int(tree.step.max()) - 1, -1, -1):  # deepest internal level first
        for n in torch.nonzero(tree.step == k).flatten().tolist():
            children = torch.nonzero(tree.parent == n).flatten()
            if children.numel() == 1:
                node[n] = node[children[0]]
            elif children.numel() > 1:
                node[n] = (torch.softmax(beta * lp[children], dim=0) * node[children]).sum()
    return node


def depthwise_advantages(tree: TreeTrajectory, node_rewards: Tensor, *, std: str = "reference",
                         eps: float | None = None, clip: float = 5.0) -> Tensor:
    """A(n) = (r(n) - mean_d) / (std_d + eps) over the nodes of n's tree at n's step (depth); a step
    with a single node (before the first split, or a root) gets 0. std "reference" (the released
    code): the unbiased std, eps 1e-8, and all zeros where std < 1e-6; "population": the population
    std, eps 1e-4. Clipped to +-clip. [N] float64."""
    if std not in ("reference", "population"):
        raise ValueError(f"depth-wise std {std!r} is unknown; use reference or population.")
    eps = (1e-8 if std == "reference" else 1e-4) if eps is None else eps
    adv = torch.zeros(tree.num_nodes, dtype=torch.float64)
    key = tree.root * (int(tree.step.max()) + 1) + tree.step
    for k in torch.unique(key):
        idx = torch.nonzero(key == k).flatten()
        if idx.numel() < 2:
            continue
        r = node_rewards[idx].to(torch.float64)
        sd = r.std(unbiased=std == "reference")
        if std == "reference" and sd < 1e-6:
            continue
        adv[idx] = (r - r.mean()) / (sd + eps)
    return adv.clamp(-clip, clip)


def comparable_edges(tree: TreeTrajectory) -> Tensor:
    """[N] bool: edges (into node n) that can carry a policy gradient: stochastic, and n has other
    nodes at its step in its tree (a lone node has no advantage)."""
    key = tree.root * (int(tree.step.max()) + 1) + tree.step
    counts = torch.bincount(key)[key]
    return (tree.parent >= 0) & tree.sde_mask & (counts > 1)


def _last_layer(tree: TreeTrajectory, split_steps: Sequence[int]) -> tuple[Tensor, int]:
    last = max(split_steps)
    return tree.step > last, last


def width_prune(tree: TreeTrajectory, node_adv: Tensor, split_steps: Sequence[int], mode: str,
                keep: int = 1) -> Tensor:
    """[N] bool keep-mask of edges after width pruning. Only edges below the last split (into nodes
    at steps > last split) can be dropped; the leaf at the end of such a branch decides:
    parent_top1 keeps, for every parent at the last split, only its best child's branch (ties: the
    first child); extreme keeps the `keep` best and `keep` worst branches of each tree."""
    mask = torch.ones(tree.num_nodes, dtype=torch.bool)
    if mode == "none":
        return mask
    if mode not in ("parent_top1", "extreme"):
        raise ValueError(f"width pruning {mode!r} is unknown; use none, parent_top1 or extreme.")
    below, last = _last_layer(tree, split_steps)
    leaves = tree.leaves.tolist()
    paths = {leaf: tree.leaf_path(leaf) for leaf in leaves}
    kept: set[int] = set()
    if mode == "parent_top1":
        by_parent: dict[int, list[int]] = {}
        for leaf in leaves:
            split_parent = next(n for n in paths[leaf] if int(tree.step[n]) == last)
            by_parent.setdefault(split_parent, []).append(leaf)
        for group in by_parent.values():
            kept.add(max(group, key=lambda leaf: (float(node_adv[leaf]), -leaf)))
    else:
        by_root: dict[int, list[int]] = {}
        for leaf in leaves:
            by_root.setdefault(int(tree.root[leaf]), []).append(leaf)
        for group in by_root.values():
            order = sorted(group, key=lambda leaf: (float(node_adv[leaf]), leaf))
            kept.update(order[:keep] + order[-keep:])
    for leaf in leaves:
        if leaf not in kept:
            for n in paths[leaf]:
                if below[n]:
                    mask[n] = False
    return mask


def pruned_depths(base: Sequence[int], iteration: int, *, slide: bool, interval: int, stop: int) -> list[int]:
    """The steps whose incoming edges are dropped at `iteration`: `base`, or with `slide` the window
    moved one step earlier every `interval` iterations until its first step reaches `stop`."""
    base = sorted(int(b) for b in base)
    if not base or not slide:
        return base
    shift = min(iteration // interval, max(0, base[0] - stop))
    return [b - shift for b in base]


def depth_prune(tree: TreeTrajectory, steps: Sequence[int]) -> Tensor:
    """[N] bool keep-mask: drop the edges into nodes at the given steps."""
    mask = torch.ones(tree.num_nodes, dtype=torch.bool)
    for k in steps:
        mask &= tree.step != int(k)
    return mask


# -- the algorithm ---------------------------------------------------------------------------------
@dataclass
class TreeRollout:
    prompts: list[str]  # [R] one prompt per tree (root)
    metadata: list[dict]  # [R]
    group_ids: Tensor  # [R] global prompt index of each tree
    cond: object  # the policy's conditioning for `prompts`
    tree: TreeTrajectory
    kinds: list[str]  # [K]
    levels: Tensor  # [K] noise level per step


class BranchGRPO:
    def __init__(self, algo_cfg, sampler_cfg, part_weights=None):
        self.cfg, self.sampler = algo_cfg, sampler_cfg
        K = sampler_cfg.num_steps
        window = tuple(sampler_cfg.sde_window) if sampler_cfg.sde_window is not None else None
        splits = set(int(k) for k in algo_cfg.split_steps)
        if algo_cfg.mix:
            lo, hi = window if window is not None else (0, 0)
            self.kinds = [sampler_cfg.kind if (k in splits or lo <= k < hi) else "ode" for k in range(K)]
        else:
            self.kinds = samplers.step_kinds(K, sampler_cfg.kind, window=window)

    def assign(self, metas: Sequence[dict], rank: int, world: int) -> tuple[list[dict], Tensor]:
        """Whole trees per process: prompts_per_iteration must divide evenly over the processes."""
        if len(metas) % world:
            raise ValueError(f"algorithm.prompts_per_iteration={len(metas)} trees must divide evenly over {world} "
                             "processes for branch_grpo; change prompts_per_iteration.")
        n = len(metas) // world
        return list(metas[rank * n:(rank + 1) * n]), torch.arange(rank * n, (rank + 1) * n)

    def updates_per_iteration(self, n_local: int) -> int:
        return self.cfg.inner_epochs

    @torch.no_grad()
    def rollout(self, policy, metadata: Sequence[dict], group_ids: Tensor, generator: torch.Generator,
                height: int | None = None, width: int | None = None, *, seed: int = 0,
                iteration: int = 0) -> TreeRollout:
        """One tree per prompt; (seed, iteration) are unused: a tree's leaves share its root noise."""
        prompts = [m["prompt"] for m in metadata]
        cond = policy.encode(prompts)
        noise = policy.initial_noise(len(prompts), height, width, generator)
        sigmas = policy.sigmas(self.sampler.num_steps, height, width)
        levels = sde_noise_levels(self.sampler, sigmas)
        tree = samplers.tree_rollout(policy.velocity_fn(cond, guidance=self.sampler.guidance), noise, sigmas,
                                     split_steps=list(self.cfg.split_steps), branch_factor=self.cfg.branch_factor,
                                     kinds=self.kinds, noise_level=levels, split_noise_scale=self.cfg.split_noise_scale,
                                     mode=self.cfg.split_mode, generator=generator)
        return TreeRollout(prompts, list(metadata), group_ids.to(noise.device), cond, tree, self.kinds, levels)

    def score(self, policy, ro: TreeRollout, reward) -> Tensor:
        """Reward of every leaf, [R * leaves] grouped by tree."""
        t = ro.tree
        roots = t.root[t.leaves].tolist()
        return decode_rewards(policy, reward, t.latents[t.leaves], [ro.prompts[r] for r in roots],
                              [ro.metadata[r] for r in roots])

    def final_latents(self, ro: TreeRollout) -> Tensor:
        return ro.tree.latents[ro.tree.leaves]

    def final_prompts(self, ro: TreeRollout) -> list[str]:
        return [ro.prompts[r] for r in ro.tree.root[ro.tree.leaves].tolist()]

    def node_advantages(self, tree: TreeTrajectory, leaf_rewards: Tensor) -> Tensor:
        fused = fuse_rewards(tree, leaf_rewards, self.cfg.reward_beta, self.cfg.reward_fusion)
        return depthwise_advantages(tree, fused, std=self.cfg.depth_std, clip=self.cfg.adv_clip_max).to(torch.float32)

    def edge_mask(self, tree: TreeTrajectory, node_adv: Tensor, iteration: int) -> Tensor:
        """[N] bool: the edges in this iteration's loss (comparable, not pruned)."""
        c = self.cfg
        mask = comparable_edges(tree)
        mask &= width_prune(tree, node_adv, list(c.split_steps), c.width_pruning, c.width_keep)
        stop = c.depth_pruning_stop if c.depth_pruning_stop is not None else max(c.split_steps)
        mask &= depth_prune(tree, pruned_depths(list(c.depth_pruning), iteration, slide=c.depth_pruning_slide,
                                                interval=c.depth_pruning_interval, stop=stop))
        return mask

    def advantages(self, ro: TreeRollout, rewards: Tensor, comm, *, iteration: int = 0) -> Advantages:
        """Per-node advantages of this process's trees (a tree never spans processes) and the edges
        in this iteration's loss (`iteration` slides depth pruning); the leaf rewards of all
        processes are gathered for logging."""
        adv = self.node_advantages(ro.tree, rewards.cpu())
        return Advantages(comm.gather(rewards), adv.to(rewards.device), self.edge_mask(ro.tree, adv, iteration))

    def policy_step(self, policy, ro: TreeRollout, advantages: Advantages, update,
                    generator: torch.Generator) -> dict:
        """inner_epochs passes; each pass accumulates the gradient of every kept edge, computing one
        velocity per parent node (train_batch_size parents per forward) for all its children, then
        calls update() once. Returns mean statistics; first_ratio must be 1 (on-policy)."""
        t, adv = ro.tree, advantages.local
        mask = advantages.train_mask if advantages.train_mask is not None else comparable_edges(t)
        edges = torch.nonzero(mask).flatten()
        stats: dict[str, list[float]] = {}
        first_ratio = None
        if edges.numel() == 0:
            return {"edges_trained": 0.0}
        parents = torch.unique(t.parent[edges])
        adv = adv.cpu()
        for _ in range(self.cfg.inner_epochs):
            order = parents[torch.randperm(parents.numel(), generator=generator)]
            chunks = list(order.split(self.cfg.train_batch_size))
            for ci, chunk in enumerate(chunks):
                child = edges[torch.isin(t.parent[edges], chunk)]
                loss, st = self._edges_loss(policy, ro, chunk, child, adv)
                if first_ratio is None:
                    first_ratio = st["ratio"]
                update.backward(loss * (child.numel() / edges.numel()), last=ci == len(chunks) - 1)
                for key, val in st.items():
                    stats.setdefault(key, []).append(val)
            for key, val in update.step().items():
                stats.setdefault(key, []).append(val)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out.update(first_ratio=first_ratio, edges_trained=float(edges.numel()), parents_trained=float(parents.numel()))
        return out

    def _edges_loss(self, policy, ro: TreeRollout, parents: Tensor, child: Tensor, adv: Tensor):
        t, g = ro.tree, self.sampler.guidance
        dev = t.latents.device
        pos = {int(p): i for i, p in enumerate(parents.tolist())}
        x = t.latents[parents.to(dev)]
        sig = t.sigmas.to(torch.float32)[t.step[parents]].to(dev)
        rows = t.root[parents].to(dev)
        v = policy.velocity(x, sig, ro.cond, guidance=g, rows=rows)
        v_ref = None
        if self.cfg.kl_beta > 0:
            with torch.no_grad(), policy.reference():
                v_ref = policy.velocity(x, sig, ro.cond, guidance=g, rows=rows)
        lps, olds, advs, kls = [], [], [], []
        pidx = torch.tensor([pos[int(p)] for p in t.parent[child].tolist()])
        for k in torch.unique(t.step[t.parent[child]]).tolist():
            sel = pidx[t.step[t.parent[child]] == k]
            ch = child[t.step[t.parent[child]] == k]
            s, sn = float(t.sigmas[k]), float(t.sigmas[k + 1])
            fn, lvl = samplers.step_fn(ro.kinds[k]), float(ro.levels[k])
            out = fn(x[sel], v[sel], s, sn, noise_level=lvl, prev_sample=t.latents[ch.to(dev)])
            lps.append(out.log_prob)
            olds.append(t.log_probs[ch].to(dev))
            advs.append(adv[ch].to(dev))
            if v_ref is not None:
                mean_ref = fn(x[sel], v_ref[sel], s, sn, noise_level=lvl, prev_sample=t.latents[ch.to(dev)]).mean
                kls.append(step_kl(self.cfg.kl_form, ro.kinds[k], out.mean, mean_ref, out.std, s, sn))
        return grpo_objective(torch.cat(lps), torch.cat(olds), torch.cat(advs), self.cfg.clip_range,
                              torch.cat(kls) if kls else None, self.cfg.kl_beta)
