"""Flow-GRPO's policy gradient is an unbiased estimate of the gradient of the expected reward.

On a toy flow policy v(x) = W x + b in two dimensions, sampled with the Flow-GRPO SDE on every
step, the on-policy gradient of the clipped loss summed over the steps, -grad sum_k loss_k =
mean_i A_i sum_k grad log p(x_{k+1} | x_k) (A = R - mean R), must equal the reparameterised
gradient grad E[R] computed by autograd through the sampler with its noise held fixed, up to
Monte Carlo error and the 1/D of the per-element mean in the log-density (Flow-GRPO's convention)."""

import pytest
import torch

import samplers
from flowalign.losses import grpo_clipped_loss

K, D, M, CHUNKS = 4, 2, 40_000, 10
TARGET = torch.tensor([1.5, -0.5], dtype=torch.float64)


def reward(x):
    return -((x - TARGET) ** 2).sum(dim=1) + torch.sin(3 * x[:, 0])


def test_policy_gradient_matches_the_reparameterised_gradient():
    g = torch.Generator().manual_seed(0)
    W = torch.tensor([[-0.3, 0.2], [0.1, 0.4]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    params = [W, b]
    sigmas = samplers.linear_sigmas(K)

    def velocity(x, sigma, rows):
        return x @ W.T + b

    def flat_grad(value):
        return torch.cat([t.flatten() for t in torch.autograd.grad(value, params)])

    reparam, score = [], []
    for _ in range(CHUNKS):
        x0 = torch.randn(M, D, generator=g, dtype=torch.float64)
        noise = torch.randn(M, K, D, generator=g, dtype=torch.float64)
        traj = samplers.rollout(velocity, x0, sigmas, "flow_sde", noise_level=0.7, step_noise=noise)
        reparam.append(flat_grad(reward(traj.final).mean()))

        lat = traj.latents.detach()
        r = reward(lat[:, -1])
        adv = r - r.mean()
        loss = 0.0
        for k in range(K):
            x = lat[:, k]
            out = samplers.flow_sde_step(x, velocity(x, None, None), float(sigmas[k]), float(sigmas[k + 1]),
                                         noise_level=0.7, prev_sample=lat[:, k + 1])
            assert torch.allclose(out.log_prob, traj.log_probs[:, k].detach())  # on policy: ratio 1
            loss = loss + grpo_clipped_loss(out.log_prob, out.log_prob.detach(), adv, 1e-4).loss
        score.append(-flat_grad(loss) * D)

    rep, sc = torch.stack(reparam), torch.stack(score)
    se = (sc.var(0) / CHUNKS + rep.var(0) / CHUNKS).sqrt()
    true = rep.mean(0)
    assert (true.abs() > 8 * se).sum() >= 3, "the toy must have a gradient well above the estimator's noise"
    z = (sc.mean(0) - true) / se
    assert z.abs().max() < 4.5, f"score-function gradient {sc.mean(0)} differs from {true} (z = {z})"
    # and the policy gradient points uphill: a small step along it raises the expected reward
    assert torch.dot(sc.mean(0), true) > 0


@pytest.mark.parametrize("selection,kl_beta,kl_form,drop", [("first", 0.05, "flow_grpo", True),
                                                              ("random", 0.0, "flow_grpo", False),
                                                              ("first", 0.05, "exact", False)])
def test_policy_step_gradients_equal_a_hand_reconstruction(selection, kl_beta, kl_form, drop, tiny_sd3_dir, tmp_path,
                                                           prompts_file):
    """Every optimiser step's gradient of Flow-GRPO's policy step on the tiny SD3, rebuilt from the
    rollout: the kept samples (Flow-GRPO's zero-advantage rule or all) in the step generator's order,
    split into the same number of minibatches (or train_batch_size each); per minibatch the first
    int(n f) SDE steps or a random round(n f) of them; per step the transition's log-prob under the
    current weights with the sampler's guidance and noise level, the clipped ratio against the
    rollout's log-prob with each sample's advantage, plus kl_beta x Flow-GRPO's KL to the reference,
    over the number of steps trained. Minibatches of 3, 3 and 2 samples, one gradient-sync flag each."""
    from flowalign.algorithms.flow_grpo import zero_advantage_mask
    from flowalign.config import load_config
    from flowalign.losses import grpo_objective
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides
    from tests.helpers import generator_at, spy_on_policy_step

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "sampler.num_steps": 4, "algorithm.train_batch_size": 3, "algorithm.timestep_fraction": 0.7,
        "algorithm.kl_beta": kl_beta, "algorithm.clip_range": 0.05, "algorithm.timestep_selection": selection,
        "algorithm.drop_zero_advantage": drop, "algorithm.kl_form": kl_form, "sampler.noise_level": 0.5, "run.max_iterations": 1,
        "run.sample_every": 0}))
    t = Trainer(cfg)
    seen = spy_on_policy_step(t)
    t.iterate()
    a, algo, policy, params = cfg.algorithm, t.algo, t.policy, t.updater.params
    ro, adv = seen["ro"], seen["adv"].local
    traj, kinds = ro.traj, ro.kinds or algo.kinds
    gen = generator_at(seen["gen"])
    n = len(ro.prompts)
    batches = -(-n // a.train_batch_size)
    keep = zero_advantage_mask(adv.cpu(), batches, gen) if drop else torch.ones(n, dtype=torch.bool)
    kept = torch.nonzero(keep).flatten()
    train = [k for k, kind in enumerate(kinds) if kind != "ode"]
    S = max(1, int(len(train) * 0.7)) if selection == "first" else max(1, round(len(train) * 0.7))
    assert len(train) == 4 and S in (2, 3) and adv.abs().min() > 0
    perm = kept[torch.randperm(kept.numel(), generator=gen)]
    chunks = perm.tensor_split(batches) if drop else perm.split(a.train_batch_size)
    assert [len(c) for c in chunks] == [3, 3, 2] and len(seen["grads"]) == 3
    assert seen["last"] == ([False] * (S - 1) + [True]) * 3
    assert abs(seen["stats"]["first_ratio"] - 1) < 1e-5 and seen["stats"]["samples_trained"] == kept.numel()
    assert float(traj.noise_level[0]) == 0.5
    losses = []
    for idx, snapshot, got in zip(chunks, seen["params"], seen["grads"]):
        steps = train[:S] if selection == "first" else \
            [train[i] for i in torch.randperm(len(train), generator=gen)[:S].tolist()]
        with torch.no_grad():
            for p, w in zip(params, snapshot):
                p.copy_(w)
        total = 0.0
        for k in steps:
            x, x_next = traj.latents[idx, k], traj.latents[idx, k + 1]
            s, sn, level = float(traj.sigmas[k]), float(traj.sigmas[k + 1]), float(traj.noise_level[k])
            sig = torch.full((len(idx),), s)
            step = samplers.step_fn(kinds[k])
            out = step(x, policy.velocity(x, sig, ro.cond, guidance=2.0, rows=idx), s, sn, noise_level=level,
                       prev_sample=x_next)
            kl = None
            if kl_beta > 0:
                with torch.no_grad(), policy.reference():
                    ref = step(x, policy.velocity(x, sig, ro.cond, guidance=2.0, rows=idx), s, sn,
                               noise_level=level, prev_sample=x_next).mean
                kl = samplers.gaussian_mean_kl(out.mean, ref, out.std) if kl_form == "exact" else \
                    samplers.flow_grpo_kl(out.mean, ref, out.std, samplers.transition_noise_scale(kinds[k], s, sn))
            loss, _ = grpo_objective(out.log_prob, traj.log_probs[idx, k], adv[idx], 0.05, kl, kl_beta)
            total = total + loss / S
            losses.append(loss.item())
        want = torch.autograd.grad(total, params)
        assert any(w.abs().max() > 0 for w in want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-8)
    # the logged statistics are means over the transitions (and over the optimiser steps for theirs)
    assert seen["stats"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert {"ratio", "clip_fraction", "kl", "policy_loss", "log_prob", "grad_norm", "lr"} <= set(seen["stats"])
    assert (seen["stats"]["kl"] == 0.0) == (kl_beta == 0.0)  # no reference pass without a KL weight
