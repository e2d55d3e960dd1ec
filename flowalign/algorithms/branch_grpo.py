"""BranchGRPO (Li et al. 2025): tree rollouts that share prefixes, tree-based credit assignment and
pruning.

One tree per prompt: the rollout branches into `branch_factor` children at each split step, so a
tree has branch_factor ** len(split_steps) leaves (the prompt's group). Leaf rewards are fused
upwards (beta = 0: a node's reward is the mean of its descendant leaves; beta > 0: softmax-weighted
by edge or path log-probs, `fuse_rewards`), normalised per tree over the nodes at the same step
(depth; `depthwise_advantages`), and every edge takes its child's advantage. Pruning removes edges from the loss only:
- width, on the transitions whose parent lies below the last split (the split edges stay), as the
  released code: "branch_top" (its mode 1) keeps the best `width_pruning_ratio` of the transitions in
  each chain below the last split, "batch_extreme" (mode 2) the best and worst ratio / 2 of them over
  the process's batch; flowalign's "parent_top1" keeps, for each parent at the last split, only its
  best child's whole branch (the split edges included) and "extreme" the `width_keep` best and worst
  leaves' branches of each tree;
- depth: the edges into the steps listed in `depth_pruning`, optionally a window sliding one step
  earlier every `depth_pruning_interval` iterations until `depth_pruning_stop`.
BranchGRPO-Mix (`mix`): ODE on every step that is neither a split step nor in sampler.sde_window,
so only stochastic edges are trained. Updates (`update_schedule`): "transitions" (the released
code's) shuffles the kept transitions and steps the optimiser after every `gradient_accumulation_steps`
of them (and after the remainder), each transition's clipped loss divided by
(gradient_accumulation_steps x transitions per tree), so later transitions are off-policy and the
clip acts; "epoch" accumulates every transition into one update per inner epoch. Training computes
one velocity per parent node and scores all of its children with it; a rollout makes one model call
per node per step, batched over the frontier (samplers.tree_rollout)."""

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
    # the split noise: independent (the released code: fresh noise x s per child; its default s = 0.3, its
    # FLUX script 4) or correlated (the paper: (xi_0 + s eta_b) / sqrt(1 + s^2), each child's marginal kept)
    split_noise_scale: float = 0.3
    split_mode: Literal["correlated", "independent"] = "independent"
    reward_beta: float = 0.0  # reward fusion temperature; 0 = the mean of the node's leaves
    # beta > 0: edge = the released code's recursive softmax over the child edges' log-probs;
    # path = a softmax over the descendant leaves' whole-path log-probs
    reward_fusion: Literal["edge", "path"] = "edge"
    # reference: unbiased std, eps 1e-8, zero where std < 1e-6 (the released code); population: std + 1e-4
    depth_std: Literal["reference", "population"] = "reference"
    mix: bool = False  # BranchGRPO-Mix: ODE on every step that is neither a split nor in sampler.sde_window
    kl_beta: float = 0.0  # the released code has no KL term
    # width pruning below the last split: branch_top / batch_extreme (the released code's modes 1 / 2) keep
    # width_pruning_ratio of the transitions; parent_top1 / extreme drop whole branches (flowalign's)
    width_pruning: Literal["none", "branch_top", "batch_extreme", "parent_top1", "extreme"] = "none"
    width_pruning_ratio: float = 0.5
    width_keep: int = 1  # extreme: keep the b best and b worst leaves' edges per tree
    # transitions: an optimiser step every gradient_accumulation_steps shuffled transitions (the released
    # code); epoch: one optimiser step per inner epoch over all transitions
    update_schedule: Literal["transitions", "epoch"] = "transitions"
    gradient_accumulation_steps: int = 1  # transitions per optimiser step (the released FLUX script: 12)
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
        if not 0 < a.width_pruning_ratio <= 1:
            raise ValueError(f"algorithm.width_pruning_ratio={a.width_pruning_ratio} must be in (0, 1].")
        if a.gradient_accumulation_steps < 1:
            raise ValueError(f"algorithm.gradient_accumulation_steps={a.gradient_accumulation_steps} must be at least 1.")
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


def stochastic_edges(tree: TreeTrajectory) -> Tensor:
    """[N] bool: edges (into node n) sampled with noise, so with a log-probability."""
    return (tree.parent >= 0) & tree.sde_mask


def comparable_edges(tree: TreeTrajectory) -> Tensor:
    """[N] bool: edges (into node n) that can carry a policy gradient: stochastic, and n has other
    nodes at its step in its tree (a lone node has no advantage)."""
    key = tree.root * (int(tree.step.max()) + 1) + tree.step
    counts = torch.bincount(key)[key]
    return (tree.parent >= 0) & tree.sde_mask & (counts > 1)


def width_prune(tree: TreeTrajectory, node_adv: Tensor, split_steps: Sequence[int], mode: str,
                keep: int = 1, ratio: float = 0.5) -> Tensor:
    """[N] bool keep-mask of edges (edge n: parent(n) -> n) after width pruning."""
    mask = torch.ones(tree.num_nodes, dtype=torch.bool)
    if mode == "none":
        return mask
    if mode in ("branch_top", "batch_extreme"):
        return _reference_width_prune(tree, node_adv, max(split_steps), mode, ratio)
    if mode not in ("parent_top1", "extreme"):
        raise ValueError(f"width pruning {mode!r} is unknown; use none, branch_top, batch_extreme, parent_top1 "
                         "or extreme.")
    # flowalign's: whole branches below the last split (edges into steps > last split, so the last
    # split's own edges too); the leaf at the end of a branch decides
    last = max(split_steps)
    below = tree.step > last
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


def dfs_order(tree: TreeTrajectory) -> list[int]:
    """Nodes in the released code's collection order: depth-first from each root, children in order."""
    children: dict[int, list[int]] = {}
    for n, p in enumerate(tree.parent.tolist()):
        children.setdefault(p, []).append(n)
    out, stack = [], list(reversed(children.get(-1, [])))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children.get(n, [])))
    return out


def _reference_width_prune(tree: TreeTrajectory, node_adv: Tensor, last: int, mode: str, ratio: float) -> Tensor:
    """The released code's width pruning (train_branchgrpo_flux.py, width_pruning_mode 1 / 2) on the
    transitions whose parent's step is after the last split (the split's own edges are kept), ranked
    by advantage, descending, ties in depth-first order. branch_top: in each chain below the last split (the
    descendants of one child of the split) keep the best max(1, int(n ratio)) of its n transitions;
    batch_extreme: over all such transitions keep the best k // 2 and the worst k - k // 2,
    k = max(2, int(n ratio))."""
    mask = torch.ones(tree.num_nodes, dtype=torch.bool)
    last_layer = [n for n in dfs_order(tree) if tree.parent[n] >= 0 and int(tree.step[tree.parent[n]]) > last]
    if not last_layer:
        return mask

    def ranked(edges: list[int]) -> list[int]:
        return sorted(edges, key=lambda n: -float(node_adv[n]))  # stable: ties keep the depth-first order

    if mode == "branch_top":
        groups: dict[int, list[int]] = {}
        for n in last_layer:
            head = n
            while int(tree.step[head]) != last + 1:  # climb to the split's child heading this chain
                head = int(tree.parent[head])
            groups.setdefault(head, []).append(n)
        kept = [e for g in groups.values() for e in ranked(g)[:max(1, int(len(g) * ratio))]]
    else:
        order = ranked(last_layer)
        k = max(2, int(len(order) * ratio))
        kept = order[:k // 2] + (order[-(k - k // 2):] if k - k // 2 > 0 else [])
    mask[last_layer] = False
    mask[kept] = True
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
        """Optimiser steps per iteration (for the warm-up length): one per inner epoch, or with the
        transitions schedule one per gradient_accumulation_steps of a full tree's edges."""
        if self.cfg.update_schedule == "epoch":
            return self.cfg.inner_epochs
        c, K = self.cfg, self.sampler.num_steps
        nodes = sum(c.branch_factor ** sum(1 for s in c.split_steps if s < k) for k in range(1, K + 1))
        return c.inner_epochs * -(-(nodes * n_local) // c.gradient_accumulation_steps)  # n_local: trees

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
        with policy.sampling_weights():
            tree = samplers.tree_rollout(policy.velocity_fn(cond, guidance=self.sampler.guidance), noise, sigmas,
                                         split_steps=list(self.cfg.split_steps), branch_factor=self.cfg.branch_factor,
                                         kinds=self.kinds, noise_level=levels,
                                         split_noise_scale=self.cfg.split_noise_scale, mode=self.cfg.split_mode,
                                         generator=generator)
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
        # the released code's transitions are every stochastic edge (those into a node alone at its
        # step carry zero advantage but count in its accumulation schedule); epoch: comparable ones only
        mask = stochastic_edges(tree) if c.update_schedule == "transitions" else comparable_edges(tree)
        mask &= width_prune(tree, node_adv, list(c.split_steps), c.width_pruning, c.width_keep, c.width_pruning_ratio)
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
        """Train on the kept edges (algorithm.update_schedule). Returns mean statistics; first_ratio,
        the ratio of the first transition trained, must be 1 (on-policy)."""
        t = ro.tree
        mask = advantages.train_mask if advantages.train_mask is not None else comparable_edges(t)
        edges = torch.nonzero(mask).flatten()
        if edges.numel() == 0:
            return {"edges_trained": 0.0}
        if self.cfg.update_schedule == "transitions":
            return self._transition_updates(policy, ro, edges, advantages.local.cpu(), update, generator)
        return self._epoch_updates(policy, ro, edges, advantages.local.cpu(), update, generator)

    def _backward_by_parents(self, policy, ro, parents, edges, adv, update, scale, stats: dict) -> float | None:
        """Accumulate the gradient of `edges` (one velocity per parent, train_batch_size parents per
        forward, in the order of `parents`), each chunk's mean loss times scale(number of its edges);
        statistics go to `stats`. Returns the first chunk's ratio."""
        t = ro.tree
        first = None
        chunks = list(parents.split(self.cfg.train_batch_size))
        for ci, chunk in enumerate(chunks):
            child = edges[torch.isin(t.parent[edges], chunk)]
            loss, st = self._edges_loss(policy, ro, chunk, child, adv)
            first = st["ratio"] if first is None else first
            update.backward(loss * scale(child.numel()), last=ci == len(chunks) - 1)
            for key, val in st.items():
                stats.setdefault(key, []).append(val)
        return first

    @staticmethod
    def _step(update, stats: dict) -> None:
        for key, val in update.step().items():
            stats.setdefault(key, []).append(val)

    def _epoch_updates(self, policy, ro, edges, adv, update, generator) -> dict:
        """inner_epochs passes; each accumulates the gradient of every kept edge, then calls update() once."""
        stats: dict[str, list[float]] = {}
        first_ratio = None
        parents = torch.unique(ro.tree.parent[edges])
        for _ in range(self.cfg.inner_epochs):
            order = parents[torch.randperm(parents.numel(), generator=generator)]
            r = self._backward_by_parents(policy, ro, order, edges, adv, update, lambda n: n / edges.numel(), stats)
            first_ratio = r if first_ratio is None else first_ratio
            self._step(update, stats)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out.update(first_ratio=first_ratio, edges_trained=float(edges.numel()), parents_trained=float(parents.numel()))
        return out

    def _transition_updates(self, policy, ro, edges, adv, update, generator) -> dict:
        """The released code's schedule (train_branchgrpo_flux.py): per inner epoch, shuffle the kept
        transitions and take them in windows of G = gradient_accumulation_steps; transition i adds
        max(-A r, -A clip(r)) / (G x transitions per tree) (+ beta KL) to the gradient; an optimiser
        step follows every window (the last may be shorter). Within a window the parameters do not
        change, so its transitions are computed together, one velocity per parent. Without KL a
        zero-advantage transition adds exactly nothing and is not computed, but it counts in the
        windows; a window with none to compute still runs one (zero-gradient) transition so that every
        process calls backward and step alike."""
        t, G = ro.tree, self.cfg.gradient_accumulation_steps
        per_tree = max(1, edges.numel() // max(1, len(ro.prompts)))
        stats: dict[str, list[float]] = {}
        first_ratio = None
        computed = 0
        for _ in range(self.cfg.inner_epochs):
            for window in edges[torch.randperm(edges.numel(), generator=generator)].split(G):
                active = window if self.cfg.kl_beta > 0 else window[adv[window] != 0]
                if active.numel() == 0:
                    active = window[:1]
                r = self._backward_by_parents(policy, ro, torch.unique(t.parent[active]), active, adv, update,
                                              lambda n: n / (G * per_tree), stats)
                first_ratio = r if first_ratio is None else first_ratio
                computed += active.numel()
                self._step(update, stats)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out.update(first_ratio=first_ratio, edges_trained=float(edges.numel()), edges_computed=float(computed),
                   optimizer_steps=float(len(stats.get("grad_norm", []))))
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
