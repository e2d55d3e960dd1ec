"""DiffusionNFT (algorithm.name=nft) against a hand derivation and its reference implementation,
NVlabs/DiffusionNFT: scripts/train_nft_sd3.py (the optimality probability, the loss with adaptive
weighting, return_decay) and flow_grpo/diffusers_patch/solver.py (the dpm2 sampler), transcribed
below in float64; then training runs: the old policy starts equal to the trained weights, a
2-process run equals a 1-process run, and a resumed run continues bit-identically with the old
policy restored."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import samplers
from flowalign.algorithms.nft import NFTConfig, old_policy_decay
from flowalign.config import load_config
from flowalign.losses import nft_loss, optimality_probability
from flowalign.trainer import Trainer
from tests.flowalign.test_train import overrides as grpo_overrides
from tests.helpers import SecondOfTwo, gaussian_velocity


def test_defaults_are_the_reference_configs():
    c = NFTConfig()  # config/nft.py _get_config and config/base.py
    assert (c.beta, c.kl_beta, c.adv_clip_max, c.timestep_fraction, c.std_scope, c.weighting, c.solver,
            list(c.old_decay), c.gradient_steps_per_iteration) == \
        (1.0, 1e-4, 5.0, 0.99, "batch", "adaptive", "dpm2", [0.0, 0.001, 0.5], 1)


def test_gradient_at_the_old_policy_is_the_hand_derivation():
    """Plain v-space loss r |v+ - v|^2 + (1 - r) |v- - v|^2 (mean over D elements): at v_theta = v_old,
    d/dv_theta = 2 beta (2r - 1) (v_old - v) / D, i.e. towards the data for r > 1/2, away for r < 1/2."""
    g = torch.Generator().manual_seed(0)
    B, D = 4, 12
    x0, eps = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.6, 0.3, 0.1], dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    v_old = torch.randn(B, D, generator=g, dtype=torch.float64)
    r = torch.tensor([1.0, 0.75, 0.5, 0.0], dtype=torch.float64)
    for beta in (1.0, 0.1):
        v_theta = v_old.clone().requires_grad_(True)
        nft_loss(v_theta, v_old, xt, x0, t, r, beta, weighting="none").sum().backward()
        expected = 2 * beta * (2 * r[:, None] - 1) * (v_old - (eps - x0)) / D
        torch.testing.assert_close(v_theta.grad, expected, rtol=1e-12, atol=1e-14)
    assert v_theta.grad[2].abs().max() < 1e-16  # r = 1/2: no signal


def ref_nft_policy_loss(forward_prediction, old_prediction, xt, x0, t, advantages, beta, adv_clip_max):
    """train_nft_sd3.py, adv_mode 'all': r from clipped advantages, implicit positive/negative
    predictions, adaptive weighting in x0 space, / beta, * adv_clip_max, mean."""
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    normalized_advantages_clip = (advantages_clip / adv_clip_max) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = torch.abs(x0_prediction.double() - x0.double()).mean(dim=tuple(range(1, x0.ndim)),
                                                                             keepdim=True).clip(min=0.00001)
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = torch.abs(negative_x0_prediction.double() - x0.double()).mean(
            dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001)
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    return (ori_policy_loss * adv_clip_max).mean()


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_adaptive_loss_and_its_gradient_equal_the_reference(beta):
    g = torch.Generator().manual_seed(1)
    shape = (6, 4, 8, 8)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v_old = torch.randn(shape, generator=g, dtype=torch.float64)
    v = (v_old + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([-7.0, -5.0, -1.0, 0.0, 2.5, 9.0], dtype=torch.float64)
    ref = ref_nft_policy_loss(v, v_old, xt, x0, t, adv, beta, 5.0)
    (ref_grad,) = torch.autograd.grad(ref, v)
    ours = (nft_loss(v, v_old, xt, x0, t, optimality_probability(adv, 5.0), beta) * 5.0 / beta).mean()
    (grad,) = torch.autograd.grad(ours, v)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_optimality_probability_on_a_hand_built_group():
    from flowalign.advantages import group_advantages

    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])  # group 1 has no spread
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups, std_scope="group", clip=5.0)
    s = float(np.std([1, 2, 3, 4])) + 1e-4
    torch.testing.assert_close(adv[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s)
    r = optimality_probability(adv, 5.0)
    torch.testing.assert_close(r, torch.tensor([0.5 - 0.15 / s, 0.5 - 0.05 / s, 0.5 + 0.05 / s, 0.5 + 0.15 / s,
                                                0.5, 0.5, 0.5, 0.5]))
    assert torch.equal(optimality_probability(torch.tensor([-9.0, 5.0, 12.0]), 5.0), torch.tensor([0.0, 1.0, 1.0]))


def ref_return_decay(step, decay_type):
    """train_nft_sd3.py: return_decay."""
    flat, uprate, uphold = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


@pytest.mark.parametrize("decay_type,params", [(1, (0.0, 0.001, 0.5)), (2, (75.0, 0.0075, 0.999)), (0, (0, 0, 0))])
def test_old_policy_decay_is_return_decay(decay_type, params):
    for step in [0, 1, 10, 74, 75, 76, 200, 499, 500, 501, 10_000]:
        assert old_policy_decay(step, *params) == pytest.approx(ref_return_decay(step, decay_type), abs=1e-15)


def ref_dpm2_sampling(v_pred_fn, z, sigma_schedule):
    """solver.py run_sampling(solver='dpm2', determistic=True): dpm_step with DPMState(order=2)."""
    outputs, lower_order_nums = [None, None], 0
    n = len(sigma_schedule) - 1
    lam = lambda s: torch.log(1 - s) - torch.log(s)  # noqa: E731 - _sigma_to_alpha_sigma_t
    for i in range(n):
        pred = v_pred_fn(z, sigma_schedule[i])
        lower_order_final = i == n - 1
        m = z - sigma_schedule[i] * pred  # convert_model_output
        outputs = [outputs[1], m]
        sig = sigma_schedule.to(torch.float64)
        if lower_order_nums < 1 or lower_order_final:  # step 0 or last: ddim_update, eta 0
            t, s = sig[i + 1], sig[i]
            noise_pred = (z - (1 - s) * m) / s
            z = (1 - t) * m + torch.sqrt(t**2) * noise_pred
        else:  # multistep_dpm_solver_second_order_update
            t, s0, s1 = sig[i + 1], sig[i], sig[i - 1]
            h, h_0 = lam(t) - lam(s0), lam(s0) - lam(s1)
            r0 = h_0 / h
            D0, D1 = outputs[-1], (1.0 / r0) * (outputs[-1] - outputs[-2])
            z = (t / s0) * z - ((1 - t) * (torch.exp(-h) - 1.0)) * D0 - 0.5 * ((1 - t) * (torch.exp(-h) - 1.0)) * D1
        lower_order_nums = min(lower_order_nums + 1, 2)
    return z


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm2_rollout_equals_the_reference_solver(shift):
    sigmas = samplers.flow_match_sigmas(10, shift=shift).double()
    vel = gaussian_velocity(0.5, 0.3)
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    traj = samplers.dpm2_rollout(lambda x, s, rows: vel(x.double(), s).float(), noise.float(), sigmas.float())
    ref = ref_dpm2_sampling(lambda x, s: vel(x, torch.full((x.shape[0],), float(s), dtype=torch.float64)),
                            noise, sigmas)
    diff = (traj.final.double() - ref).abs().max().item()
    assert diff < 1e-5, diff
    euler = samplers.rollout(lambda x, s, rows: vel(x.double(), s).float(), noise.float(), sigmas.float(), "ode")
    assert (euler.final.double() - ref).abs().max().item() > 10 * diff  # a second-order solver, not Euler


# -- training runs ----------------------------------------------------------------------------------
def overrides(model, out, prompts_file, **extra):
    """The tiny test run's overrides without the GRPO-only keys."""
    return [o for o in grpo_overrides(model, out, prompts_file, **extra) if not o.startswith("algorithm.clip_range=")]


NFT = {"algorithm.name": "nft", "algorithm.group_size": 4, "algorithm.prompts_per_iteration": 2,
       "algorithm.train_batch_size": 4, "sampler.num_steps": 4, "sampler.guidance": 1.0, "optim.lr": 3e-3}


def test_one_iteration_trains_from_an_old_policy_equal_to_the_weights(tiny_sd3_dir, tmp_path, prompts_file):
    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file,
                                      **{**NFT, "run.max_iterations": 2, "run.sample_every": 0}))
    t = Trainer(cfg)
    w0 = [p.detach().clone() for p in t.params]
    seen, velocity = [], t.policy.velocity

    def recording(x, sigma, *a, **k):
        if torch.is_grad_enabled():  # the trained forwards (the rollout and v_old run without grad)
            seen.append(torch.as_tensor(sigma).flatten())
        return velocity(x, sigma, *a, **k)

    t.policy.velocity = recording
    m1 = t.iterate()
    t.policy.velocity = velocity
    # the trained forwards (2 minibatches of 4, each at train_timesteps timesteps per sample) use the
    # rollout's K = 4 sampling timesteps (sigma > 0), every one of them
    grid = t.policy.sigmas(4)[:-1]
    assert len(seen) == 2 * t.algo.train_timesteps and all(s.numel() == 4 for s in seen)
    assert set(torch.cat(seen).tolist()) == set(grid.tolist()) and grid.min() > 0
    w1 = [p.detach().clone() for p in t.params]
    m2 = t.iterate()
    assert any(not torch.equal(a, b) for a, b in zip(w0, w1))
    assert m1["first_deviation"] == 0.0  # the first forward: the old policy is the current one
    assert m1["old_decay"] == pytest.approx(0.001) and m2["old_decay"] == pytest.approx(0.002)  # decay_type 1
    assert m2["first_deviation"] > 0  # old = 0.001 w0 + 0.999 w1 differs from w1
    # after each iteration old <- decay old + (1 - decay) current, decay = 0.001 x optimiser steps
    for o, a, b, c in zip(t.algo.old, w0, w1, t.params):
        torch.testing.assert_close(o, 0.002 * (0.001 * a + 0.999 * b) + 0.998 * c.detach(), rtol=1e-6, atol=1e-9)
    t.save_final()
    assert os.path.isfile(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors")


def _final_lora(path):
    return load_file(os.path.join(path, "lora", "pytorch_lora_weights.safetensors"))


def test_two_process_run_equals_one_process(tiny_sd3_dir, tmp_path):
    from tests.flowalign.test_distributed import _torchrun

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    kw = {**NFT, "run.max_iterations": 2, "run.sample_every": 0, "algorithm.train_batch_size": 2}
    one = tmp_path / "one"
    Trainer(load_config(None, overrides(tiny_sd3_dir, str(one), str(prompts), **kw))).train()
    two = tmp_path / "two"
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(two), str(prompts), **kw))
    a, b = _final_lora(one), _final_lora(two)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    change = max(a[k].abs().max().item() for k in a if "lora_B" in k)
    print(f"NFT 2-process vs 1-process final LoRA: max abs difference {diff:.2e} (largest lora_B {change:.2e})")
    assert change > 1e-4 and diff < 1e-6
    m1 = [json.loads(x) for x in open(one / "metrics.jsonl")]
    m2 = [json.loads(x) for x in open(two / "metrics.jsonl")]
    assert [x["reward_mean"] for x in m1] == pytest.approx([x["reward_mean"] for x in m2], abs=1e-6)


def test_resume_is_bit_identical_with_the_old_policy_restored(tiny_sd3_dir, tmp_path, prompts_file):
    kw = {**NFT, "run.sample_every": 0, "run.checkpoint_every": 1}
    straight = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "a"), prompts_file,
                                                   **{**kw, "run.max_iterations": 3})))
    straight.train()
    first = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "b"), prompts_file,
                                                **{**kw, "run.max_iterations": 2})))
    first.train()
    state = torch.load(tmp_path / "b" / "checkpoints" / "iter_000002" / "algorithm.pt", weights_only=True)
    assert state["steps"] == 2 and len(state["old"]) == len(first.params)
    resumed = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "b"), prompts_file,
                                                  **{**kw, "run.max_iterations": 3, "run.resume": True})))
    resumed.train()
    for p, q in zip(straight.params, resumed.params):
        assert torch.equal(p, q)
    for p, q in zip(straight.algo.old, resumed.algo.old):
        assert torch.equal(p, q)
    a = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert a[-1]["loss"] == b[-1]["loss"] and a[-1]["first_deviation"] == b[-1]["first_deviation"]


def test_state_before_the_first_update_round_trips_as_no_old_policy():
    from omegaconf import OmegaConf

    from flowalign.algorithms.nft import NFT, NFTConfig
    from flowalign.config import SamplerConfig

    algo = NFT(OmegaConf.structured(NFTConfig), OmegaConf.structured(SamplerConfig))
    assert algo.state_dict() == {"old": [], "steps": 0}
    algo.load_state_dict({"old": [torch.ones(2)], "steps": 3})
    assert algo.steps == 3 and torch.equal(algo.old[0], torch.ones(2))
    other = NFT(OmegaConf.structured(NFTConfig), OmegaConf.structured(SamplerConfig))
    other.load_state_dict(algo.state_dict())
    assert other.steps == 3 and torch.equal(other.old[0], torch.ones(2))
    other.load_state_dict({"old": [], "steps": 0})
    assert other.old is None


@pytest.mark.parametrize("extra,error", [
    ({"algorithm.group_size": 2}, None),
    ({"algorithm.group_size": 1}, "must be at least 2"),
    ({"algorithm.timestep_fraction": 1.0}, None),
    ({"algorithm.timestep_fraction": 0.0}, "must be in \\(0, 1\\]"),
    ({"algorithm.timestep_fraction": 1.5}, "must be in \\(0, 1\\]"),
    ({"algorithm.beta": 0.0}, "must be > 0"),
    ({"algorithm.kl_beta": -0.1}, "must be > 0"),
    ({"algorithm.kl_beta": 0.0}, None),
    ({"algorithm.adv_clip_max": 0.0}, "must be > 0"),
    ({"algorithm.adv_clip_max": 0.5, "algorithm.beta": 0.5}, None),  # below 1 is fine for both
    ({"algorithm.old_decay": "[0,0,0]"}, None),
    ({"algorithm.old_decay": "[0,0.001,1.0]"}, "must be \\[flat >= 0"),
    ({"algorithm.old_decay": "[-1,0.001,0.5]"}, "must be \\[flat >= 0"),
    ({"algorithm.old_decay": "[0,-0.001,0.5]"}, "must be \\[flat >= 0"),
    ({"algorithm.old_decay": "[0,0.001]"}, "must be \\[flat >= 0"),
])
def test_nft_config_bounds(extra, error):
    from tests.helpers import check_config_bounds

    check_config_bounds("nft", extra, error)


def _nft(**over):
    from omegaconf import OmegaConf

    from flowalign.algorithms.nft import NFT
    from flowalign.config import SamplerConfig

    return NFT(OmegaConf.merge(OmegaConf.structured(NFTConfig), over), OmegaConf.structured(SamplerConfig(num_steps=4)))


def test_engine_calls_use_their_settings():
    """assign numbers each process's samples by their place in the whole batch; updates per
    iteration count inner epochs x optimiser steps; advantages use the std scope and clip of the
    config, over the whole gathered batch, and hand each process its own rows."""
    from types import SimpleNamespace

    from flowalign.advantages import group_advantages

    algo = _nft(group_size=4)
    metas = [{"prompt": p} for p in "abc"]
    whole, whole_ids = algo.assign(metas, 0, 1)
    shares = [algo.assign(metas, rank, 2) for rank in range(2)]
    assert [m["sample_index"] for m in whole] == list(range(12))
    assert [m for mine, _ in shares for m in mine] == whole
    assert torch.equal(torch.cat([ids for _, ids in shares]), whole_ids)
    assert _nft(inner_epochs=2, gradient_steps_per_iteration=3).updates_per_iteration(8) == 6
    # int(K f) of the K = 4 grid timesteps, at least one
    assert [_nft(timestep_fraction=f).train_timesteps for f in (0.1, 0.25, 0.6, 0.99, 1.0)] == [1, 1, 2, 3, 4]

    rewards = torch.tensor([0.0, 1.0, 5.0, 2.0, 10.0, 10.5, 9.0, 30.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    got = {}
    for scope, clip in (("group", 0.7), ("batch", 1.2), ("batch", 5.0)):
        algo = _nft(std_scope=scope, adv_clip_max=clip)
        want = group_advantages(rewards, ids, std_scope=scope, clip=clip)
        local = algo.advantages(SimpleNamespace(group_ids=ids[4:]), rewards[4:], SecondOfTwo(rewards[:4], ids[:4]))
        assert torch.equal(local.all_rewards, rewards) and torch.equal(local.local, want[4:])
        got[scope, clip] = want
    assert len({tuple(v.tolist()) for v in got.values()}) == 3  # each setting changes the advantages


def test_the_old_policy_follows_the_parameters_device_and_dtype():
    """A restored old policy (float32 on the CPU) is used in the trained parameters' dtype."""
    algo = _nft()
    params = [torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    algo.load_state_dict({"old": [torch.ones(3), torch.full((2,), 2.0)], "steps": 1})
    old = algo._old_weights(params)
    assert [w.dtype for w in old] == [torch.float64] * 2
    assert torch.equal(old[1], torch.full((2,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("weighting,kl_beta", [("adaptive", 0.1), ("none", 0.0)])
def test_policy_step_gradient_equals_a_hand_reconstruction(weighting, kl_beta, tiny_sd3_dir, tmp_path, prompts_file):
    """The second iteration's accumulated gradient (the old policy then differs from the weights),
    rebuilt from the rollout: minibatches from the step generator's permutation; per sample, its own
    generator draws T grid timesteps (a permutation's first T) and then the noise; x_t = (1 - t) x0 +
    t eps; v_old under the old weights and v under the trained ones, both with the sampler's guidance;
    r from the clipped advantages; the NFT loss x adv_clip_max / beta plus kl_beta (v - v_ref)^2, each
    averaged over the minibatch and divided by the optimiser step's number of backwards. Minibatches
    of 3 and 2 samples, so no broadcast against the 4 latent channels can pass by accident."""
    from flowalign.losses import optimality_probability as r_of
    from tests.helpers import generator_at, spy_on_policy_step

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file,
                                      **{**NFT, "run.max_iterations": 2, "run.sample_every": 0,
                                         "algorithm.train_batch_size": 3, "sampler.guidance": 2.0,
                                         "algorithm.kl_beta": kl_beta, "algorithm.beta": 0.5,
                                         "algorithm.weighting": weighting,
                                         "algorithm.adv_clip_max": 2.0}))
    t = Trainer(cfg)
    t.iterate()
    seen = spy_on_policy_step(t)
    t.iterate()
    a, policy, params = cfg.algorithm, t.policy, t.updater.params
    ro, K = seen["ro"], cfg.sampler.num_steps
    T = max(1, int(K * a.timestep_fraction))
    assert len(seen["params"]) == len(seen["grads"]) == 1  # one optimiser step
    current, old_weights = seen["params"][0], seen["state"]["old"]
    with torch.no_grad():
        for p, w in zip(params, current):
            p.copy_(w)
    gen = generator_at(seen["gen"])
    gens = [generator_at(s) for s in seen["gens"]]
    x0_all, grid, n = ro.traj.final, ro.traj.sigmas[:-1], len(ro.prompts)
    assert x0_all.shape[1] == 4 and grid.numel() == K
    r_all = r_of(seen["adv"].local.float(), a.adv_clip_max)
    batches = torch.randperm(n, generator=gen).split(a.train_batch_size)
    draws = {}
    for i in torch.cat(batches).tolist():
        ts = grid[torch.randperm(K, generator=gens[i])[:T]]
        draws[i] = ts, torch.randn((T, *x0_all.shape[1:]), generator=gens[i])
    inputs = []  # (rows, x0, r, t, x_t) of every forward
    for idx in batches:
        x0 = x0_all[idx]
        for j in range(T):
            tj = torch.stack([draws[i][0][j] for i in idx.tolist()]).to(x0)
            eps = torch.stack([draws[i][1][j] for i in idx.tolist()]).to(x0)
            inputs.append((idx, x0, r_all[idx], tj, (1 - tj.view(-1, 1, 1, 1)) * x0 + tj.view(-1, 1, 1, 1) * eps))
    with torch.no_grad():  # the old policy's and the reference's velocities first, then the trained ones
        for p, w in zip(params, old_weights):
            p.copy_(w)
        v_olds = [policy.velocity(xt, tj, ro.cond, guidance=2.0, rows=idx) for idx, _, _, tj, xt in inputs]
        for p, w in zip(params, current):
            p.copy_(w)
        with policy.reference():
            v_refs = [policy.velocity(xt, tj, ro.cond, guidance=2.0, rows=idx) for idx, _, _, tj, xt in inputs]
    total, logged = 0.0, {"policy_loss": [], "kl": [], "old_deviation": [], "r_mean": []}
    for (idx, x0, r, tj, xt), v_old, v_ref in zip(inputs, v_olds, v_refs):
        v = policy.velocity(xt, tj, ro.cond, guidance=2.0, rows=idx)
        loss = (nft_loss(v, v_old, xt, x0, tj, r, a.beta, weighting) * a.adv_clip_max / a.beta).mean()
        kl = ((v - v_ref) ** 2).mean() if kl_beta > 0 else torch.tensor(0.0)
        total = total + (loss + kl_beta * kl) / (len(batches) * T)
        for key, val in (("policy_loss", loss), ("kl", kl), ("old_deviation", ((v - v_old) ** 2).mean()),
                         ("r_mean", r.mean())):
            logged[key].append(val.item())
    want = torch.autograd.grad(total, params)
    assert len(batches) == 3 and [len(b) for b in batches] == [3, 3, 2]
    assert seen["last"] == [False] * (3 * T - 1) + [True]  # processes sync on the step's last backward only
    assert any(g.abs().max() > 0 for g in want)
    for got, w in zip(seen["grads"][0], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-7)
    # the logged means over the forwards
    for key, vals in logged.items():
        assert seen["stats"][key] == pytest.approx(sum(vals) / len(vals), rel=1e-4, abs=1e-9), key
    assert (seen["stats"]["kl"] == 0.0) == (kl_beta == 0.0) and seen["stats"]["old_deviation"] > 0
    assert seen["stats"]["loss"] == pytest.approx(seen["stats"]["policy_loss"] + kl_beta * seen["stats"]["kl"], rel=1e-5)
    assert {"grad_norm", "lr", "first_deviation", "old_decay"} <= set(seen["stats"])  # the optimiser step's too
