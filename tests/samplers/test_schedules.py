import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import samplers
from tests.helpers import assert_tensors_close


@pytest.mark.parametrize("steps", [1, 4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_static_shift_matches_diffusers(steps, shift):
    sch = FlowMatchEulerDiscreteScheduler(shift=shift)
    sch.set_timesteps(steps)
    assert_tensors_close(samplers.flow_match_sigmas(steps, shift=shift), sch.sigmas, atol=1e-7)


@pytest.mark.parametrize("mu", [0.5, 1.15])
def test_dynamic_shift_matches_diffusers(mu):
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sch.set_timesteps(12, mu=mu)
    assert_tensors_close(samplers.flow_match_sigmas(12, mu=mu), sch.sigmas, atol=1e-6)


def test_dynamic_shift_mu_is_linear_in_tokens():
    assert samplers.dynamic_shift_mu(256) == pytest.approx(0.5)
    assert samplers.dynamic_shift_mu(4096) == pytest.approx(1.15)
    assert samplers.dynamic_shift_mu(2176) == pytest.approx(0.825)


def test_linear_sigmas_and_errors():
    s = samplers.linear_sigmas(4)
    assert_tensors_close(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    # shift 3 at 0.5: 1.5 / 2 = 0.75
    assert samplers.linear_sigmas(2, shift=3.0)[1].item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="num_steps=0"):
        samplers.flow_match_sigmas(0)
