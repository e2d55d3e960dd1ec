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


def ref_training_samples(tree, node_adv):
    """collect_all_transitions: depth-first from each root, one sample per parent -> child edge with
    the parent's step and the child's advantage."""
    out = []
    for r in range(int(tree.root.max()) + 1):
        root, _ = ref_tree(tree, r)

        def collect(node):
            for child in node.children:
                out.append({"step": int(tree.step[node.idx]), "parent_id": node.idx, "child_id": child.idx,
                            "advantage": float(node_adv[child.idx]), "node": node})
                collect(child)
        collect(root)
    return out


def ref_width_pruning(samples, last_split_step, mode, ratio):
    """train_branchgrpo_flux.py, width_pruning_mode 1 and 2 -> the child ids kept."""
    last_layer = [s for s in samples if s["step"] > last_split_step]
    other = [s for s in samples if s["step"] <= last_split_step]
    if mode == 1:
        def branch(s):
            node = s["node"]
            while node.parent is not None:
                if node.depth == last_split_step + 1:
                    return node.idx
                node = node.parent
            return f"unknown_{s['parent_id']}"
        groups = {}
        for s in last_layer:
            groups.setdefault(branch(s), []).append(s)
        kept = []
        for g in groups.values():
            keep_count = max(1, int(len(g) * ratio))
            kept += sorted(g, key=lambda x: x["advantage"], reverse=True)[:keep_count]
    else:
        ordered = sorted(last_layer, key=lambda x: x["advantage"], reverse=True)
        keep_count = max(2, int(len(ordered) * ratio))
        best, worst = keep_count // 2, keep_count - keep_count // 2
        kept = ordered[:best] + (ordered[-worst:] if worst > 0 else [])
    return {s["child_id"] for s in other + kept}


@pytest.mark.parametrize("K,splits,nb", [(6, (0, 2), 2), (8, (1, 3), 2), (7, (0, 2), 3), (5, (3,), 2)])
@pytest.mark.parametrize("mode,ratio", [(1, 0.5), (2, 0.5), (1, 0.3), (2, 0.25)])
def test_width_pruning_matches_the_released_code(K, splits, nb, mode, ratio):
    from flowalign.algorithms.branch_grpo import width_prune

    g = torch.Generator().manual_seed(K * 10 + mode)
    for trial in range(6):
        tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(2, 3, generator=g, dtype=torch.float64),
                                     samplers.linear_sigmas(K), split_steps=splits, branch_factor=nb, generator=g)
        adv = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)
        if trial % 2:
            adv = (adv * 2).round() / 2  # ties: the depth-first order decides, as in the reference
        name = "branch_top" if mode == 1 else "batch_extreme"
        keep = width_prune(tree, adv, list(splits), name, ratio=ratio)
        assert keep.dtype == torch.bool and keep.shape == (tree.num_nodes,)
        ours = {n for n in range(tree.num_nodes) if keep[n] and tree.parent[n] >= 0}
        assert ours == ref_width_pruning(ref_training_samples(tree, adv), max(splits), mode, ratio)
        split_edges = {n for n in range(tree.num_nodes) if tree.parent[n] >= 0 and int(tree.step[n]) == max(splits) + 1}
        assert split_edges <= ours  # the last split's own edges always stay


def ref_transition_loop(order, adv, old_lp, coef, theta0, lr, G, per_tree, clip_range):
    """The released code's update loop (train_branchgrpo_flux.py, after random.shuffle): one transition
    at a time, loss = max(-A r, -A clip(r)) / (G * per_tree), optimizer.step() when (i + 1) % G == 0 and
    once more for a remainder; here the policy is one scalar theta with log p_i = old_i + theta c_i,
    optimised by plain SGD."""
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    for i, e in enumerate(order):
        ratio = torch.exp(old_lp[e] + theta * coef[e] - old_lp[e])
        a = torch.clamp(adv[e], -5.0, 5.0)
        loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)) / (G * per_tree)
        loss.backward()
        if (i + 1) % G == 0:
            with torch.no_grad():
                theta -= lr * theta.grad
            theta.grad = None
    if len(order) % G:
        with torch.no_grad():
            theta -= lr * (theta.grad if theta.grad is not None else 0.0)
    return float(theta.detach())


@pytest.mark.parametrize("G", [1, 3, 5, 40])
def test_transition_schedule_matches_the_released_loop(G):
    """Default update_schedule=transitions: the same optimiser steps, on the same shuffled transitions,
    with the same loss scale, as the reference; later windows are off-policy, so clipping acts."""
    assert BranchGRPOConfig().update_schedule == "transitions" and BranchGRPOConfig().kl_beta == 0.0
    theta, want, stats, norms, order, adv = run_transitions(G, 2, None, zero_frac=0.3, seed=G)
    assert abs(theta - want) < 1e-10
    assert len(norms) == -(-order.numel() // G) == stats["optimizer_steps"]
    if G in (3, 5):  # windows mixing zero and non-zero advantages skip the zero ones
        assert stats["edges_computed"] < order.numel()


def test_sampler_shift_gives_the_released_codes_sigma_schedule(tiny_sd3_dir):
    """train_branchgrpo_flux.py: sigma_schedule = sd3_time_shift(shift, linspace(1, 0, steps + 1)),
    sd3_time_shift(shift, t) = shift t / (1 + (shift - 1) t)."""
    from flowalign.policies import load_policy

    policy = load_policy(tiny_sd3_dir, max_sequence_length=8)
    own = policy.sigmas(20)
    policy.sigma_shift = 3.0
    t = torch.linspace(1, 0, 21)
    want = (3.0 * t) / (1 + (3.0 - 1) * t)
    assert torch.allclose(policy.sigmas(20), want, atol=1e-6) and not torch.allclose(own, want)


def run_transitions(G, roots, keep_edges, zero_frac=0.3, kl_beta=0.0, seed=0, schedule="transitions", epochs=1,
                    mask_given=True):
    """BranchGRPO's transition schedule on a random tree of `roots` trees with a scalar policy
    (log p = old + theta c, plain SGD), training the first `keep_edges` stochastic edges (all: None).
    Returns (theta, the reference loop's theta, stats, the grad norms the steps reported, order)."""
    from omegaconf import OmegaConf

    from flowalign.algorithms.base import Advantages
    from flowalign.algorithms.branch_grpo import BranchGRPO, TreeRollout, comparable_edges, stochastic_edges
    from flowalign.config import SamplerConfig
    from flowalign.losses import grpo_objective

    g = torch.Generator().manual_seed(seed)
    tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(roots, 3, generator=g, dtype=torch.float64),
                                 samplers.linear_sigmas(6), split_steps=(0, 2), branch_factor=2, generator=g)
    cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), {
        "gradient_accumulation_steps": G, "clip_range": 0.05, "split_steps": [0, 2], "group_size": 4,
        "train_batch_size": 3, "kl_beta": kl_beta, "update_schedule": schedule, "inner_epochs": epochs})
    algo = BranchGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=6)))
    adv = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)
    adv[torch.rand(tree.num_nodes, generator=g) < zero_frac] = 0.0
    coef = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    algo._edges_loss = lambda policy, ro, parents, child, a: grpo_objective(
        tree.log_probs[child] + theta * coef[child], tree.log_probs[child], a[child], 0.05)
    norms, lasts = [], []

    class SGD:
        def backward(self, loss, last=True):
            lasts.append(last)  # the last backward before a step (DDP syncs the gradient only there)
            loss.backward()

        def step(self):
            with torch.no_grad():
                theta.sub_(0.5 * (theta.grad if theta.grad is not None else 0.0))
            theta.grad = None
            assert lasts and lasts[-1] is True and all(x is False for x in lasts[:-1])
            lasts.clear()
            norms.append(float(len(norms) + 1) ** 2)  # distinct values, so their mean is checked
            return {"grad_norm": norms[-1]}

    mask = stochastic_edges(tree).clone() if mask_given else comparable_edges(tree)
    if keep_edges is not None:
        mask[torch.nonzero(mask).flatten()[keep_edges:]] = False
    edges = torch.nonzero(mask).flatten()
    ro = TreeRollout([f"p{i}" for i in range(roots)], [{}] * roots, torch.arange(roots), None, tree, algo.kinds,
                     torch.ones(6))
    perm_gen = torch.Generator().manual_seed(7)
    order = edges[torch.randperm(edges.numel(), generator=torch.Generator().set_state(perm_gen.get_state()))]
    stats = algo.policy_step(None, ro, Advantages(None, adv, mask if mask_given else None), SGD(), perm_gen)
    per_tree = max(1, edges.numel() // roots)
    want = ref_transition_loop(order.tolist(), adv, tree.log_probs.double(), coef, 0.0, 0.5, G, per_tree, 0.05)
    return float(theta.detach()), want, stats, norms, order, adv


@pytest.mark.parametrize("roots,keep", [(1, None), (2, 5), (2, 1), (3, None)])
def test_transition_loss_scale_is_the_kept_transitions_per_tree(roots, keep):
    """The loss scale G x (kept transitions // trees, at least 1): one tree, an odd number of kept
    transitions, fewer kept transitions than trees; the statistics are means over the steps."""
    theta, want, stats, norms, order, adv = run_transitions(3, roots, keep, zero_frac=0.0)
    assert abs(theta - want) < 1e-10 and theta != 0.0
    assert stats["optimizer_steps"] == len(norms) == -(-order.numel() // 3)
    assert stats["grad_norm"] == pytest.approx(sum(norms) / len(norms))
    assert stats["edges_computed"] == stats["edges_trained"] == order.numel()


def test_transition_windows_compute_their_nonzero_advantages_or_one_and_kl_computes_all():
    """Without KL a window computes its non-zero-advantage transitions, or one when it has none; with
    KL every transition is computed (its KL term has a gradient at zero advantage)."""
    theta, want, stats, norms, order, adv = run_transitions(2, 2, None, zero_frac=0.6, seed=3)
    windows = order.split(2)
    assert any(bool((adv[w] == 0).all()) and w.numel() == 2 for w in windows)  # a window with none to compute
    assert stats["edges_computed"] == sum(max(1, int((adv[w] != 0).sum())) for w in windows)
    assert abs(theta - want) < 1e-10
    _, _, stats_kl, _, order_kl, _ = run_transitions(2, 2, None, zero_frac=0.6, kl_beta=0.5, seed=3)
    assert stats_kl["edges_computed"] == order_kl.numel()


@pytest.mark.parametrize("schedule", ["transitions", "epoch"])
def test_the_update_order_comes_from_the_given_generator_only(schedule):
    """Both schedules shuffle with the generator they are given: the same generator seed gives the
    same parameters, and the global RNG is left untouched (exact resume depends on it)."""
    before = torch.get_rng_state()
    runs = [run_transitions(2, 2, None, seed=5, schedule=schedule, epochs=2) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    assert runs[0][0] == runs[1][0] and runs[0][0] != 0.0


def test_epoch_schedule_reports_the_first_epochs_first_ratio_and_mean_statistics():
    """Two inner epochs: first_ratio is the first chunk's of the first epoch (1: on-policy), not the
    second's (the parameters moved); the statistics are means over the optimiser steps."""
    theta, _, stats, norms, order, adv = run_transitions(2, 2, None, zero_frac=0.0, seed=4, schedule="epoch", epochs=2)
    assert len(norms) == 2 and theta != 0.0
    assert stats["first_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert stats["grad_norm"] == pytest.approx(sum(norms) / len(norms))


class ToyPolicy:
    """The two calls BranchGRPO's loss makes of a policy: the exact Gaussian velocity (data N(0.3,
    0.5^2)), and the same under `reference()` with the data mean moved, so the KL is not zero."""

    def __init__(self):
        self.ref = False

    def velocity(self, x, sigma, cond, *, guidance=1.0, rows=None):
        return gaussian_velocity(0.1 if self.ref else 0.3, 0.5)(x, sigma)

    def reference(self):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.ref = True
            try:
                yield
            finally:
                self.ref = False
        return ctx()


@pytest.mark.parametrize("form", ["flow_grpo", "exact"])
def test_branch_kl_is_the_configured_form_at_the_rollouts_noise_level(form):
    """_edges_loss's KL term: for every trained edge, step_kl(kl_form) between the policy's and the
    reference's transition means at the rollout's noise level (0.4, not the step's default), on its
    own recorded child; the global RNG is not used."""
    from omegaconf import OmegaConf

    from flowalign.algorithms.branch_grpo import BranchGRPO, TreeRollout, comparable_edges
    from flowalign.algorithms.flow_grpo import step_kl
    from flowalign.config import SamplerConfig

    g = torch.Generator().manual_seed(11)
    levels = torch.full((6,), 0.4)
    tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(2, 3, generator=g, dtype=torch.float64),
                                 samplers.linear_sigmas(6), split_steps=(0, 2), branch_factor=2, noise_level=levels,
                                 generator=g)
    cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), {
        "split_steps": [0, 2], "group_size": 4, "kl_beta": 0.5, "kl_form": form})
    algo = BranchGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=6)))
    ro = TreeRollout(["p", "q"], [{}, {}], torch.tensor([0, 1]), None, tree, algo.kinds, levels)
    child = torch.nonzero(comparable_edges(tree)).flatten()
    parents = torch.unique(tree.parent[child])
    adv = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)
    before = torch.get_rng_state()
    _, st = algo._edges_loss(ToyPolicy(), ro, parents, child, adv)
    assert torch.equal(torch.get_rng_state(), before)
    want = []
    for n in child.tolist():
        p, k = int(tree.parent[n]), int(tree.step[tree.parent[n]])
        s, sn = float(tree.sigmas[k]), float(tree.sigmas[k + 1])
        fn = samplers.step_fn(ro.kinds[k])
        x = tree.latents[p:p + 1]
        out = fn(x, gaussian_velocity(0.3, 0.5)(x, torch.tensor([s])), s, sn, noise_level=0.4,
                 prev_sample=tree.latents[n:n + 1])
        ref = fn(x, gaussian_velocity(0.1, 0.5)(x, torch.tensor([s])), s, sn, noise_level=0.4,
                 prev_sample=tree.latents[n:n + 1])
        assert torch.allclose(out.log_prob.double(), tree.log_probs[n:n + 1].double(), atol=1e-6)  # on policy
        want.append(step_kl(form, ro.kinds[k], out.mean, ref.mean, out.std, s, sn))
    assert st["kl"] == pytest.approx(float(torch.cat(want).mean()), rel=1e-6) and st["kl"] > 0
    assert st["loss"] == pytest.approx(st["policy_loss"] + 0.5 * st["kl"], rel=1e-9, abs=1e-12)


def test_without_a_train_mask_the_comparable_edges_are_trained_and_with_an_empty_one_nothing():
    theta, want, stats, norms, order, adv = run_transitions(3, 2, None, zero_frac=0.0, mask_given=False)
    assert abs(theta - want) < 1e-10 and theta != 0.0 and stats["edges_trained"] == order.numel()
    theta, _, stats, norms, _, _ = run_transitions(3, 2, 0, zero_frac=0.0)
    assert stats == {"edges_trained": 0.0} and theta == 0.0 and norms == []
