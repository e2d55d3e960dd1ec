"""How much reward signal is in one batch's policy gradient? A diagnostic for the learning
benchmarks: on one batch of rollouts of the committed shapes model, compare, per trained step, the
norm of the policy gradient computed with the true advantages against the same gradient with the
advantages shuffled across samples (pure noise with the same magnitudes). A ratio near 1 means the
batch's gradient is dominated by sampling noise, so many iterations are needed before the signal
adds up.

    python -m benchmarks.shapes.gradient_snr [--algo flow_grpo,dense_grpo] [--prompts 8] [--shuffles 4]

Writes benchmarks/results/gradient_snr.json."""

from __future__ import annotations

import argparse

import torch

from flowalign.algorithms.base import LocalComm
from flowalign.config import load_config
from flowalign.data import iteration_prompts
from flowalign.report import write_json
from flowalign.trainer import Trainer

from .learn import CONFIGS


def scored_rollout(trainer, metas: list[dict], generator: torch.Generator, iteration: int = 0):
    """One single-process batch of `metas` (x group size): rollouts, rewards and advantages -> (ro,
    local advantages)."""
    mine, gids = trainer.algo.assign(metas, 0, 1)
    ro = trainer.algo.rollout(trainer.policy, mine, gids, generator, trainer.height, trainer.width,
                              seed=trainer.cfg.run.seed, iteration=iteration)
    with torch.no_grad():
        r = trainer.algo.score(trainer.policy, ro, trainer.reward)
    return ro, trainer.algo.advantages(ro, r, LocalComm, iteration=iteration).local


def gradient(trainer, ro, adv, steps) -> torch.Tensor:
    """The policy gradient of the batch's transitions at `steps` (summed), flattened over the trainable weights."""
    for p in trainer.params:
        p.grad = None
    for k in steps:
        loss, _ = trainer.algo.step_loss(trainer.policy, ro, torch.arange(len(ro.prompts)), k, adv)
        loss.backward()
    return torch.cat([p.grad.flatten() for p in trainer.params]).clone()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="flow_grpo,dense_grpo")
    ap.add_argument("--prompts", type=int, default=8, help="prompts of the batch (x group size 8 samples)")
    ap.add_argument("--shuffles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/gradient_snr.json")
    args = ap.parse_args(argv)
    results = {}
    for algo in args.algo.split(","):
        if algo not in ("flow_grpo", "dense_grpo"):
            raise SystemExit(f"--algo {algo!r}: this diagnostic covers the per-sample algorithms flow_grpo, dense_grpo.")
        cfg = load_config(CONFIGS[algo], ["run.output_dir=runs/gradient_snr", "run.progress=false",
                                         f"algorithm.prompts_per_iteration={args.prompts}", "algorithm.kl_beta=0"])
        t = Trainer(cfg)
        gen = torch.Generator().manual_seed(args.seed)
        ro, adv = scored_rollout(t, iteration_prompts(t.rows, 0, args.prompts, args.seed), gen)
        rows = []
        for k in t.algo.train_steps:
            true = gradient(t, ro, adv, [k]).norm().item()
            shuf = [gradient(t, ro, adv[torch.randperm(adv.shape[0], generator=gen)], [k]).norm().item()
                    for _ in range(args.shuffles)]
            mean_shuf = sum(shuf) / len(shuf)
            rows.append({"step": k, "true_norm": true, "shuffled_norm": mean_shuf,
                         "ratio": true / mean_shuf if mean_shuf else None})
            print(f"{algo} step {k}: |g| {true:.4g}, shuffled {mean_shuf:.4g}, ratio {rows[-1]['ratio']}", flush=True)
        ratios = [x["ratio"] for x in rows if x["ratio"] is not None]
        results[algo] = {"samples": len(ro.prompts), "steps": rows, "mean_ratio": sum(ratios) / len(ratios)}
        print(f"{algo}: mean ratio {results[algo]['mean_ratio']:.3f} over {len(ratios)} steps, {len(ro.prompts)} samples")
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
