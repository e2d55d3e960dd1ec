"""DenseGRPO: step gains, per-step advantages, calibration, and the algorithm on the tiny SD3."""

import json
import math
import os
import re

import pytest
import torch

import samplers
from flowalign.algorithms.base import LocalComm
from flowalign.algorithms.dense_grpo import DenseGRPO, calibrate_psi, dense_advantages, step_gains
from flowalign.config import load_config
from flowalign.policies import load_policy
from reward_models import build_reward
from tests.flowalign.test_train import overrides
from tests.helpers import assert_tensors_close


def test_step_gains_are_reward_after_minus_before():
    R = torch.tensor([[0.0, 0.5, 0.5, 1.0], [1.0, 0.2, 0.7, 0.7]])
    assert_tensors_close(step_gains(R), torch.tensor([[0.5, 0.0, 0.5], [-0.8, 0.5, 0.0]]), atol=1e-7)


def test_per_step_advantages_normalise_each_step_within_each_group():
    # 2 prompts x 2 samples, 3 steps; only steps 0 and 2 are trained
    gains = torch.tensor([[1.0, 5.0, 0.0], [3.0, 1.0, 2.0], [0.5, 0.0, 4.0], [0.5, 2.0, 4.0]], dtype=torch.float64)
    gids = torch.tensor([0, 0, 1, 1])
    adv = dense_advantages(gains, gids, [0, 2], eps=1e-12)
    # group 0, step 0: mean 2, std 1 -> -1, +1; step 2: mean 1, std 1 -> -1, +1; group 1: equal gains -> 0
    expected = torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert_tensors_close(adv, expected, atol=1e-6)


def test_calibration_raises_psi_where_outcomes_are_balanced_and_lowers_it_elsewhere():
    psi = torch.tensor([0.5, 0.5, 0.5, 0.005])
    gains = torch.tensor([
        [0.1, 0.2, 0.0, 0.3],
        [-0.1, 0.3, 0.0, 0.1],
        [0.2, 0.1, 0.0, 0.2],
        [-0.3, 0.4, 0.0, 0.4],
    ])
    new = calibrate_psi(psi, gains, steps=[0, 1, 3], eps1=2, eps2=0.01)
    # step 0: 2 up, 2 down -> balanced -> explore more; step 1, 3: all up -> less (floored at 0);
    # step 2 is not calibrated
    assert_tensors_close(new, torch.tensor([0.51, 0.49, 0.5, 0.0], dtype=torch.float64), atol=1e-9)


def test_dense_advantages_are_group_advantages_of_each_trained_step_with_flow_grpos_defaults():
    """Defaults clip 5 and eps 1e-4 (Flow-GRPO's), std within the group; std_scope and clip are passed
    on (the batch std, clip 1); float32, 0 on untrained steps. DenseGRPO.step_advantages passes the
    config's std_scope and adv_clip_max."""
    from omegaconf import OmegaConf

    from flowalign.advantages import group_advantages
    from flowalign.algorithms.dense_grpo import DenseGRPOConfig
    from flowalign.config import SamplerConfig

    g = torch.Generator().manual_seed(0)
    gids = torch.tensor([0] * 40 + [1] * 3)  # a group large enough for a z-score above 5
    gains = torch.randn(43, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0] * 40 + [50.0] * 3)[:, None]
    gains[0, 2] = 400.0  # an outlier: clipped at 5 by default
    adv = dense_advantages(gains, gids, [0, 2])
    assert adv.dtype == torch.float32 and adv[:, [1, 3]].abs().max() == 0
    for k in (0, 2):
        want = group_advantages(gains[:, k], gids, std_scope="group", clip=5.0, eps=1e-4)
        assert torch.allclose(adv[:, k], want.float(), atol=1e-6)
    assert adv.abs().max() == 5.0
    other = dense_advantages(gains, gids, [2], std_scope="batch", clip=1.0)
    want = group_advantages(gains[:, 2], gids, std_scope="batch", clip=1.0, eps=1e-4).float()
    assert torch.allclose(other[:, 2], want, atol=1e-6)
    assert not torch.allclose(want, group_advantages(gains[:, 2], gids, std_scope="group", clip=1.0).float())
    cfg = OmegaConf.merge(OmegaConf.structured(DenseGRPOConfig), {"std_scope": "batch", "adv_clip_max": 0.7})
    algo = DenseGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=4)))
    R = torch.cat([torch.zeros(43, 1, dtype=torch.float64), gains.cumsum(1)], 1)  # rewards whose gains are `gains`
    got = algo.step_advantages(R, gids)
    for k in algo.train_steps:
        want = group_advantages(gains[:, k], gids, std_scope="batch", clip=0.7, eps=1e-4).float()
        assert torch.allclose(got[:, k], want, atol=1e-5)
    assert got.abs().max() == pytest.approx(0.7)


def test_calibration_counts_only_strict_gains_and_needs_imbalance_below_eps1():
    """A zero gain is neither up nor down; |up - down| equal to eps1 is not balanced."""
    psi = torch.tensor([0.5, 0.5])
    gains = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    # step 0: 2 up, 1 down -> |1| < 2, balanced -> +; step 1: 3 up, 1 down -> |2| = eps1 -> -
    new = calibrate_psi(psi, gains, steps=[0, 1], eps1=2, eps2=0.01)
    assert_tensors_close(new, torch.tensor([0.51, 0.49], dtype=torch.float64), atol=1e-12)


def _dense(tiny_sd3_dir, tmp_path, prompts_file, **extra):
    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file,
                                      **{"algorithm.name": "dense_grpo", **extra}))
    policy = load_policy(cfg.model.path, max_sequence_length=8)
    return cfg, policy, DenseGRPO(cfg.algorithm, cfg.sampler)


def test_latent_rewards_are_rewards_of_the_ode_completions(tiny_sd3_dir, tmp_path, prompts_file):
    cfg, policy, algo = _dense(tiny_sd3_dir, tmp_path, prompts_file, **{"sampler.sde_window": "[0,2]"})
    reward = build_reward("jpeg_compressibility")
    metas = [{"prompt": "a red circle"}] * 2 + [{"prompt": "a blue square"}] * 2
    ro = algo.rollout(policy, metas, torch.tensor([0, 0, 1, 1]), torch.Generator().manual_seed(0), 32, 32)
    assert algo.states == [0, 1, 2, 3]
    nfe0 = policy.nfe
    R = algo.score(policy, ro, reward)
    # states 0, 1, 2 complete in 3 + 2 + 1 grid steps, 4 samples, CFG doubles the batch
    assert policy.nfe - nfe0 == (3 + 2 + 1) * 4 * 2
    assert R.shape == (4, 4) and torch.isfinite(R).all()
    # state 1's completion, by hand: the policy's ODE from latents[:, 1]
    vel = policy.velocity_fn(ro.cond, guidance=cfg.sampler.guidance)
    x = ro.traj.latents[:, 1]
    for j in (1, 2):
        s, sn = float(ro.traj.sigmas[j]), float(ro.traj.sigmas[j + 1])
        x = x + (sn - s) * vel(x, torch.full((4,), s), torch.arange(4))
    by_hand = reward(policy.decode(x), ro.prompts)
    assert_tensors_close(R[:, 1], by_hand, atol=1e-4)
    assert_tensors_close(R[:, 3], reward(policy.decode(ro.traj.final), ro.prompts), atol=1e-6)
    adv = algo.advantages(ro, R, LocalComm).local
    assert adv.shape == (4, 3)
    # a trained step's advantages sum to zero within each group
    assert_tensors_close(adv[:2, :2].sum(0), torch.zeros(2), atol=1e-5)


def test_completions_in_chunks_equal_one_batch_float64(tiny_sd3_dir, tmp_path, prompts_file):
    """The batched completions (one call per grid step over every state of a chunk of samples) give
    the same latents whatever the chunk size (algorithm.completion_batch_size), in float64 to 1e-10."""
    _, policy, algo = _dense(tiny_sd3_dir, tmp_path, prompts_file, **{"sampler.sde_window": "[0,3]"})
    policy.pipe.to(torch.float64)
    cond = policy.encode(["a red circle", "a blue square", "two circles"])
    noise = policy.initial_noise(3, generator=torch.Generator().manual_seed(2)).double()
    vel = policy.velocity_fn(cond, guidance=3.0)
    traj = samplers.rollout(vel, noise, policy.sigmas(4).double(), "flow_sde",
                            generator=torch.Generator().manual_seed(3))
    inner = [0, 1, 2, 3]
    one = torch.cat(algo._completions(vel, traj, inner, 3, per=3))
    by_sample = torch.cat(algo._completions(vel, traj, inner, 3, per=1))
    assert one.dtype == torch.float64 and one.shape[:2] == (3, 4)
    assert_tensors_close(by_sample, one, atol=1e-10, rtol=0)
    # with a fixed number of completion steps, exactly the asked states are completed, in order
    cfg2 = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run2"), prompts_file,
                                       **{"algorithm.name": "dense_grpo", "sampler.sde_window": "[0,3]",
                                          "algorithm.completion_steps": 2}))
    sub = torch.cat(DenseGRPO(cfg2.algorithm, cfg2.sampler)._completions(vel, traj, [3, 1], 3, per=2))
    want = samplers.complete_trajectory(vel, traj.latents, traj.sigmas, 2, steps=torch.tensor([3, 1]))
    assert sub.shape[:2] == (3, 2)
    assert_tensors_close(sub, want, atol=1e-10, rtol=0)


def test_dense_untrained_states_are_not_completed(tiny_sd3_dir, tmp_path, prompts_file):
    _, _, algo = _dense(tiny_sd3_dir, tmp_path, prompts_file, **{"sampler.sde_window": "[1,2]"})
    assert algo.train_steps == [1] and algo.states == [1, 2, 3]


def test_dense_training_iteration_is_on_policy(tiny_sd3_dir, tmp_path, prompts_file):
    from flowalign.trainer import Trainer

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file,
                                      **{"algorithm.name": "dense_grpo", "run.max_iterations": 1,
                                         "run.sample_every": 0, "algorithm.completion_steps": 1}))
    t = Trainer(cfg)
    t.train()
    m = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert abs(m["first_ratio"] - 1) < 1e-5
    # one completion step for each of the 3 inner states (states 0..2; state 3 is the image), 8 samples, CFG
    assert m["nfe_reward"] == 3 * 8 * 2 and m["nfe"] == m["nfe_rollout"] + m["nfe_reward"] + m["nfe_train"]


def test_calibrate_writes_psi(tiny_sd3_dir, tmp_path, prompts_file):
    from flowalign.cli import main

    args = overrides(tiny_sd3_dir, str(tmp_path / "cal"), prompts_file,
                     **{"algorithm.name": "dense_grpo", "algorithm.calib_rounds": 2,
                        "algorithm.calib_trajectories": 4, "algorithm.calib_initial_psi": 0.5})
    assert main(["calibrate", "-", *args]) == 0
    d = json.load(open(tmp_path / "cal" / "psi.json"))
    assert len(d["psi"]) == 3 and len(d["history"]) == 3 and d["history"][0] == [0.5, 0.5, 0.5]
    for a, b in zip(d["history"][0], d["psi"]):
        assert math.isclose(abs(a - b), 0.02, abs_tol=1e-9) or math.isclose(abs(a - b), 0.0, abs_tol=1e-9)
    # the result drives a training config
    cfg = load_config(None, args + [f"sampler.psi={tmp_path / 'cal' / 'psi.json'}"])
    assert cfg.sampler.psi.endswith("psi.json")
    with pytest.raises(ValueError, match="sampler.kind"):
        load_config(None, args + ["sampler.psi=[0.1,0.1,0.1]", "sampler.kind=cps"])


def test_calibrate_with_shared_noise_draws_fresh_noise_each_round_from_run_seed(tiny_sd3_dir, tmp_path, prompts_file,
                                                                               monkeypatch):
    from flowalign import calibration
    from flowalign.algorithms import flow_grpo

    calls = []
    real = flow_grpo.group_noise

    def spy(policy, group_ids, seed, iteration, height, width):
        calls.append((seed, iteration))
        return real(policy, group_ids, seed, iteration, height, width)

    monkeypatch.setattr(flow_grpo, "group_noise", spy)
    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "cal"), prompts_file,
                                      **{"algorithm.name": "dense_grpo", "algorithm.calib_rounds": 3,
                                         "algorithm.calib_trajectories": 2, "algorithm.shared_noise": True,
                                         "run.seed": 5}))
    calibration.calibrate(cfg, progress=False)
    assert calls == [(5, 0), (5, 1), (5, 2)]


@pytest.mark.parametrize("extra,error", [
    ({"algorithm.calib_rounds": 1, "algorithm.calib_trajectories": 2}, None),
    ({"algorithm.calib_rounds": 0}, "algorithm.calib_rounds=0 must be at least 1"),
    ({"algorithm.calib_trajectories": 1}, "algorithm.calib_trajectories=1 must be at least 2"),
    ({"algorithm.calib_eps2": 1e-6}, None),
    ({"algorithm.calib_eps2": 0.0}, "algorithm.calib_eps2=0.0 must be > 0"),
    ({"algorithm.completion_steps": 1}, None),
    ({"algorithm.completion_steps": 0}, "algorithm.completion_steps=0 must be at least 1"),
    ({"algorithm.reward_aggregation": "advantage", "reward.name": "weighted",
      "reward.args": "{weights: {jpeg_compressibility: 1.0, aesthetic: 0.5}}"}, "dense_grpo needs reward_aggregation=sum"),
])
def test_dense_config_bounds(extra, error):
    """Each bound of DenseGRPO's schema at its edge: the smallest allowed value loads, one below is
    refused with a message naming the key, its value and the bound."""
    args = ["algorithm.name=dense_grpo"] + [f"{k}={v}" for k, v in extra.items()]
    if error is None:
        assert load_config(None, args).algorithm.name == "dense_grpo"
    else:
        with pytest.raises(ValueError, match=re.escape(error)):
            load_config(None, args)
