import math

import pytest
import torch

import samplers
from tests.helpers import assert_tensors_close, gaussian_velocity

VEL = gaussian_velocity(0.5, 0.3)


def _tree(R=3, K=8, splits=(0, 3, 6), nb=2, mode="correlated", scale=1.0, kinds="flow_sde", seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(R, 2, 2, generator=g, dtype=torch.float64)
    return samplers.tree_rollout(VEL, noise, samplers.linear_sigmas(K), split_steps=splits, branch_factor=nb,
                                 kinds=kinds, split_noise_scale=scale, mode=mode, generator=g)


def test_tree_structure():
    t = _tree()
    # nodes per level: 3 | 6 6 6 | 12 12 12 | 24 24 ; total = 3 + 18 + 36 + 48
    assert t.num_nodes == 3 + 18 + 36 + 48
    assert t.leaves.numel() == 3 * 8
    assert torch.all(t.step[t.leaves] == 8) and torch.all(t.depth[t.leaves] == 3)
    assert torch.all(t.parent[:3] == -1)
    edges = t.edges()
    assert torch.all(t.step[edges] == t.step[t.parent[edges]] + 1)
    assert torch.all(t.root[edges] == t.root[t.parent[edges]])
    # leaves are grouped by root
    assert t.root[t.leaves].tolist() == sorted(t.root[t.leaves].tolist())
    assert len(t.leaf_path(int(t.leaves[5]))) == 9


def test_edge_log_probs_rescore_and_path_sums():
    t = _tree(kinds=samplers.step_kinds(8, "flow_sde", window=(0, 7)))
    for n in t.edges().tolist():
        p = int(t.parent[n])
        s, sn = float(t.sigmas[t.step[p]]), float(t.sigmas[t.step[n]])
        x = t.latents[p:p + 1]
        out = samplers.flow_sde_step(x, VEL(x, torch.tensor([s])), s, sn, prev_sample=t.latents[n:n + 1])
        expected = out.log_prob if bool(t.sde_mask[n]) else torch.zeros(1)
        assert_tensors_close(t.log_probs[n:n + 1], expected.float(), atol=1e-5)
    path_sum = torch.stack([t.log_probs[t.leaf_path(int(leaf))].sum() for leaf in t.leaves])
    assert_tensors_close(t.leaf_log_prob(), path_sum, atol=1e-5)


def _split_residuals(mode, scale, R=20_000):
    """Standardised residuals (x_child - mean) / std of a split at step 0 over many roots."""
    t = _tree(R=R, K=4, splits=(0,), nb=2, mode=mode, scale=scale)
    kids = torch.nonzero(t.step == 1).flatten()
    par = t.parent[kids]
    x = t.latents[par]
    out = samplers.flow_sde_step(x, VEL(x, torch.ones(len(kids))), 1.0, 0.75, prev_sample=t.latents[kids])
    z = (t.latents[kids] - out.mean) / out.std
    return z.reshape(R, 2, -1)


def test_correlated_children_have_the_marginal_of_an_ordinary_step():
    s = 0.5
    z = _split_residuals("correlated", s)
    for b in range(2):
        assert abs(z[:, b].mean().item()) < 0.01 and abs(z[:, b].var().item() - 1) < 0.02
    # siblings share xi_0: correlation 1 / (1 + s^2) = 0.8
    corr = torch.corrcoef(torch.stack([z[:, 0].flatten(), z[:, 1].flatten()]))[0, 1].item()
    assert abs(corr - 1 / (1 + s**2)) < 0.02


def test_independent_children_do_not_have_that_marginal():
    """The released code's mode: independent noise scaled by s widens each child's transition by s,
    so its variance is s^2 = 16 times an ordinary step's at s = 4 (not the SDE marginal)."""
    z = _split_residuals("independent", 4.0)
    assert abs(z[:, 0].var().item() - 16) < 0.5
    corr = torch.corrcoef(torch.stack([z[:, 0].flatten(), z[:, 1].flatten()]))[0, 1].item()
    assert abs(corr) < 0.02


def test_tree_with_one_child_equals_flat_rollout_statistics():
    t = _tree(R=2, nb=1, splits=(0,))
    assert t.leaves.numel() == 2 and t.num_nodes == 2 * 9
    assert math.isclose(float(t.depth.max()), 1)


def test_bad_tree_arguments():
    with pytest.raises(ValueError, match="split_steps"):
        _tree(splits=(9,))
    with pytest.raises(ValueError, match="are ODE steps"):
        _tree(kinds="ode")
    with pytest.raises(ValueError, match="mode 'paper'"):
        _tree(mode="paper")
