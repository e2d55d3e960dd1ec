"""Flow-GRPO's policy gradient is an unbiased estimate of the gradient of the expected reward.

On a toy flow policy v(x) = W x + b in two dimensions, sampled with the Flow-GRPO SDE on every
step, the on-policy gradient of the clipped loss summed over the steps, -grad sum_k loss_k =
mean_i A_i sum_k grad log p(x_{k+1} | x_k) (A = R - mean R), must equal the reparameterised
gradient grad E[R] computed by autograd through the sampler with its noise held fixed, up to
Monte Carlo error and the 1/D of the per-element mean in the log-density (Flow-GRPO's convention)."""

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
