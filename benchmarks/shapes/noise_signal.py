"""How much of the reward does one SDE step's noise decide? The quantity behind Flow-GRPO's
gradient on the shapes testbed, measured directly.

For a training prompt and one fixed initial noise, the committed model runs its sampler as an ODE
except at step k, where the Flow-GRPO SDE step draws M independent noises eps_i; each is finished
by the ODE and scored with the reward R_i (--reward, default the shapes GenEval partial score). With A the standardised rewards, the
policy gradient's signal at step k is carried by E[A eps] (a vector of the latent's D
dimensions), and
    c2 = |E[A eps]|^2,  estimated without bias as |mean_i A_i eps_i|^2 - D / M,
is the share of the reward's spread that is linear in that step's noise (0 <= c2 <= 1). A batch of
N such samples gives a gradient whose signal energy is about c2 against noise D / N, so about
D / c2 images are needed for one update whose signal equals its noise. The report also gives the
within-state reward spread (0 when the outcome is already fixed by the initial noise).

    python -m benchmarks.shapes.noise_signal [--samples 512] [--prompts 8] [--steps 0,1,2,4,7]
        [--noise-level 0.7] [--reward shapes_geneval|shapes_soft|...] [--out benchmarks/results/noise_signal.json]"""

from __future__ import annotations

import argparse
import math
import time

import torch

import samplers
from flowalign.algorithms.base import decode_rewards
from flowalign.evaluation.shapes import load_prompts
from flowalign.report import write_json
from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL
from reward_models import build_reward


def linear_share(rewards: torch.Tensor, noise: torch.Tensor) -> float:
    """Unbiased |E[A eps]|^2 of rewards [M] and standard normal noises [M, D] (A = standardised
    rewards); 0 when the rewards do not vary."""
    r = rewards.double()
    if r.std() == 0:
        return 0.0
    a = (r - r.mean()) / r.std()
    e = noise.reshape(noise.shape[0], -1).double()
    return (a[:, None] * e).mean(0).pow(2).sum().item() - e.shape[1] / e.shape[0]


@torch.no_grad()
def step_outcomes(policy, meta: dict, k: int, samples: int, noise_level: float, num_steps: int, guidance: float,
                  generator: torch.Generator, reward, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards [M] and step-k noises [M, *S] of M samples sharing one initial noise, ODE everywhere but step k."""
    sigmas = policy.sigmas(num_steps)
    x = policy.initial_noise(1, generator=generator)
    cond1 = policy.encode([meta["prompt"]])
    if k > 0:  # the shared deterministic prefix, once
        x = samplers.rollout(policy.velocity_fn(cond1, guidance=guidance), x, sigmas[:k + 1], "ode").final
    rest = sigmas[k:]
    kinds = ["flow_sde"] + ["ode"] * (rest.numel() - 2)
    eps = torch.randn(samples, *x.shape[1:], generator=generator)
    rewards = []
    for i in range(0, samples, chunk):
        e = eps[i:i + chunk]
        cond = policy.encode([meta["prompt"]] * e.shape[0])
        step_noise = torch.zeros(e.shape[0], len(kinds), *x.shape[1:])
        step_noise[:, 0] = e
        traj = samplers.rollout(policy.velocity_fn(cond, guidance=guidance), x.expand(e.shape[0], *x.shape[1:]),
                                rest, kinds, noise_level=noise_level, step_noise=step_noise)
        rewards.append(decode_rewards(policy, reward, traj.final, [meta["prompt"]] * e.shape[0], [meta] * e.shape[0]))
    return torch.cat(rewards), eps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--samples", type=int, default=512, help="noises per (prompt, step)")
    ap.add_argument("--prompts", type=int, default=8, help="training prompts, drawn at random")
    ap.add_argument("--steps", default="0,1,2,4,7")
    ap.add_argument("--noise-level", type=float, default=0.7)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--reward", default="shapes_geneval",
                    help="a registry reward with its default arguments (shapes_geneval: the partial score), e.g. shapes_soft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/noise_signal.json")
    args = ap.parse_args(argv)
    if args.samples < 2:
        raise SystemExit(f"--samples {args.samples}: use at least 2 noises per state.")
    steps = [int(s) for s in args.steps.split(",")]
    if any(not 0 <= k < args.num_steps for k in steps):
        raise SystemExit(f"--steps {args.steps}: every step must lie in [0, {args.num_steps - 1}].")
    from flowalign.policies import load_policy

    policy = load_policy(args.model)
    reward = build_reward(args.reward)
    rows = load_prompts("train")
    g = torch.Generator().manual_seed(args.seed)
    metas = [rows[i] for i in torch.randperm(len(rows), generator=g)[:args.prompts].tolist()]
    D = math.prod(policy.latent_shape())
    out = {"reward": args.reward, "samples": args.samples, "noise_level": args.noise_level, "num_steps": args.num_steps,
           "latent_dims": D, "estimator_sd": (2 * D) ** 0.5 / args.samples, "steps": []}
    t0 = time.time()
    for k in steps:
        per = []
        for j, meta in enumerate(metas):
            gen = torch.Generator().manual_seed(args.seed * 1000 + j)  # the same initial noise at every step
            r, eps = step_outcomes(policy, meta, k, args.samples, args.noise_level, args.num_steps, args.guidance, gen,
                                    reward)
            per.append({"tag": meta["tag"], "prompt": meta["prompt"], "reward_mean": r.mean().item(),
                        "reward_std": r.std().item(), "c2": linear_share(r, eps)})
        c2 = sum(p["c2"] for p in per) / len(per)
        row = {"step": k, "sigma": float(policy.sigmas(args.num_steps)[k]), "mean_c2": c2,
               "mean_reward_std": sum(p["reward_std"] for p in per) / len(per),
               "decided_share": sum(p["reward_std"] == 0 for p in per) / len(per),
               "images_per_unit_snr": D / c2 if c2 > 0 else None, "prompts": per}
        out["steps"].append(row)
        print(f"step {k} (sigma {row['sigma']:.2f}): mean c2 {c2:+.3f}, reward std {row['mean_reward_std']:.3f}, "
              f"outcome fixed for {row['decided_share']:.0%} of states, ~{row['images_per_unit_snr'] or float('inf'):.0f} "
              f"images per unit-SNR update  [{time.time() - t0:.0f} s]", flush=True)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
