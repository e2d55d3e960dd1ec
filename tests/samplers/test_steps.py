"""Closed-form checks of every step kind, in float64."""

import math

import pytest
import torch

import samplers
from tests.helpers import assert_tensors_close

SDE_STEPS = [samplers.flow_sde_step, samplers.dance_sde_step, samplers.cps_step]
ALL_STEPS = [samplers.euler_step, *SDE_STEPS]


def _inputs(seed=0, shape=(5, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("step", SDE_STEPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sigmas", [(0.8, 0.7), (1.0, 0.95), (0.05, 0.0)])
def test_log_prob_is_normal_density(step, sigmas):
    x, v = _inputs()
    out = step(x, v, *sigmas, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    std = out.std.expand_as(out.mean)
    if not bool((std > 0).all()):  # CPS at sigma_next = 0 is deterministic: density defined as 0
        assert torch.all(out.log_prob == 0)
        return
    ref = torch.distributions.Normal(out.mean, std).log_prob(out.prev_sample).flatten(1).mean(1)
    assert_tensors_close(out.log_prob, ref, atol=1e-12, what=f"{step.__name__} log_prob")
    assert out.log_prob.dtype == torch.float64 and out.log_prob.shape == (5,)


@pytest.mark.parametrize("step", SDE_STEPS, ids=lambda f: f.__name__)
def test_rescoring_a_sampled_step_returns_its_log_prob(step):
    x, v = _inputs(1)
    sampled = step(x, v, 0.6, 0.5, noise_level=0.7, generator=torch.Generator().manual_seed(3))
    again = step(x, v, 0.6, 0.5, noise_level=0.7, prev_sample=sampled.prev_sample)
    assert_tensors_close(again.log_prob, sampled.log_prob, atol=1e-12)
    assert_tensors_close(again.prev_sample, sampled.prev_sample, atol=0)
    # re-scoring another sample gives another density (the test can fail)
    other = step(x, v, 0.6, 0.5, noise_level=0.7, prev_sample=sampled.prev_sample + 0.1)
    assert not torch.allclose(other.log_prob, sampled.log_prob)


@pytest.mark.parametrize("step", SDE_STEPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sigmas", [(1.0, 0.9), (0.7, 0.4), (0.2, 0.0)])
def test_noise_level_zero_is_euler(step, sigmas):
    x, v = _inputs(2)
    euler = samplers.euler_step(x, v, *sigmas)
    out = step(x, v, *sigmas, noise_level=0.0, generator=torch.Generator().manual_seed(0))
    assert_tensors_close(out.prev_sample, euler.prev_sample, atol=1e-12)
    assert_tensors_close(out.mean, euler.prev_sample, atol=1e-12)
    assert torch.all(out.std == 0) and torch.all(out.log_prob == 0)


def test_euler_closed_form():
    x, v = _inputs(3)
    out = samplers.euler_step(x, v, 0.75, 0.5)
    assert_tensors_close(out.prev_sample, x - 0.25 * v, atol=1e-15)
    assert torch.all(out.log_prob == 0) and float(out.std) == 0


def test_flow_sde_at_sigma_one_is_finite_and_uses_sigma_next():
    x, v = _inputs(4)
    out = samplers.flow_sde_step(x, v, 1.0, 0.9, noise_level=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.log_prob).all()
    # std_t = 0.7 sqrt(1 / (1 - 0.9)); step std = std_t sqrt(0.1) = 0.7 exactly
    assert math.isclose(float(out.std), 0.7, rel_tol=1e-12)
    # mean = x (1 + std_t^2 dt / 2) + v dt with std_t^2 = 4.9, dt = -0.1
    assert_tensors_close(out.mean, x * (1 - 4.9 * 0.1 / 2) - 0.1 * v, atol=1e-12)


def test_flow_sde_closed_form_interior():
    x, v = _inputs(5)
    s, sn, a = 0.6, 0.45, 0.7
    dt = sn - s
    std_t = a * math.sqrt(s / (1 - s))
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    out = samplers.flow_sde_step(x, v, s, sn, noise_level=a, noise=torch.zeros_like(x))
    assert_tensors_close(out.mean, mean, atol=1e-12)
    assert_tensors_close(out.prev_sample, mean, atol=1e-12)
    assert math.isclose(float(out.std), std_t * math.sqrt(-dt), rel_tol=1e-12)


def test_dance_sde_closed_form():
    x, v = _inputs(6)
    s, sn, eta = 0.6, 0.45, 0.3
    x0 = x - s * v
    score = -(x - (1 - s) * x0) / s**2
    mean = x + (sn - s) * v - 0.5 * eta**2 * score * (sn - s)
    out = samplers.dance_sde_step(x, v, s, sn, noise_level=eta, noise=torch.zeros_like(x))
    assert_tensors_close(out.mean, mean, atol=1e-12)
    assert math.isclose(float(out.std), eta * math.sqrt(s - sn), rel_tol=1e-12)


def test_cps_with_oracle_velocity_lands_on_forward_marginal():
    """With v = eps - x0 exactly, x' = (1 - sigma_next) x0 + sigma_next xi, xi ~ N(0, I)."""
    g = torch.Generator().manual_seed(7)
    n, s, sn = 200_000, 0.8, 0.55
    x0 = 0.5 + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = (1 - s) * x0 + s * eps
    out = samplers.cps_step(x, eps - x0, s, sn, noise_level=0.7, generator=g)
    xi = (out.prev_sample - (1 - sn) * x0) / sn  # exactly recovers the noise part
    # the x0 coefficient is exact: xi is independent of x0 and standard normal
    assert abs(xi.mean().item()) < 0.01
    assert abs(xi.var().item() - 1) < 0.01
    assert abs(torch.corrcoef(torch.cat([xi, x0], 1).T)[0, 1].item()) < 0.01
    # and exactly: the mean's noise part is eps * sqrt(sn^2 - std^2)
    std = sn * math.sin(0.7 * math.pi / 2)
    assert_tensors_close(out.mean, (1 - sn) * x0 + eps * math.sqrt(sn**2 - std**2), atol=1e-12)


def test_per_sample_sigmas_match_scalar_sigmas():
    x, v = _inputs(8)
    sig = torch.tensor([0.9, 0.5, 0.3, 0.9, 0.7], dtype=torch.float64)
    nxt = sig - 0.1
    noise = torch.randn_like(x)
    for step in ALL_STEPS:
        batched = step(x, v, sig, nxt, noise_level=0.5, noise=noise)
        for i in range(5):
            single = step(x[i:i + 1], v[i:i + 1], float(sig[i]), float(nxt[i]), noise_level=0.5, noise=noise[i:i + 1])
            assert_tensors_close(batched.prev_sample[i:i + 1], single.prev_sample, atol=1e-12)
            assert_tensors_close(batched.log_prob[i:i + 1], single.log_prob, atol=1e-12)


def test_low_precision_inputs_compute_log_prob_in_fp32():
    x, v = _inputs(9)
    out = samplers.flow_sde_step(x.bfloat16(), v.bfloat16(), 0.5, 0.4, generator=torch.Generator().manual_seed(0))
    assert out.log_prob.dtype == torch.float32 and out.mean.dtype == torch.float32


def test_bad_shapes_are_named():
    x, v = _inputs()
    with pytest.raises(ValueError, match="sigma has shape"):
        samplers.flow_sde_step(x, v, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="noise has shape"):
        samplers.flow_sde_step(x, v, 0.6, 0.5, noise=torch.zeros(2))
    with pytest.raises(ValueError, match="prev_sample has shape"):
        samplers.cps_step(x, v, 0.6, 0.5, prev_sample=torch.zeros(2))


def test_gaussian_mean_kl_closed_form():
    m1 = torch.zeros(2, 3, dtype=torch.float64)
    m2 = torch.full((2, 3), 0.5, dtype=torch.float64)
    # (0.5^2) / (2 * 0.25^2) = 0.25 / 0.125 = 2
    assert_tensors_close(samplers.gaussian_mean_kl(m1, m2, torch.tensor(0.25)), torch.full((2,), 2.0), atol=1e-12)
