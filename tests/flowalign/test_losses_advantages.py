import math

import pytest
import torch

from flowalign.advantages import group_advantages
from flowalign.losses import grpo_clipped_loss
from tests.helpers import assert_tensors_close


def test_ratio_e_is_clipped_for_positive_advantage():
    # log-ratio 1 -> ratio e for every sample; A = +1, eps = 0.2:
    # max(-1 * e, -1 * 1.2) = -1.2 for each -> loss -1.2, all clipped
    lp, old = torch.ones(3), torch.zeros(3)
    out = grpo_clipped_loss(lp, old, torch.ones(3), 0.2)
    assert out.loss.item() == pytest.approx(-1.2)
    assert out.ratio_mean == pytest.approx(math.e) and out.clip_fraction == 1.0


def test_ratio_e_is_not_clipped_for_negative_advantage():
    # A = -1: max(e, 1.2) = e -> loss e (the pessimistic bound keeps the unclipped term)
    out = grpo_clipped_loss(torch.ones(2), torch.zeros(2), -torch.ones(2), 0.2)
    assert out.loss.item() == pytest.approx(math.e)


def test_on_policy_loss_is_minus_mean_advantage_and_gradient_sign():
    lp = torch.zeros(4, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.5, -1.5])
    out = grpo_clipped_loss(lp, torch.zeros(4), adv, 1e-4)
    # ratio 1 -> loss = mean(-A) = 0; d loss / d logp_i = -A_i / 4
    assert out.loss.item() == pytest.approx(0.0) and out.clip_fraction == 0.0
    out.loss.backward()
    assert_tensors_close(lp.grad, -adv / 4, atol=1e-7)


def test_small_ratio_with_positive_advantage_keeps_gradient_below_clip():
    # ratio e^-1 ~ 0.37 < 0.8: max(-0.37, -0.8) = -0.37 (unclipped, still pushes logp up)
    lp = torch.tensor([-1.0], requires_grad=True)
    out = grpo_clipped_loss(lp, torch.zeros(1), torch.ones(1), 0.2)
    assert out.loss.item() == pytest.approx(-math.exp(-1))
    out.loss.backward()
    assert lp.grad.item() == pytest.approx(-math.exp(-1))


def test_group_advantages_per_group_std():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(r, g)
    # group 0: mean 0.5, std 0.5 -> +-1 / (1 + 2e-4); group 1: constant -> 0
    assert_tensors_close(adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.5 / 0.5001, atol=1e-6)
    assert torch.all(adv[4:] == 0)


def test_group_advantages_batch_std_and_clip():
    r = torch.tensor([10.0, 0.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1])
    adv = group_advantages(r, g, std_scope="batch", clip=1.0)
    # group 0 mean 5; batch std = sqrt(mean((r - 2.5)^2)) = sqrt((56.25 + 3 * 6.25) / 4) = 4.33
    assert adv[0].item() == pytest.approx(1.0) and adv[1].item() == pytest.approx(-1.0)  # 5 / 4.33 clipped
    assert torch.all(adv[2:] == 0)
    unclipped = group_advantages(r, g, std_scope="batch", clip=100)
    assert unclipped[0].item() == pytest.approx(5 / (math.sqrt(75 / 4) + 1e-4), rel=1e-6)
    with pytest.raises(ValueError, match="std_scope 'prompt'"):
        group_advantages(r, g, std_scope="prompt")


def test_per_reward_advantages_sum_the_weighted_group_advantages():
    from flowalign.advantages import multi_reward_advantages

    parts = torch.tensor([[1.0, 10.0], [3.0, 30.0], [0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1])
    # group 0: reward 1 -> (-1, +1), reward 2 -> (-1, +1); group 1: reward 1 -> (-1, +1), reward 2 constant -> 0
    want = torch.tensor([-1 * 0.5 - 1 * 2.0, 0.5 + 2.0, -0.5, 0.5])
    got = multi_reward_advantages(parts, [0.5, 2.0], g)
    assert torch.allclose(got, want.float(), atol=1e-3)
    # the scale of a reward does not matter, only its weight (unlike the advantage of the weighted sum)
    assert torch.allclose(multi_reward_advantages(parts * torch.tensor([1.0, 1000.0]), [0.5, 2.0], g), got, atol=1e-3)
    assert torch.allclose(multi_reward_advantages(parts, [1.0, 1.0], g, clip=1.5).abs().max(),
                          torch.tensor(1.5))


def test_reward_aggregation_config_errors():
    import pytest

    from flowalign.config import load_config

    with pytest.raises(ValueError, match="reward_aggregation=advantage needs reward.name=weighted"):
        load_config(None, ["algorithm.reward_aggregation=advantage"])
    with pytest.raises(ValueError, match="is for flow_grpo and adv_grpo"):
        load_config(None, ["algorithm.name=dense_grpo", "algorithm.reward_aggregation=advantage",
                           "reward.name=weighted"])
