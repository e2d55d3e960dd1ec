"""BranchGRPO's default reward fusion and depth-wise advantages against the released code,
Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py (compute_node_rewards_from_leaves and
compute_hierarchical_advantages_by_depth), transcribed below onto a node tree built from flowalign's
TreeTrajectory, float64, on random trees and rewards (ties and equal-reward levels included)."""

import numpy as np
import pytest
import torch

import samplers
from flowalign.algorithms.branch_grpo import BranchGRPOConfig, depthwise_advantages, fuse_rewards
from tests.helpers import gaussian_velocity


class Node:
    def __init__(self, idx, parent, log_prob):
        self.idx, self.parent, self.log_prob, self.children = idx, parent, log_prob, []
        self.depth = 0 if parent is None else parent.depth + 1
        self.reward = None

    def leaves(self):
        return [self] if not self.children else [leaf for c in self.children for leaf in c.leaves()]


def ref_tree(tree, r: int) -> tuple[Node, list[Node]]:
    nodes = {}
    for n in range(tree.num_nodes):  # parents come before children
        if int(tree.root[n]) != r:
            continue
        p = int(tree.parent[n])
        nodes[n] = Node(n, nodes.get(p), torch.tensor(float(tree.log_probs[n]), dtype=torch.float64))
        if p >= 0:
            nodes[p].children.append(nodes[n])
    root = next(v for v in nodes.values() if v.parent is None)
    return root, [nodes[int(leaf)] for leaf in tree.leaves if int(tree.root[leaf]) == r]


def ref_node_rewards(root: Node, leaf_rewards, leaf_nodes, use_prob_weighted: bool, alpha: float = 1.0):
    """compute_node_rewards_from_leaves: leaves get their reward; bottom-up by depth, an internal node
    takes its leaves' mean, or (tree_prob_weighted) softmax(alpha * child log_prob)-weighted children."""
    for i, leaf in enumerate(leaf_nodes):
        leaf.reward = leaf_rewards[i]
    all_nodes, stack = [], [root]
    while stack:
        n = stack.pop()
        all_nodes.append(n)
        stack.extend(n.children)
    max_depth = max(n.depth for n in all_nodes)
    by_depth = {d: [n for n in all_nodes if n.depth == d] for d in range(max_depth + 1)}
    for d in reversed(range(max_depth)):
        for n in by_depth[d]:
            if not n.children:
                continue
            if use_prob_weighted:
                if len(n.children) == 1:
                    n.reward = n.children[0].reward
                else:
                    w = torch.softmax(alpha * torch.stack([c.log_prob for c in n.children]), dim=0)
                    n.reward = torch.sum(w * torch.stack([c.reward for c in n.children]))
            else:
                n.reward = torch.stack([leaf.reward for leaf in n.leaves()]).mean()
    return by_depth


def ref_advantages(by_depth) -> dict[int, float]:
    """compute_hierarchical_advantages_by_depth: unbiased std, 0 where std < 1e-6, eps 1e-8."""
    out = {}
    for nodes in by_depth.values():
        if len(nodes) <= 1:
            out.update({n.idx: 0.0 for n in nodes})
            continue
        rewards = torch.stack([n.reward for n in nodes])
        std = rewards.std()
        adv = torch.zeros_like(rewards) if std < 1e-6 else (rewards - rewards.mean()) / (std + 1e-8)
        out.update({n.idx: float(a) for n, a in zip(nodes, adv)})
    return out


@pytest.mark.parametrize("R,K,splits,nb", [(2, 4, (1, 2), 2), (1, 6, (0, 3), 3), (3, 5, (0, 2, 4), 2), (2, 3, (2,), 4)])
@pytest.mark.parametrize("prob_weighted", [False, True])
def test_fusion_and_depthwise_advantages_match_the_released_code(R, K, splits, nb, prob_weighted):
    assert BranchGRPOConfig().depth_std == "reference" and BranchGRPOConfig().reward_fusion == "edge"
    g = torch.Generator().manual_seed(R * 100 + K)
    for trial in range(10):
        tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(R, 3, generator=g, dtype=torch.float64),
                                     samplers.linear_sigmas(K), split_steps=splits, branch_factor=nb,
                                     generator=g)
        leaf_r = torch.rand(tree.leaves.numel(), generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            leaf_r = (leaf_r * 3).floor() / 3  # ties, and levels whose rewards are all equal
        if trial % 5 == 0:
            leaf_r[:] = 0.5
        ours_r = fuse_rewards(tree, leaf_r, beta=1.0 if prob_weighted else 0.0)
        ours_a = depthwise_advantages(tree, ours_r, clip=float("inf"))
        for r in range(R):
            root, leaves = ref_tree(tree, r)
            rows = (tree.root[tree.leaves] == r).nonzero().flatten()
            by_depth = ref_node_rewards(root, leaf_r[rows], leaves, prob_weighted)
            ref_r = {n.idx: float(n.reward) for nodes in by_depth.values() for n in nodes}
            idx = sorted(ref_r)
            np.testing.assert_allclose(ours_r[idx].numpy(), [ref_r[i] for i in idx], rtol=1e-10, atol=1e-12)
            ref_a = ref_advantages(by_depth)
            np.testing.assert_allclose(ours_a[idx].numpy(), [ref_a[i] for i in idx], rtol=1e-10, atol=1e-10)
