import pytest
import torch

import samplers
from tests.helpers import assert_tensors_close, gaussian_velocity

VEL = gaussian_velocity(0.4, 0.6)


def _traj(B=3, K=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, 2, 3, generator=g, dtype=torch.float64)
    return samplers.rollout(VEL, noise, samplers.linear_sigmas(K), "flow_sde", generator=g)


def test_complete_on_grid_equals_sequential_euler_from_each_state():
    t = _traj()
    states = [0, 2, 3, 6]
    out = samplers.complete_on_grid(VEL, t.latents, t.sigmas, states)
    assert out.shape == (3, 4, 2, 3)
    for j, k in enumerate(states):
        x = t.latents[:, k]
        for i in range(k, t.num_steps):
            s, sn = float(t.sigmas[i]), float(t.sigmas[i + 1])
            x = samplers.euler_step(x, VEL(x, torch.full((3,), s, dtype=torch.float64)), s, sn).prev_sample
        assert_tensors_close(out[:, j], x, atol=1e-12, what=f"state {k}")
    # the final state is returned unchanged
    assert torch.equal(out[:, 3], t.latents[:, 6])


def test_complete_on_grid_makes_one_call_per_remaining_grid_step():
    t = _traj(B=2, K=5)
    calls = []

    def counting(x, sigma, rows):
        calls.append(x.shape[0])
        return VEL(x, sigma, rows)

    samplers.complete_on_grid(counting, t.latents, t.sigmas, [1, 3, 4])
    # grid steps 1..4; active states: j=1: {1}, j=2: {1}, j=3: {1, 3}, j=4: {1, 3, 4}; 2 samples each
    assert calls == [2, 2, 4, 6]
    with pytest.raises(ValueError, match="must lie in"):
        samplers.complete_on_grid(VEL, t.latents, t.sigmas, [7])


def test_psi_to_noise_levels_gives_std_psi():
    sig = samplers.linear_sigmas(5).to(torch.float64)
    psi = torch.tensor([0.9, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64)
    levels = samplers.psi_to_noise_levels(psi, sig)
    x = torch.zeros(1, 4, dtype=torch.float64)
    for k in range(5):
        s, sn = float(sig[k]), float(sig[k + 1])
        out = samplers.flow_sde_step(x, x, s, sn, noise_level=float(levels[k]), noise=torch.zeros_like(x))
        assert_tensors_close(out.std.flatten()[0], psi[k] * (s - sn) ** 0.5, atol=1e-12)
    with pytest.raises(ValueError, match="one per step"):
        samplers.psi_to_noise_levels([0.1, 0.2], sig)
