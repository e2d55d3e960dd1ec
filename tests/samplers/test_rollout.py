import pytest
import torch

import samplers
from tests.helpers import assert_tensors_close, gaussian_velocity


def _setup(B=4, K=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gaussian_velocity(0.5, 0.3), torch.randn(B, 2, 3, generator=g, dtype=torch.float64), samplers.linear_sigmas(K)


def test_trajectory_shapes_and_window():
    vel, noise, sig = _setup()
    kinds = samplers.step_kinds(6, "flow_sde", window=(2, 4))
    assert kinds == ["ode", "ode", "flow_sde", "flow_sde", "ode", "ode"]
    traj = samplers.rollout(vel, noise, sig, kinds, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (4, 7, 2, 3) and traj.log_probs.shape == (4, 6)
    assert traj.x0_preds.shape == (4, 6, 2, 3)
    assert traj.sde_mask.tolist() == [False, False, True, True, False, False]
    assert torch.all(traj.log_probs[:, ~traj.sde_mask] == 0)
    assert torch.all(traj.log_probs[:, traj.sde_mask] != 0)
    assert_tensors_close(traj.latents[:, 0], noise)


def test_rollout_log_probs_rescore_exactly_and_x0_is_x_minus_sigma_v():
    vel, noise, sig = _setup()
    traj = samplers.rollout(vel, noise, sig, "dance_sde", noise_level=0.5, generator=torch.Generator().manual_seed(1))
    for k in range(6):
        x, x_next, s, sn = traj.transition(k)
        v = vel(x, torch.full((4,), s))
        out = samplers.dance_sde_step(x, v, s, sn, noise_level=0.5, prev_sample=x_next)
        assert_tensors_close(out.log_prob, traj.log_probs[:, k], atol=1e-12)
        assert_tensors_close(traj.x0_preds[:, k], x - s * v, atol=1e-12)


def test_ode_rollout_is_deterministic_and_step_noise_is_used():
    vel, noise, sig = _setup()
    a = samplers.rollout(vel, noise, sig, "ode")
    b = samplers.rollout(vel, noise, sig, "ode")
    assert_tensors_close(a.latents, b.latents, atol=0)
    sn = torch.randn(4, 6, 2, 3, dtype=torch.float64)
    c = samplers.rollout(vel, noise, sig, "flow_sde", step_noise=sn)
    d = samplers.rollout(vel, noise, sig, "flow_sde", step_noise=sn)
    assert_tensors_close(c.latents, d.latents, atol=0)
    assert not torch.allclose(c.latents, a.latents)


def test_per_step_noise_levels():
    vel, noise, sig = _setup()
    sn = torch.randn(4, 6, 2, 3, dtype=torch.float64)
    lv = [0.0, 0.7, 0.0, 0.7, 0.0, 0.7]
    traj = samplers.rollout(vel, noise, sig, "flow_sde", noise_level=lv, step_noise=sn)
    assert torch.all(traj.log_probs[:, 0::2] == 0) and torch.all(traj.log_probs[:, 1::2] != 0)
    with pytest.raises(ValueError, match="noise_level has 2 values"):
        samplers.rollout(vel, noise, sig, "flow_sde", noise_level=[0.1, 0.2])


def test_bad_kinds_are_named():
    vel, noise, sig = _setup()
    with pytest.raises(ValueError, match="step kind 'sde'"):
        samplers.rollout(vel, noise, sig, "sde")
    with pytest.raises(ValueError, match="got 2 step kinds for 6 steps"):
        samplers.rollout(vel, noise, sig, ["ode", "ode"])
    with pytest.raises(ValueError, match="SDE window"):
        samplers.step_kinds(6, "flow_sde", window=(4, 9))


def test_ode_completion_batched_equals_one_by_one():
    vel, noise, sig = _setup(K=8)
    traj = samplers.rollout(vel, noise, sig, "flow_sde", generator=torch.Generator().manual_seed(2))
    done = samplers.complete_trajectory(vel, traj.latents, traj.sigmas, num_steps=3)  # [B, 8, *S]
    assert done.shape == (4, 8, 2, 3)
    for b in range(4):
        for k in range(8):
            x = traj.latents[b:b + 1, k]
            s = float(sig[k])
            ref = x
            for j in range(3):  # three Euler steps on s (1 - j/3)
                a, c = s * (1 - j / 3), s * (1 - (j + 1) / 3)
                ref = ref + (c - a) * vel(ref, torch.tensor([a]))
            assert_tensors_close(done[b, k], ref[0], atol=1e-12)


def test_ode_completion_with_exact_velocity_converges_to_posterior_samples():
    """Completing x_sigma with the exact field in many steps lands on the data distribution."""
    g = torch.Generator().manual_seed(3)
    n, sigma = 50_000, 0.6
    x0 = 0.5 + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xs = (1 - sigma) * x0 + sigma * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = samplers.ode_complete(gaussian_velocity(0.5, 0.3), xs, torch.full((n,), sigma), 200)
    assert abs(out.mean().item() - 0.5) < 0.01 and abs(out.std().item() - 0.3) < 0.01
    with pytest.raises(ValueError, match="sigma has 3 values"):
        samplers.ode_complete(gaussian_velocity(0.5, 0.3), xs[:4], torch.ones(3), 2)
