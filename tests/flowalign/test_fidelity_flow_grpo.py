"""Flow-GRPO's defaults against its reference implementation, yifan123/flow_grpo:
scripts/train_sd3.py (the KL term, the trained timesteps, dropping zero-advantage samples),
flow_grpo/stat_tracking.py (PerPromptStatTracker with global_std) and
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (std_dev_t). The reference formulas are
transcribed below in numpy/torch, float64, and compared on random inputs."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import samplers
from flowalign.advantages import group_advantages
from flowalign.algorithms.base import Advantages
from flowalign.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig, Rollout, step_kl, zero_advantage_mask
from flowalign.config import SamplerConfig


def ref_std_dev_t(sigmas: np.ndarray, k: int, noise_level: float) -> float:
    """sd3_sde_with_logprob.py: std_dev_t = sqrt(sigma / (1 - where(sigma == 1, sigma_max, sigma))) * a,
    sigma_max = the grid's second sigma."""
    sigma = sigmas[k]
    return float(np.sqrt(sigma / (1 - (sigmas[1] if sigma == 1 else sigma))) * noise_level)


def ref_kl(mean: np.ndarray, mean_ref: np.ndarray, std_dev_t: float) -> np.ndarray:
    """train_sd3.py: ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(dim=(1,2,3)) / (2 * std_dev_t ** 2)."""
    return ((mean - mean_ref) ** 2).mean(axis=(1, 2, 3)) / (2 * std_dev_t**2)


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_default_kl_is_flow_grpos(k):
    g = torch.Generator().manual_seed(k)
    sigmas = samplers.flow_match_sigmas(10, shift=3.0).double()
    x, v = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 4, 8, 8, generator=g,
                                                                                     dtype=torch.float64)
    v_ref = v + 0.1 * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    s, sn = float(sigmas[k]), float(sigmas[k + 1])
    out = samplers.flow_sde_step(x, v, s, sn, noise_level=0.7, generator=g)
    out_ref = samplers.flow_sde_step(x, v_ref, s, sn, noise_level=0.7, prev_sample=out.prev_sample)
    assert FlowGRPOConfig().kl_form == "flow_grpo"
    ours = step_kl("flow_grpo", "flow_sde", out.mean, out_ref.mean, out.std, s, sn)
    ref = ref_kl(out.mean.numpy(), out_ref.mean.numpy(), ref_std_dev_t(sigmas.numpy(), k, 0.7))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=0)
    exact = step_kl("exact", "flow_sde", out.mean, out_ref.mean, out.std, s, sn)
    np.testing.assert_allclose(exact.numpy(), ref / (s - sn), rtol=1e-10)  # the exact KL: / (sigma - sigma_next)


def ref_advantages_global_std(prompts: list[str], rewards: np.ndarray) -> np.ndarray:
    """stat_tracking.py, PerPromptStatTracker(global_std=True).update(prompts, rewards) for 'grpo'."""
    prompts_a = np.array(prompts)
    adv = np.empty_like(rewards) * 0.0
    for p in np.unique(prompts_a):
        r = rewards[prompts_a == p]
        std = np.std(rewards, axis=0, keepdims=True) + 1e-4
        adv[prompts_a == p] = (r - np.mean(r, axis=0, keepdims=True)) / std
    return adv


def test_default_advantages_use_the_batch_std_like_global_std():
    rng = np.random.default_rng(0)
    for _ in range(20):
        groups = rng.integers(2, 9)
        ids = np.repeat(np.arange(groups), rng.integers(2, 6))
        rewards = rng.normal(size=ids.size) * rng.uniform(0.1, 3.0, size=ids.size)
        assert FlowGRPOConfig().std_scope == "batch"
        ours = group_advantages(torch.tensor(rewards), torch.tensor(ids), std_scope="batch", clip=float("inf"))
        ref = ref_advantages_global_std([f"p{i}" for i in ids], rewards)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


class RecordingUpdate:
    def __init__(self):
        self.steps = 0

    def backward(self, loss, last=True):
        loss.backward()

    def step(self):
        self.steps += 1
        return {}


def algo_and_calls(**algo):
    cfg = OmegaConf.merge(OmegaConf.structured(FlowGRPOConfig), algo)
    a = FlowGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=10)))
    calls = []
    w = torch.zeros((), requires_grad=True)

    def step_loss(policy, ro, idx, k, adv):
        calls.append((sorted(idx.tolist()), k))
        return w * 0.0 + 1.0, {"ratio": 1.0}

    a.step_loss = step_loss
    return a, calls


def fake_rollout(n: int) -> Rollout:
    return Rollout([f"p{i}" for i in range(n)], [{}] * n, torch.zeros(n, dtype=torch.long), None, None)


def test_default_trains_the_first_int_k_f_steps_in_order():
    """train_sd3.py: num_train_timesteps = int(num_steps * timestep_fraction); each minibatch trains
    timesteps 0 .. num_train_timesteps - 1."""
    algo, calls = algo_and_calls(timestep_fraction=0.99, train_batch_size=4, drop_zero_advantage=False)
    assert algo.steps_per_update == int(10 * 0.99) == 9
    algo.policy_step(None, fake_rollout(8), Advantages(torch.ones(8), torch.ones(8)), RecordingUpdate(),
                     torch.Generator().manual_seed(0))
    steps_per_batch = [k for _, k in calls]
    assert steps_per_batch == list(range(9)) * 2
    algo, calls = algo_and_calls(timestep_fraction=0.5, timestep_selection="random", train_batch_size=8,
                                 drop_zero_advantage=False)
    algo.policy_step(None, fake_rollout(8), Advantages(torch.ones(8), torch.ones(8)), RecordingUpdate(),
                     torch.Generator().manual_seed(0))
    assert len(calls) == 5 and sorted(k for _, k in calls) != list(range(5))  # a random half (seed 0)


def ref_zero_advantage_mask(adv: torch.Tensor, num_batches: int) -> torch.Tensor:
    """train_sd3.py: mask = adv.abs().sum(dim=1) != 0, then random False -> True until divisible."""
    mask = adv.abs().sum(dim=1) != 0
    true_count = mask.sum()
    if true_count % num_batches != 0:
        false_indices = torch.where(~mask)[0]
        num_to_change = num_batches - (true_count % num_batches)
        if len(false_indices) >= num_to_change:
            mask[false_indices[torch.randperm(len(false_indices))[:num_to_change]]] = True
    return mask


def test_zero_advantage_samples_leave_the_loss():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(2, 40, (1,), generator=g))
        batches = int(torch.randint(1, n + 1, (1,), generator=g))
        adv = torch.randn(n, 9, generator=g, dtype=torch.float64)
        adv[torch.rand(n, generator=g) < 0.5] = 0.0
        ours = zero_advantage_mask(adv, batches, torch.Generator().manual_seed(trial))
        ref = ref_zero_advantage_mask(adv.clone(), batches)
        nonzero = adv.abs().sum(dim=1) != 0
        assert int(ours.sum()) == int(ref.sum()) or not nonzero.any()  # same count (the reference pads the same)
        assert (ours[nonzero]).all()  # every informative sample stays
        if nonzero.any():
            assert int(ours.sum()) % batches == 0 or int((~nonzero).sum()) < batches - int(nonzero.sum()) % batches
    # nothing informative: one sample per minibatch stays, so every process makes its updates
    for n, batches in ((8, 3), (5, 5), (6, 1)):
        assert int(zero_advantage_mask(torch.zeros(n), batches, torch.Generator().manual_seed(0)).sum()) == batches
    # the samples put back are the step generator's pick among the dropped ones
    adv = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0])
    dropped = torch.tensor([0, 2, 5, 6, 7])
    for seed in range(4):
        want = adv != 0
        want[dropped[torch.randperm(5, generator=torch.Generator().manual_seed(seed))[:1]]] = True
        torch.manual_seed(100 + seed)  # the global generator must not be the one drawn from
        assert torch.equal(zero_advantage_mask(adv, 2, torch.Generator().manual_seed(seed)), want)
    # in training: the zero-advantage samples are never passed to the loss
    algo, calls = algo_and_calls(train_batch_size=4)
    adv = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5, 0.0, 0.0, -0.5])
    algo.policy_step(None, fake_rollout(8), Advantages(adv, adv), RecordingUpdate(), torch.Generator().manual_seed(0))
    trained = {i for idx, _ in calls for i in idx}
    assert trained == {1, 3, 4, 7}
    # ... and the one put back to fill the minibatches is drawn from the step's generator
    for seed in range(4):
        algo, calls = algo_and_calls(train_batch_size=4)
        adv = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0])
        want = zero_advantage_mask(adv, 2, torch.Generator().manual_seed(seed))
        torch.manual_seed(100 + seed)
        algo.policy_step(None, fake_rollout(8), Advantages(adv, adv), RecordingUpdate(),
                         torch.Generator().manual_seed(seed))
        assert {i for idx, _ in calls for i in idx} == set(torch.nonzero(want).flatten().tolist())


def test_fast_random_window_is_placed_per_rollout_like_the_reference():
    """Flow-GRPO-Fast (flow_grpo scripts/train_sd3_fast.py; the same draw in showlab/Adv-GRPO
    adv_grpo/diffusers_patch/sd3_pipeline_with_logprob_fast.py): start = random.randint(lo, hi - size),
    both ends included, SDE on [start, start + size), ODE elsewhere, and only the window is trained."""
    lo, hi, size = 1, 7, 2
    sampler = OmegaConf.structured(SamplerConfig(num_steps=10, sde_window_size=size, sde_window_range=[lo, hi]))
    cfg = OmegaConf.merge(OmegaConf.structured(FlowGRPOConfig), {"timestep_fraction": 0.99})
    algo = FlowGRPO(cfg, sampler)
    assert algo.steps_per_update == 1  # int(2 * 0.99), as the reference
    starts = []
    for it in range(600):
        kinds = algo.rollout_kinds(0, it)
        sde = [k for k, kind in enumerate(kinds) if kind != "ode"]
        assert sde == list(range(sde[0], sde[0] + size))
        starts.append(sde[0])
        assert algo.rollout_kinds(0, it) == kinds  # the same on every process and after a resume
    counts = np.bincount(starts, minlength=hi)
    assert set(np.nonzero(counts)[0].tolist()) == set(range(lo, hi - size + 1))  # lo .. hi - size inclusive
    assert counts[lo:hi - size + 1].min() > 600 / 5 * 0.7  # uniform over the 5 starts
    # training uses the rollout's own window
    algo2, calls = algo_and_calls(timestep_fraction=1.0, train_batch_size=4, drop_zero_advantage=False)
    ro = fake_rollout(4)
    ro.kinds = ["ode"] * 5 + ["flow_sde"] * 2 + ["ode"] * 3
    algo2.policy_step(None, ro, Advantages(torch.ones(4), torch.ones(4)), RecordingUpdate(),
                      torch.Generator().manual_seed(0))
    assert [k for _, k in calls] == [5, 6]


def test_step_kinds_use_the_configured_sde_kind_fixed_and_random_window():
    """The kinds of a rollout are sampler.kind (not the default flow_sde) inside the window, whether
    the window is fixed or placed per rollout."""
    fixed = FlowGRPO(OmegaConf.structured(FlowGRPOConfig),
                     OmegaConf.structured(SamplerConfig(num_steps=4, kind="dance_sde", sde_window=[1, 3])))
    assert fixed.kinds == fixed.rollout_kinds(0, 5) == ["ode", "dance_sde", "dance_sde", "ode"]
    assert not fixed.random_window and fixed.train_steps == [1, 2]
    moving = FlowGRPO(OmegaConf.structured(FlowGRPOConfig),
                      OmegaConf.structured(SamplerConfig(num_steps=6, kind="dance_sde", sde_window_size=2,
                                                         sde_window_range=[0, 6])))
    assert moving.random_window and moving.kinds == ["dance_sde"] * 2 + ["ode"] * 4  # the first placement
    assert all(sorted(set(moving.rollout_kinds(0, it))) == ["dance_sde", "ode"] for it in range(20))


@pytest.mark.parametrize("extra,error", [
    ({"algorithm.timestep_fraction": 1.0}, None),
    ({"algorithm.timestep_fraction": 0.0}, "must be in \\(0, 1\\]"),
    ({"algorithm.timestep_fraction": 1.5}, "must be in \\(0, 1\\]"),
    ({"algorithm.clip_range": 0.0}, "clip_range must be > 0"),
    ({"algorithm.clip_range": 1e-6, "algorithm.kl_beta": 0.0}, None),
    ({"algorithm.kl_beta": -0.01}, "kl_beta >= 0"),
    ({"algorithm.reward_aggregation": "advantage"}, "needs reward.name=weighted"),
    ({"algorithm.reward_aggregation": "advantage", "reward.name": "weighted",
      "reward.args": "{weights: {jpeg_compressibility: 1.0}}"}, None),
])
def test_flow_grpo_config_bounds(extra, error):
    from tests.helpers import check_config_bounds

    check_config_bounds("flow_grpo", extra, error)


def test_advantage_aggregation_without_part_weights_is_refused():
    cfg = OmegaConf.merge(OmegaConf.structured(FlowGRPOConfig), {"reward_aggregation": "advantage"})
    with pytest.raises(ValueError, match="needs the weighted reward's part weights"):
        FlowGRPO(cfg, OmegaConf.structured(SamplerConfig()))
    assert FlowGRPO(cfg, OmegaConf.structured(SamplerConfig()), part_weights=[1.0, 2.0]).part_weights == [1.0, 2.0]


@pytest.mark.parametrize("keys,message", [
    ({"sampler.sde_window_size": 2}, "go together"),
    ({"sampler.sde_window_size": 4, "sampler.sde_window_range": [0, 3]}, "must satisfy"),
    ({"sampler.sde_window_size": 2, "sampler.sde_window_range": [0, 5], "sampler.sde_window": [0, 2]}, "keep one"),
    ({"sampler.sde_window_size": 2, "sampler.sde_window_range": [0, 5], "algorithm.name": "dense_grpo"},
     "needs a fixed sampler.sde_window"),
])
def test_random_window_config_errors(keys, message):
    from flowalign.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(None, [f"{k}={v}" for k, v in keys.items()])


def test_random_window_rollout_and_step_on_the_tiny_model(tiny_sd3_dir, tmp_path, prompts_file):
    """A real rollout: SDE (non-zero log-probs) only inside that iteration's window, and the first
    trained transition is on-policy (ratio 1)."""
    from flowalign.config import load_config
    from flowalign.policies import load_policy
    from tests.flowalign.test_train import overrides

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "sampler.num_steps": 4, "sampler.sde_window_size": 1, "sampler.sde_window_range": "[0,4]",
        "algorithm.kl_beta": 0.0}))
    policy = load_policy(cfg.model.path, max_sequence_length=8)
    algo = FlowGRPO(cfg.algorithm, cfg.sampler)
    seen = set()
    for it in range(6):
        ro = algo.rollout(policy, [{"prompt": "a red circle"}] * 2, torch.tensor([0, 0]),
                          torch.Generator().manual_seed(it), 32, 32, seed=0, iteration=it)
        window = [k for k, kind in enumerate(ro.kinds) if kind != "ode"]
        assert ro.kinds == algo.rollout_kinds(0, it) and len(window) == 1
        assert (ro.traj.log_probs[:, window[0]] != 0).all()
        assert (ro.traj.log_probs[:, [k for k in range(4) if k not in window]] == 0).all()
        seen.add(window[0])
    assert len(seen) > 1
    loss, st = algo.step_loss(policy, ro, torch.tensor([0, 1]), window[0], torch.ones(2))
    assert abs(st["ratio"] - 1) < 1e-5


def test_updates_per_iteration_count_whole_minibatches():
    """Flow-GRPO makes inner_epochs x ceil(n / train_batch_size) optimiser steps (an integer)."""
    for n, bs, epochs, want in ((8, 3, 2, 6), (8, 4, 1, 2), (1, 8, 3, 3)):
        algo, _ = algo_and_calls(train_batch_size=bs, inner_epochs=epochs)
        got = algo.updates_per_iteration(n)
        assert got == want and isinstance(got, int)


def test_minibatches_follow_the_split_rule_of_each_setting():
    """With zero-advantage dropping (Flow-GRPO's rule) the kept samples go into the same number of
    minibatches, ceil(n / train_batch_size), of equal size; without it, into minibatches of
    train_batch_size (the last one shorter)."""
    cases = ((True, 8, [0.0, 1.0, 0.0, -1.0, 0.5, 0.0, 0.0, -0.5], [2, 2]),
             (False, 7, [1.0, -1.0, 0.5, 0.2, -0.3, 0.4, -0.8], [4, 3]),
             (False, 7, [1.0, -1.0, 0.5, 0.2, -0.3, 0.4, -0.8], None))
    for drop, n, adv, want in cases:
        bs = 4 if want is not None else 3
        algo, calls = algo_and_calls(train_batch_size=bs, drop_zero_advantage=drop)
        a = torch.tensor(adv)
        algo.policy_step(None, fake_rollout(n), Advantages(a, a), RecordingUpdate(), torch.Generator().manual_seed(0))
        first = calls[0][1]
        sizes = [len(idx) for idx, k in calls if k == first]
        assert sizes == (want if want is not None else [3, 3, 1]), (drop, n)
