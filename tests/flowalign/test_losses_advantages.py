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


# -- hand computations that the mutation audit (issue 26, `make mutation`) asked for --------------

def _hand_clipped(lp, old, adv, eps):
    ratio = [math.exp(a - b) for a, b in zip(lp, old)]
    terms = [max(-A * r, -A * min(max(r, 1 - eps), 1 + eps)) for A, r in zip(adv, ratio)]
    return sum(terms) / len(terms), sum(ratio) / len(ratio), sum(abs(r - 1) > eps for r in ratio) / len(ratio)


def test_clipped_loss_equals_a_hand_computation_on_both_sides_of_the_clip():
    # ratios far below 1 - eps with negative advantages (the lower clip binds) and far above 1 + eps
    lp = [0.3, -0.5, 0.05, -0.9, 0.6, 0.0]
    old = [0.1, 0.2, 0.0, -0.1, 0.1, 0.0]
    adv = [1.5, -2.0, 0.7, -0.4, -1.1, 0.3]
    out = grpo_clipped_loss(torch.tensor(lp, dtype=torch.float64), torch.tensor(old, dtype=torch.float64),
                            torch.tensor(adv, dtype=torch.float64), 0.2)
    loss, ratio_mean, frac = _hand_clipped(lp, old, adv, 0.2)
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    assert out.ratio_mean == pytest.approx(ratio_mean, rel=1e-12)
    assert out.clip_fraction == pytest.approx(frac)


def test_clip_fraction_counts_a_ratio_on_the_boundary_as_inside():
    # ratio exactly 1 with eps 0: |r - 1| = eps is not outside the trust region
    out = grpo_clipped_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), 0.0)
    assert out.clip_fraction == 0.0


def test_grpo_objective_adds_the_weighted_kl_and_reports_every_statistic():
    from flowalign.losses import grpo_objective

    lp = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    old = torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    kl = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64)
    pg = grpo_clipped_loss(lp, old, adv, 0.3)
    loss, stats = grpo_objective(lp, old, adv, 0.3, kl=kl, kl_beta=0.5)
    assert loss.item() == pytest.approx(pg.loss.item() + 0.5 * 0.2, rel=1e-12)
    assert stats == pytest.approx({"ratio": pg.ratio_mean, "clip_fraction": pg.clip_fraction, "kl": 0.2,
                                   "policy_loss": pg.loss.item(), "log_prob": lp.mean().item(),
                                   "loss": loss.item()}, rel=1e-12)
    # kl_beta defaults to 0 (the KL is reported, not added); no kl: 0 reported
    loss0, stats0 = grpo_objective(lp, old, adv, 0.3, kl=kl)
    assert loss0.item() == pytest.approx(pg.loss.item(), rel=1e-12) and stats0["kl"] == pytest.approx(0.2)
    assert grpo_objective(lp, old, adv, 0.3)[1]["kl"] == 0.0


def test_optimality_probability_maps_linearly_and_clips_at_both_ends():
    from flowalign.losses import optimality_probability

    a = torch.tensor([-9.0, -2.0, -1.0, 0.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    want = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.625, 1.0, 1.0], dtype=torch.float64)
    assert torch.equal(optimality_probability(a, 2.0), want)


def test_nft_loss_keeps_the_samples_dtype_whatever_the_timesteps_dtype():
    from flowalign.losses import nft_loss

    g = torch.Generator().manual_seed(0)
    x0, xt, v, vo = (torch.randn(2, 3, generator=g) for _ in range(4))
    t64 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    out = nft_loss(v, vo, xt, x0, t64, torch.tensor([0.2, 0.9]), 1.0, weighting="none")
    assert out.dtype == torch.float32
    ref = nft_loss(v, vo, xt, x0, t64.float(), torch.tensor([0.2, 0.9]), 1.0, weighting="none")
    assert torch.equal(out, ref)


def _hand_group(r, ids, scope, eps):
    out = []
    for x, g in zip(r, ids):
        grp = [y for y, h in zip(r, ids) if h == g]
        pool = grp if scope == "group" else r
        m, mu = sum(grp) / len(grp), sum(pool) / len(pool)
        std = math.sqrt(sum((y - mu) ** 2 for y in pool) / len(pool))
        out.append((x - m) / (std + eps))
    return out


@pytest.mark.parametrize("scope", ["group", "batch"])
def test_group_advantages_equal_a_hand_computation_with_three_groups_of_different_sizes(scope):
    r = [0.1, 0.9, 0.4, 3.0, 5.0, -2.0, -1.0, -1.5, 0.0]
    ids = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    got = group_advantages(torch.tensor(r, dtype=torch.float64), torch.tensor(ids), std_scope=scope,
                           clip=float("inf"), eps=0.01)
    assert got.tolist() == pytest.approx(_hand_group(r, ids, scope, 0.01), rel=1e-12)


def test_group_advantages_defaults_and_output_dtype():
    # default clip 5 and eps 1e-4: one outlier among 30 has A = sqrt(29) / (1 + ...) > 5 -> 5
    r = torch.zeros(30, dtype=torch.float64)
    r[0] = 1.0
    a = group_advantages(r, torch.zeros(30, dtype=torch.long))
    assert a[0].item() == 5.0
    assert a[1].item() == pytest.approx(_hand_group(r.tolist(), [0] * 30, "group", 1e-4)[1], rel=1e-12)
    ids = torch.tensor([0, 0, 1, 1])
    assert group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64), ids).dtype == torch.float64
    assert group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.bfloat16), ids).dtype == torch.float32


def test_multi_reward_advantages_equal_a_hand_computation_at_float64_precision():
    from flowalign.advantages import multi_reward_advantages

    # each column normalised alone and unclipped (a 30-sample outlier has A > 5), then weighted, then clipped
    n = 30
    col0 = [0.0] * n
    col0[0] = 1.0
    col1 = [0.1 * i for i in range(n)]
    ids = [0] * 15 + [1] * 15
    parts = torch.tensor([col0, col1], dtype=torch.float64).T
    for scope in ("group", "batch"):
        a0, a1 = _hand_group(col0, ids, scope, 0.02), _hand_group(col1, ids, scope, 0.02)
        want = [max(-5.0, min(5.0, 0.3 * x + 0.7 * y)) for x, y in zip(a0, a1)]
        got = multi_reward_advantages(parts, [0.3, 0.7], torch.tensor(ids), std_scope=scope, eps=0.02)
        assert got.tolist() == pytest.approx(want, rel=1e-6, abs=1e-7)  # float32 out
        hi = multi_reward_advantages(parts, [3.0, 0.0], torch.tensor(ids), std_scope=scope, eps=0.02)
        assert hi[0].item() == 5.0  # the default clip, applied after the weighting
    # the weights and the sum are float64: the float32 result is the float64 one rounded once
    parts = torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids6, w = torch.tensor([0, 0, 0, 1, 1, 1]), [1 / 3, 1 / 7, 0.3]
    cols = [_hand_group(parts[:, i].tolist(), ids6.tolist(), "group", 1e-4) for i in range(3)]
    want = torch.tensor([sum(w[i] * cols[i][k] for i in range(3)) for k in range(6)], dtype=torch.float64)
    got = multi_reward_advantages(parts, w, ids6)
    assert torch.equal(got, want.float())
    # a part's own advantage is not clipped before the weighting: sqrt(29) > 5, times 0.5
    out = torch.zeros(30, 1, dtype=torch.float64)
    out[0, 0] = 1.0
    a = multi_reward_advantages(out, [0.5], torch.zeros(30, dtype=torch.long), eps=0.0)
    assert a[0].item() == pytest.approx(0.5 * math.sqrt(29), rel=1e-6)
    with pytest.raises(ValueError, match="one column per weight"):
        multi_reward_advantages(torch.zeros(4, 3), [1.0, 1.0], torch.zeros(4))
