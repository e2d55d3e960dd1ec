"""Where the detector's clutter rule (reward_models.shapes.detector.MAX_CLUTTER) comes from: the
distribution of `clutter` (share of off-background pixels outside every detected object) over
clean renders, images of the committed model(s), an untrained transformer, decoded random latents
and uniform noise; and how many noise images would pass single-object prompts without the rule.

    python -m benchmarks.shapes.clutter [--models flowalign/shapes/model OTHER_MODEL ...]
        [--images 96] [--out benchmarks/results/clutter.json]"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

from flowalign.evaluation.shapes import load_prompts
from flowalign.report import write_json
from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL
from reward_models.base import to_uint8_hwc
from reward_models.geneval_rules import evaluate
from reward_models.shapes import detector, render


def clutter_stats(images: list[np.ndarray], metas: list[dict]) -> dict:
    """Clutter quantiles of uint8 [H, W, 3] images, the share above MAX_CLUTTER, and the share of
    images judged correct for their prompt with the rule and without it."""
    values, with_rule, without = [], [], []
    for img, meta in zip(images, metas):
        found = detector.find_objects(img)
        c = detector.clutter(img, found)
        values.append(c)
        without.append(evaluate(found, meta).correct)
        with_rule.append(evaluate({} if c > detector.MAX_CLUTTER else found, meta).correct)
    v = np.array(values)
    return {"n": len(v), "mean": float(v.mean()), "p50": float(np.median(v)), "p95": float(np.quantile(v, 0.95)),
            "p99": float(np.quantile(v, 0.99)), "max": float(v.max()),
            "share_above_max_clutter": float((v > detector.MAX_CLUTTER).mean()),
            "correct_with_rule": float(np.mean(with_rule)), "correct_without_rule": float(np.mean(without))}


@torch.no_grad()
def model_images(path: str, metas: list[dict], seed: int, fresh_transformer: bool = False) -> list[np.ndarray]:
    """ODE samples of a pipeline folder (one per prompt) at its shipped defaults; with
    `fresh_transformer`, the same pipeline with a randomly initialised transformer."""
    from flowalign.policies import load_policy

    if fresh_transformer:
        from .untrained import main as untrained

        with tempfile.TemporaryDirectory() as tmp:
            untrained(["--out", os.path.join(tmp, "m"), "--model", path])
            return model_images(os.path.join(tmp, "m"), metas, seed)
    return list(to_uint8_hwc(load_policy(path).generate([m["prompt"] for m in metas], seed=seed)))


@torch.no_grad()
def decoded_noise(path: str, n: int, seed: int) -> list[np.ndarray]:
    """The committed VAE's decodings of standard normal latents."""
    from flowalign.policies import load_policy

    policy = load_policy(path)
    z = policy.initial_noise(n, policy.defaults.get("height"), policy.defaults.get("width"),
                             torch.Generator().manual_seed(seed))
    return list(to_uint8_hwc(policy.decode(z)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[DEFAULT_MODEL])
    ap.add_argument("--images", type=int, default=96, help="images per source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/clutter.json")
    args = ap.parse_args(argv)
    heldout = load_prompts("held-out")
    metas = [heldout[i % len(heldout)] for i in range(args.images)]
    singles = [m for m in heldout if m["tag"] == "single_object"]
    noise_metas = [singles[i % len(singles)] for i in range(args.images)]  # noise is judged on 1-object prompts
    size = 32
    sources = {"clean renders": ([render.render_prompt(m, args.seed * 10_000 + i, size)[0] for i, m in enumerate(metas)],
                                 metas)}
    for path in args.models:
        sources[f"model {os.path.relpath(path)}"] = (model_images(path, metas, args.seed), metas)
    first = args.models[0]
    sources["untrained transformer (single-object prompts)"] = (
        model_images(first, noise_metas, args.seed, fresh_transformer=True), noise_metas)
    sources["decoded random latents (single-object prompts)"] = (decoded_noise(first, args.images, args.seed), noise_metas)
    rng = np.random.default_rng(args.seed)
    sources["uniform noise (single-object prompts)"] = (
        [rng.integers(0, 256, (size, size, 3)).astype(np.uint8) for _ in range(args.images)], noise_metas)
    result = {"max_clutter": detector.MAX_CLUTTER, "stray_dist": detector.STRAY_DIST, "seed": args.seed,
              "sources": {name: clutter_stats(imgs, ms) for name, (imgs, ms) in sources.items()}}
    print(f"MAX_CLUTTER = {detector.MAX_CLUTTER}")
    print(f"{'source':48s} {'n':>4s} {'mean':>6s} {'p50':>6s} {'p95':>6s} {'max':>6s} {'>max':>6s} "
          f"{'correct':>8s} {'no rule':>8s}")
    for name, s in result["sources"].items():
        print(f"{name:48s} {s['n']:4d} {s['mean']:6.3f} {s['p50']:6.3f} {s['p95']:6.3f} {s['max']:6.3f} "
              f"{s['share_above_max_clutter']:6.2f} {s['correct_with_rule']:8.2f} {s['correct_without_rule']:8.2f}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
