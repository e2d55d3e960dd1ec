"""Do policy gradients from independent batches point the same way? For a training config, compute
the Flow-GRPO policy gradient (all SDE steps, no KL) of B independent batches of rollouts of the
committed shapes model and report the mean pairwise cosine between them: with prompts drawn afresh
per batch ("fresh prompts", what training does) and with every batch on the same prompts but new
noise ("same prompts"). The expected cosine of two batch gradients is |signal|^2 / (|signal|^2 +
|noise|^2) per batch, so a mean near 0 says how many batches must be averaged before an update
points anywhere: the quantity that limits how fast RL can move the model on this testbed.

    python -m benchmarks.shapes.gradient_agreement [--batches 8]
        [--variant NAME=key=value;key=value ...] [--out benchmarks/results/gradient_agreement.json]

Default variants: the shapes Flow-GRPO config with independent and with shared initial noise, at
noise level 0.7 and 1.2, the dense-caption config, and SDE windows on the first 4 or 2 steps."""

from __future__ import annotations

import argparse
import itertools

import torch

from flowalign.config import load_config
from flowalign.data import iteration_prompts
from flowalign.report import write_json
from flowalign.trainer import Trainer

from .gradient_snr import gradient, scored_rollout
from .learn import CONFIGS

FLOW_GRPO, DENSE = CONFIGS["flow_grpo"], "configs/shapes/flow_grpo_dense.yaml"
DEFAULT_VARIANTS = {
    "independent_noise": (FLOW_GRPO, ["algorithm.shared_noise=false"]),
    "shared_noise": (FLOW_GRPO, ["algorithm.shared_noise=true"]),
    "independent_noise_level_1.2": (FLOW_GRPO, ["algorithm.shared_noise=false", "sampler.noise_level=1.2"]),
    "shared_noise_level_1.2": (FLOW_GRPO, ["algorithm.shared_noise=true", "sampler.noise_level=1.2"]),
    "dense_captions": (DENSE, []),
    "window_0_4": (FLOW_GRPO, ["sampler.sde_window=[0,4]"]),
    "window_0_4_shared": (FLOW_GRPO, ["sampler.sde_window=[0,4]", "algorithm.shared_noise=true"]),
    "window_0_2_shared": (FLOW_GRPO, ["sampler.sde_window=[0,2]", "algorithm.shared_noise=true"]),
}


def batch_gradient(t: Trainer, metas: list[dict], iteration: int, seed: int) -> tuple[torch.Tensor, float]:
    """The policy gradient of one batch of rollouts of `metas` (x group size), summed over all SDE
    steps, flattened; and the share of samples with a non-zero advantage."""
    ro, adv = scored_rollout(t, metas, torch.Generator().manual_seed(seed), iteration)
    return gradient(t, ro, adv, t.algo.train_steps), float((adv != 0).float().mean())


def mean_cosine(grads: list[torch.Tensor]) -> tuple[float, float]:
    """Mean pairwise cosine and its standard error (pairs treated as independent: a rough error)."""
    cos = torch.tensor([torch.nn.functional.cosine_similarity(a, b, dim=0).item()
                        for a, b in itertools.combinations(grads, 2)])
    return cos.mean().item(), (cos.std() / len(cos) ** 0.5).item()


def measure(config: str, overrides: list[str], batches: int) -> dict:
    cfg = load_config(config, ["run.output_dir=runs/gradient_agreement", "run.progress=false", "algorithm.kl_beta=0",
                               "algorithm.timestep_fraction=1.0", *overrides])
    t = Trainer(cfg)
    n = cfg.algorithm.prompts_per_iteration
    out = {"config": config, "overrides": overrides, "batches": batches,
           "samples_per_batch": n * cfg.algorithm.group_size}
    for mode in ("fresh_prompts", "same_prompts"):
        grads, nonzero = [], []
        for i in range(batches):
            metas = iteration_prompts(t.rows, 1000 + (i if mode == "fresh_prompts" else 0), n, cfg.run.seed)
            g, nz = batch_gradient(t, metas, 1000 + i, i)
            grads.append(g)
            nonzero.append(nz)
        m, se = mean_cosine(grads)
        out[mode] = {"mean_cosine": m, "stderr": se, "nonzero_advantage_share": sum(nonzero) / len(nonzero)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME=key=value;key=value on configs/shapes/flow_grpo.yaml (repeatable); default: the eight "
                         "built-in variants")
    ap.add_argument("--out", default="benchmarks/results/gradient_agreement.json")
    args = ap.parse_args(argv)
    if args.batches < 2:
        ap.error(f"--batches {args.batches}: need at least 2 batches to compare.")
    variants = dict(DEFAULT_VARIANTS)
    if args.variant:
        variants = {}
        for v in args.variant:
            name, _, spec = v.partition("=")
            if not name or not spec:
                ap.error(f"--variant {v!r} must be NAME=key=value[;key=value]")
            variants[name] = (FLOW_GRPO, spec.split(";"))
    results = {}
    for name, (config, overrides) in variants.items():
        results[name] = measure(config, overrides, args.batches)
        r = results[name]
        print(f"{name}: fresh prompts cos {r['fresh_prompts']['mean_cosine']:+.4f} +- {r['fresh_prompts']['stderr']:.4f}, "
              f"same prompts cos {r['same_prompts']['mean_cosine']:+.4f} +- {r['same_prompts']['stderr']:.4f} "
              f"({r['samples_per_batch']} samples per batch)", flush=True)
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
