"""BranchGRPO: tree shapes and NFE, reward fusion, depth-wise advantages, pruning, and the algorithm
on the tiny SD3."""

import json
import os

import pytest
import torch

import samplers
from flowalign.algorithms.base import LocalComm
from flowalign.algorithms.branch_grpo import (
    BranchGRPO,
    comparable_edges,
    depth_prune,
    depthwise_advantages,
    fuse_rewards,
    pruned_depths,
    width_prune,
)
from flowalign.config import load_config
from tests.flowalign.test_train import overrides
from tests.helpers import assert_tensors_close, gaussian_velocity

VEL = gaussian_velocity(0.3, 0.5)


def _tree(R=2, K=4, splits=(1, 2), nb=2, kinds="flow_sde", seed=0):
    g = torch.Generator().manual_seed(seed)
    calls = []

    def vel(x, sigma, rows):
        calls.append(x.shape[0])
        return VEL(x, sigma, rows)

    noise = torch.randn(R, 3, generator=g, dtype=torch.float64)
    t = samplers.tree_rollout(vel, noise, samplers.linear_sigmas(K), split_steps=splits, branch_factor=nb,
                              kinds=kinds, generator=g)
    return t, calls


@pytest.mark.parametrize("R,K,splits,nb", [(2, 4, (1, 2), 2), (1, 6, (0, 3), 3), (3, 5, (4,), 2)])
def test_tree_shapes_indices_leaves_and_nfe(R, K, splits, nb):
    t, calls = _tree(R, K, splits, nb)
    # frontier size before step k: R * nb ** (number of splits before k); one call per step over the frontier
    frontier = [R * nb ** sum(s < k for s in splits) for k in range(K)]
    assert calls == frontier and sum(calls) == sum(frontier)
    after = [R * nb ** sum(s <= k for s in splits) for k in range(K)]
    assert t.num_nodes == R + sum(after)
    assert t.leaves.numel() == R * nb ** len(splits)
    e = t.edges()
    assert torch.all(t.step[e] == t.step[t.parent[e]] + 1)
    split_edge = torch.isin(t.step[t.parent[e]], torch.tensor(splits))
    assert torch.all(t.depth[e] == t.depth[t.parent[e]] + split_edge.long())
    assert torch.all(t.depth[t.leaves] == len(splits))
    # each tree has nb ** len(splits) leaves, grouped by root
    assert torch.bincount(t.root[t.leaves]).tolist() == [nb ** len(splits)] * R


def _hand_tree():
    """One root, K = 3, splits at steps 1 and 2, 2 children each: 4 leaves.
    node: 0 (root, step 0) -> 1 (step 1) -> {2, 3} (step 2) -> {4, 5} from 2, {6, 7} from 3 (step 3)."""
    t, _ = _tree(R=1, K=3, splits=(1, 2), nb=2)
    assert t.parent.tolist() == [-1, 0, 1, 1, 2, 2, 3, 3] and t.leaves.tolist() == [4, 5, 6, 7]
    return t


def test_fusion_with_beta_zero_is_the_mean_of_descendant_leaves():
    t = _hand_tree()
    r = torch.tensor([1.0, 0.0, 0.5, 0.3], dtype=torch.float64)
    fused = fuse_rewards(t, r, beta=0.0)
    assert_tensors_close(fused, torch.tensor([0.45, 0.45, 0.5, 0.4, 1.0, 0.0, 0.5, 0.3], dtype=torch.float64),
                         atol=1e-12)
    # large beta puts all weight on the most probable path below each node
    lp = t.leaf_log_prob()
    hot = fuse_rewards(t, r, beta=1e6, form="path")
    assert float(hot[0]) == float(r[int(torch.argmax(lp))])
    # weights are softmax(beta log p_path) over the node's leaves
    w = torch.softmax(0.5 * lp.double()[:2], 0)
    assert_tensors_close(fuse_rewards(t, r, beta=0.5, form="path")[2], (w * r[:2].double()).sum(), atol=1e-12)


def test_depthwise_advantages_on_a_hand_built_tree():
    t = _hand_tree()
    fused = fuse_rewards(t, torch.tensor([1.0, 0.0, 0.5, 0.3]), beta=0.0)
    adv = depthwise_advantages(t, fused, std="population", eps=0.0)
    # steps 0 and 1 hold one node each -> 0; step 2: rewards 0.5 and 0.4 -> +1, -1;
    # step 3: 1, 0, 0.5, 0.3 (mean 0.45, population std)
    std = torch.tensor([1.0, 0.0, 0.5, 0.3]).std(unbiased=False)
    exp3 = (torch.tensor([1.0, 0.0, 0.5, 0.3]) - 0.45) / std
    assert_tensors_close(adv.float(), torch.cat([torch.tensor([0.0, 0.0, 1.0, -1.0]), exp3]), atol=1e-5)
    assert comparable_edges(t).tolist() == [False, False, True, True, True, True, True, True]
    assert depthwise_advantages(t, fused * 100, clip=0.5).abs().max() <= 0.5


def test_width_pruning_keeps_exactly_the_promised_edges():
    t, _ = _tree(R=1, K=5, splits=(0, 2), nb=2)
    # nodes: 0 | 1 2 (step 1) | 3 4 (step 2) | 5 6 7 8 (step 3, split children) | 9 10 11 12 (step 4) |
    #        13 14 15 16 (step 5, leaves)
    assert t.leaves.tolist() == [13, 14, 15, 16]
    adv = torch.zeros(t.num_nodes)
    adv[t.leaves] = torch.tensor([0.2, 0.9, -1.0, 0.1])
    keep = width_prune(t, adv, [0, 2], "parent_top1")
    # parents at the last split (step 2): node 3 (leaves 13, 14) keeps leaf 14's branch, node 4 keeps leaf 16's
    dropped = {n for n in range(t.num_nodes) if not keep[n]}
    assert dropped == set(t.leaf_path(13)[3:]) | set(t.leaf_path(15)[3:])
    assert dropped == {5, 9, 13, 7, 11, 15}
    keep = width_prune(t, adv, [0, 2], "extreme", keep=1)
    assert {n for n in range(t.num_nodes) if not keep[n]} == {5, 9, 13, 8, 12, 16}  # keeps 14 (best), 15 (worst)
    assert width_prune(t, adv, [0, 2], "none").all()
    with pytest.raises(ValueError, match="unknown"):
        width_prune(t, adv, [0, 2], "top3")
    # the best is the first leaf of each pair; on a tie the smaller node id wins
    adv[t.leaves] = torch.tensor([0.9, 0.2, 0.5, 0.5])
    keep = width_prune(t, adv, [0, 2], "parent_top1")
    assert {n for n in range(t.num_nodes) if not keep[n]} == {6, 10, 14, 8, 12, 16}
    # extreme: per tree (two trees, the second's rewards all higher)
    t2, _ = _tree(R=2, K=5, splits=(0, 2), nb=2)
    adv2 = torch.zeros(t2.num_nodes)
    leaves = t2.leaves.tolist()
    vals = {leaf: float(i) + (10.0 if int(t2.root[leaf]) == 1 else 0.0) for i, leaf in enumerate(leaves)}
    for leaf, v in vals.items():
        adv2[leaf] = v
    keep = width_prune(t2, adv2, [0, 2], "extreme", keep=1)
    kept_leaves = {leaf for leaf in leaves if keep[leaf]}
    for root in (0, 1):
        mine = sorted((vals[leaf], leaf) for leaf in leaves if int(t2.root[leaf]) == root)
        assert kept_leaves & {leaf for _, leaf in mine} == {mine[0][1], mine[-1][1]}


def test_depth_pruning_and_its_sliding_window():
    t, _ = _tree(R=1, K=5, splits=(0, 2), nb=2)
    keep = depth_prune(t, [4, 5])
    assert torch.equal(keep, ~torch.isin(t.step, torch.tensor([4, 5])))
    assert pruned_depths([4, 5], 0, slide=True, interval=2, stop=2) == [4, 5]
    assert pruned_depths([4, 5], 3, slide=True, interval=2, stop=2) == [3, 4]
    assert pruned_depths([4, 5], 100, slide=True, interval=2, stop=2) == [2, 3]
    assert pruned_depths([4, 5], 100, slide=False, interval=2, stop=2) == [4, 5]


def _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **extra):
    base = {"algorithm.name": "branch_grpo", "sampler.num_steps": 4, "algorithm.split_steps": "[1,2]",
            "algorithm.group_size": 4, "algorithm.train_batch_size": 3}
    base.update(extra)
    return load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **base))


def test_branch_training_iteration_nfe_and_on_policy(tiny_sd3_dir, tmp_path, prompts_file):
    from flowalign.trainer import Trainer

    cfg = _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"run.max_iterations": 1, "run.sample_every": 0,
                                                                "algorithm.update_schedule": "epoch",
                                                                "algorithm.kl_beta": 0.01})
    Trainer(cfg).train()
    m = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert abs(m["first_ratio"] - 1) < 1e-5
    # 2 trees; frontier per step 1, 1, 2, 4 -> 8 node-steps a tree; CFG doubles
    assert m["nfe_rollout"] == 2 * 8 * 2
    # trained edges: those with siblings at their step (steps 2, 3, 4: 2 + 4 + 4 a tree); their parents
    # (1 + 2 + 4 a tree) each get one velocity, plus one reference velocity for the KL
    assert m["edges_trained"] == 2 * 10 and m["parents_trained"] == 2 * 7
    assert m["nfe_train"] == 2 * 7 * 2 * 2


def test_branch_transition_schedule_steps_every_g_transitions(tiny_sd3_dir, tmp_path, prompts_file):
    """The default (the released code's): every stochastic edge (1 + 2 + 4 + 4 a tree) in windows of
    gradient_accumulation_steps, one optimiser step per window, no KL (no reference forward). On
    policy at a noise level other than the step function's default: the loss uses the rollout's."""
    from flowalign.trainer import Trainer

    cfg = _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"run.max_iterations": 1, "run.sample_every": 0,
                                                                "algorithm.gradient_accumulation_steps": 4,
                                                                "sampler.noise_level": 0.4,  # not the step's default
                                                                "algorithm.kl_beta": 0.0})  # the default; overrides() sets one
    Trainer(cfg).train()
    m = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert abs(m["first_ratio"] - 1) < 1e-5
    assert m["edges_trained"] == 2 * 11 and m["optimizer_steps"] == 6  # ceil(22 / 4)
    assert m["kl"] == 0.0 and m["edges_computed"] <= 22


def test_branch_mix_trains_only_stochastic_edges(tiny_sd3_dir, tmp_path, prompts_file):
    from flowalign.policies import load_policy
    from reward_models import build_reward

    cfg = _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"algorithm.mix": True})
    algo = BranchGRPO(cfg.algorithm, cfg.sampler)
    assert algo.kinds == ["ode", "flow_sde", "flow_sde", "ode"]
    policy = load_policy(cfg.model.path, max_sequence_length=8)
    ro = algo.rollout(policy, [{"prompt": "a red circle"}], torch.tensor([0]), torch.Generator().manual_seed(0), 32, 32)
    r = algo.score(policy, ro, build_reward("jpeg_compressibility"))
    adv = algo.advantages(ro, r, LocalComm)
    t = ro.tree
    assert torch.equal(adv.train_mask, t.sde_mask & (t.step >= 2))  # the split edges (steps 2 and 3) only
    assert (t.log_probs[~t.sde_mask] == 0).all()


def test_branch_config_errors(tiny_sd3_dir, tmp_path, prompts_file):
    with pytest.raises(ValueError, match="group_size=8 must equal"):
        _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"algorithm.group_size": 8})
    with pytest.raises(ValueError, match="split_steps"):
        _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"algorithm.split_steps": "[1,9]"})
    with pytest.raises(ValueError, match="outside sampler.sde_window"):
        _branch_cfg(tiny_sd3_dir, tmp_path, prompts_file, **{"sampler.sde_window": "[0,2]"})


def test_comparable_edges_include_the_first_trees_split_from_its_root():
    """Split at step 0: the edges out of each root (node 0 included) are comparable, as every
    stochastic edge into a step its tree holds more than one node at; counted by hand."""
    t, _ = _tree(R=2, K=4, splits=(0, 2), nb=2)
    want = []
    for n in range(t.num_nodes):
        same = sum(int(t.root[m]) == int(t.root[n]) and int(t.step[m]) == int(t.step[n]) for m in range(t.num_nodes))
        want.append(int(t.parent[n]) >= 0 and bool(t.sde_mask[n]) and same > 1)
    assert comparable_edges(t).tolist() == want
    assert any(want[n] for n in range(t.num_nodes) if int(t.parent[n]) == 0)


def _algo(**over):
    from omegaconf import OmegaConf

    from flowalign.algorithms.branch_grpo import BranchGRPO, BranchGRPOConfig
    from flowalign.config import SamplerConfig

    cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), over)
    return BranchGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=4)))


def test_assign_gives_each_process_its_own_whole_trees():
    algo = _algo(split_steps=[1], group_size=2)
    metas = [{"prompt": p} for p in "abcdef"]
    parts = [algo.assign(metas, r, 2) for r in range(2)]
    assert [m["prompt"] for m in parts[0][0]] == ["a", "b", "c"] and parts[0][1].tolist() == [0, 1, 2]
    assert [m["prompt"] for m in parts[1][0]] == ["d", "e", "f"] and parts[1][1].tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="must divide evenly over 4 processes"):
        algo.assign(metas, 0, 4)


@pytest.mark.parametrize("schedule,G,epochs", [("transitions", 5, 1), ("transitions", 4, 2), ("epoch", 4, 3)])
def test_updates_per_iteration_counts_the_optimiser_steps_of_a_real_tree(schedule, G, epochs):
    """transitions: ceil(edges of the local trees / G) per inner epoch, the edges counted on a real tree
    (branch factor 3, splits at 0 and 2, 4 steps: 3 + 3 + 9 + 9 per tree); epoch: one per inner epoch."""
    algo = _algo(split_steps=[0, 2], branch_factor=3, group_size=9, gradient_accumulation_steps=G,
                 inner_epochs=epochs, update_schedule=schedule)
    tree = samplers.tree_rollout(lambda x, s, rows=None: -x, torch.randn(2, 2), samplers.linear_sigmas(4),
                                 split_steps=(0, 2), branch_factor=3, generator=torch.Generator().manual_seed(0))
    edges = tree.num_nodes - 2
    assert edges == 2 * 24
    want = epochs * -(-edges // G) if schedule == "transitions" else epochs
    assert algo.updates_per_iteration(2) == want


def test_node_advantages_and_edge_mask_use_every_setting_of_the_config():
    """Non-default fusion temperature and form, depth std, clip, width pruning (keep, ratio) and a
    sliding depth pruning (with and without its stop) all reach the functions they configure."""
    from flowalign.algorithms.branch_grpo import depth_prune, width_prune

    t, _ = _tree(R=2, K=8, splits=(0, 2), nb=2, seed=3)
    r = torch.randn(t.leaves.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    algo = _algo(split_steps=[0, 2], group_size=4, reward_beta=0.7, reward_fusion="path", depth_std="population",
                 adv_clip_max=0.8)
    adv = algo.node_advantages(t, r)
    want = depthwise_advantages(t, fuse_rewards(t, r, 0.7, "path"), std="population", clip=0.8)
    assert adv.dtype == torch.float32 and torch.equal(adv, want.to(torch.float32))
    assert not torch.equal(adv, _algo(split_steps=[0, 2], group_size=4).node_advantages(t, r))
    # the temperature and the form each change the advantages: with three siblings per level and no
    # clip, depth normalisation no longer maps every fusion to the same +-1 pattern
    t3, _ = _tree(R=2, K=8, splits=(0, 2), nb=3, seed=3)
    r3 = torch.randn(t3.leaves.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fused = {}
    for beta, form in ((0.7, "path"), (0.0, "path"), (0.7, "edge")):
        got = _algo(split_steps=[0, 2], group_size=9, branch_factor=3, reward_beta=beta, reward_fusion=form,
                    adv_clip_max=100.0).node_advantages(t3, r3)
        want = depthwise_advantages(t3, fuse_rewards(t3, r3, beta, form), clip=100.0)
        assert torch.equal(got, want.to(torch.float32))
        fused[beta, form] = got
    assert not torch.allclose(fused[0.7, "path"], fused[0.0, "path"])
    assert not torch.allclose(fused[0.7, "path"], fused[0.7, "edge"])
    for mode, extra in (("extreme", {"width_keep": 1}), ("branch_top", {"width_pruning_ratio": 0.3})):
        for stop, step in ((None, 2), (3, 3)):  # slide from step 4 one step an iteration until the stop
            algo = _algo(split_steps=[0, 2], group_size=4, update_schedule="epoch", width_pruning=mode,
                         depth_pruning=[4], depth_pruning_slide=True, depth_pruning_stop=stop, **extra)
            got = algo.edge_mask(t, adv, iteration=5)
            width = width_prune(t, adv, [0, 2], mode, keep=extra.get("width_keep", 1),
                                ratio=extra.get("width_pruning_ratio", 0.5))
            assert not width.all()
            if mode == "branch_top":
                assert not torch.equal(width, width_prune(t, adv, [0, 2], mode, ratio=0.5))
            assert torch.equal(got, comparable_edges(t) & width & depth_prune(t, [step])), (mode, stop)


@pytest.mark.parametrize("splits,ok", [("[0]", True), ("[3]", True), ("[4]", False), ("[-1]", False), ("[1,1]", False)])
def test_split_steps_must_be_distinct_steps_of_the_sampler(splits, ok):
    """With 4 steps the splits may be at steps 0 to 3 (the first and the last step included)."""
    over = ["algorithm.name=branch_grpo", "sampler.num_steps=4", f"algorithm.split_steps={splits}",
            f"algorithm.group_size={2 ** len(splits.split(','))}"]
    if ok:
        assert list(load_config(None, over).algorithm.split_steps) == json.loads(splits)
    else:
        with pytest.raises(ValueError, match="must be distinct steps in"):
            load_config(None, over)


def test_a_slide_that_starts_at_its_stop_does_not_move():
    from flowalign.algorithms.branch_grpo import pruned_depths

    assert pruned_depths([2, 3], 5, slide=True, interval=1, stop=2) == [2, 3]
    assert pruned_depths([3, 4], 5, slide=True, interval=2, stop=1) == [1, 2]  # min(5 // 2, 3 - 1)


def test_advantages_hand_over_node_advantages_and_the_iterations_edge_mask():
    """advantages(): the leaf rewards gathered, per-node advantages, and the edge mask of the given
    iteration (0 when not given: the depth-pruning slide has not moved)."""
    from flowalign.algorithms.branch_grpo import TreeRollout

    t, _ = _tree(R=2, K=8, splits=(0, 2), nb=2, seed=3)
    r = torch.randn(t.leaves.numel(), generator=torch.Generator().manual_seed(1))
    algo = _algo(split_steps=[0, 2], group_size=4, update_schedule="epoch", width_pruning="extreme",
                 depth_pruning=[6], depth_pruning_slide=True)
    ro = TreeRollout(["p", "q"], [{}, {}], torch.tensor([0, 1]), None, t, algo.kinds, torch.ones(8))
    first = algo.advantages(ro, r, LocalComm())
    node = algo.node_advantages(t, r)
    assert torch.equal(first.all_rewards, r) and torch.equal(first.local, node)
    assert torch.equal(first.train_mask, algo.edge_mask(t, node, 0))
    later = algo.advantages(ro, r, LocalComm(), iteration=3)
    assert torch.equal(later.train_mask, algo.edge_mask(t, node, 3))
    assert not torch.equal(later.train_mask, first.train_mask)


@pytest.mark.parametrize("extra,error", [
    ({"algorithm.branch_factor": 3, "algorithm.split_steps": "[0,2]", "algorithm.group_size": 9}, None),
    ({"algorithm.branch_factor": 3, "algorithm.split_steps": "[0,2]", "algorithm.group_size": 6}, "must equal branch_factor"),
    ({"sampler.sde_window": "[1,3]", "algorithm.split_steps": "[1]"}, None),
    ({"sampler.sde_window": "[1,3]", "algorithm.split_steps": "[2]"}, None),
    ({"sampler.sde_window": "[1,3]", "algorithm.split_steps": "[3]"}, "lie outside sampler.sde_window"),
    ({"sampler.sde_window": "[1,3]", "algorithm.split_steps": "[0]"}, "lie outside sampler.sde_window"),
    ({"algorithm.width_pruning_ratio": 1.0}, None),
    ({"algorithm.width_pruning_ratio": 0.0}, "must be in \\(0, 1\\]"),
    ({"algorithm.width_pruning_ratio": 1.5}, "must be in \\(0, 1\\]"),
    ({"algorithm.depth_pruning": "[1,4]"}, None),
    ({"algorithm.depth_pruning": "[0]"}, "must lie in \\[1, sampler.num_steps=4\\]"),
    ({"algorithm.depth_pruning": "[5]"}, "must lie in \\[1, sampler.num_steps=4\\]"),
])
def test_branch_config_bounds(extra, error):
    over = {"algorithm.name": "branch_grpo", "sampler.num_steps": 4, "algorithm.split_steps": "[1]",
            "algorithm.group_size": 2, **extra}
    args = [f"{k}={v}" for k, v in over.items()]
    if error is None:
        load_config(None, args)
    else:
        with pytest.raises(ValueError, match=error):
            load_config(None, args)


@pytest.mark.parametrize("mix,window,want", [
    (False, (1, 3), ["ode", "dance_sde", "dance_sde", "ode", "ode"]),
    (False, None, ["dance_sde"] * 5),
    (True, (1, 3), ["dance_sde", "dance_sde", "dance_sde", "ode", "dance_sde"]),
    (True, None, ["dance_sde", "ode", "ode", "ode", "dance_sde"]),
])
def test_step_kinds_follow_the_sampler_kind_window_and_mix(mix, window, want):
    """Without mix: the sampler's kind on its SDE window (every step without one); with mix (BranchGRPO-
    Mix): the split steps and the window's steps are SDE, the others ODE."""
    from omegaconf import OmegaConf

    from flowalign.algorithms.branch_grpo import BranchGRPO, BranchGRPOConfig
    from flowalign.config import SamplerConfig

    cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), {"split_steps": [0, 4], "group_size": 4, "mix": mix})
    sampler = OmegaConf.merge(OmegaConf.structured(SamplerConfig), {"num_steps": 5, "kind": "dance_sde",
                                                                  "sde_window": list(window) if window else None})
    assert BranchGRPO(cfg, sampler).kinds == want


def test_depthwise_defaults_many_roots_and_float32_rewards():
    """Default clip 5 (a 36-node step with one outlier); the population std's default eps is 1e-4;
    nodes are grouped per (tree, step) also with more trees than steps; float32 rewards are
    normalised in float64."""
    big, _ = _tree(R=1, K=3, splits=(0, 1), nb=6, seed=2)
    r = torch.zeros(big.num_nodes, dtype=torch.float64)
    r[big.leaves[0]] = 1.0
    assert float(depthwise_advantages(big, r).max()) == 5.0
    t, _ = _tree(R=4, K=2, splits=(0,), nb=3, seed=5)  # 4 trees, steps 0..2
    r = torch.randn(t.num_nodes, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv = depthwise_advantages(t, r, std="population")
    assert torch.equal(adv, depthwise_advantages(t, r, std="population", eps=1e-4))
    assert not torch.equal(adv, depthwise_advantages(t, r, std="population", eps=1e-8))
    for root in range(4):
        for step in range(3):
            idx = torch.nonzero((t.root == root) & (t.step == step)).flatten()
            x = r[idx]
            want = torch.zeros_like(x) if idx.numel() < 2 else (x - x.mean()) / (x.std(unbiased=False) + 1e-4)
            assert torch.allclose(adv[idx], want.clamp(-5, 5), atol=1e-12), (root, step)
    r32 = r.to(torch.float32)
    assert torch.equal(depthwise_advantages(t, r32), depthwise_advantages(t, r32.double()))


def test_fusion_and_width_pruning_defaults_and_the_std_floor_boundary():
    """fuse_rewards' default is the mean of a node's leaves (beta 0, edge form); width_prune keeps 1
    best and worst (extreme) or half a chain (branch_top) by default; a level whose std is exactly
    1e-6 is normalised (only std < 1e-6 gives zeros, as in the released code)."""
    from flowalign.algorithms.branch_grpo import descendant_leaves, width_prune

    t, _ = _tree(R=2, K=6, splits=(0, 2), nb=2, seed=4)
    r = torch.randn(t.leaves.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fused = fuse_rewards(t, r)
    desc = descendant_leaves(t)
    want = torch.stack([r[desc[n]].mean() for n in range(t.num_nodes)])
    assert torch.allclose(fused, want, atol=1e-12) and torch.equal(fused, fuse_rewards(t, r, 0.0, "edge"))
    adv = torch.randn(t.num_nodes, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(width_prune(t, adv, [0, 2], "extreme"), width_prune(t, adv, [0, 2], "extreme", keep=1))
    assert not width_prune(t, adv, [0, 2], "extreme").all()
    big, _ = _tree(R=1, K=8, splits=(0, 2), nb=2, seed=4)
    adv = torch.randn(big.num_nodes, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    half = width_prune(big, adv, [0, 2], "branch_top")
    assert torch.equal(half, width_prune(big, adv, [0, 2], "branch_top", ratio=0.5)) and not half.all()
    # two nodes at one step whose unbiased std is exactly 1e-6
    a = 1.414213562373095e-06
    assert float(torch.tensor([0.0, a], dtype=torch.float64).std()) == 1e-6
    two, _ = _tree(R=1, K=2, splits=(0,), nb=2, seed=0)
    node_r = torch.zeros(two.num_nodes, dtype=torch.float64)
    node_r[two.step == 1] = torch.tensor([0.0, a], dtype=torch.float64)
    out = depthwise_advantages(two, node_r)
    assert out[two.step == 1].abs().min() > 0.5
