"""Does an algorithm make the shapes model better? Train the committed model for a fixed
wall-clock budget on CPU and report the held-out GenEval-shapes score before and after.

    python -m benchmarks.shapes.learn --algo flow_grpo --minutes 20 [key=value ...]

The budget counts training time only; held-out evaluations (every --eval-every minutes, with
--curve-images images per prompt; the first and last with --images-per-prompt) run between
iterations. Writes OUT/learn.json, OUT/curve.png and the run folder (metrics, samples, LoRA)."""

from __future__ import annotations

import argparse
import json
import os
import time

from flowalign.config import load_config
from flowalign.trainer import Trainer

from .evaluate import evaluate_policy, load_prompts

CONFIGS = {"flow_grpo": "configs/shapes/flow_grpo.yaml"}


def plot(curve: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["train_minutes"] for c in curve], [c["overall"] for c in curve], "o-", label="held-out overall")
    ax.plot([c["train_minutes"] for c in curve], [c["mean_partial"] for c in curve], "s--", label="held-out partial")
    ax.set_xlabel("training time (min, 2 CPU cores)")
    ax.set_ylabel("GenEval-shapes score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="flow_grpo", choices=sorted(CONFIGS))
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes of training between curve points")
    ap.add_argument("--images-per-prompt", type=int, default=4, help="for the first and last evaluation")
    ap.add_argument("--curve-images", type=int, default=2, help="images per prompt of intermediate points")
    ap.add_argument("--out", default=None, help="default: runs/learn_<algo>")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)
    out = args.out or f"runs/learn_{args.algo}"
    cfg = load_config(CONFIGS[args.algo], [f"run.output_dir={out}", "run.max_iterations=100000",
                                           "run.checkpoint_every=100000", "run.sample_every=0", *args.overrides])
    trainer = Trainer(cfg)
    os.makedirs(out, exist_ok=True)
    metas = load_prompts("held-out")

    def evaluate(n: int, minutes: float) -> dict:
        s = evaluate_policy(trainer.policy, metas, images_per_prompt=n, seed=1234, progress=False,
                            out=os.path.join(out, f"eval_{minutes:05.1f}min") if n == args.images_per_prompt else None)
        row = {"train_minutes": minutes, "iteration": trainer.iteration, "overall": s["overall"],
               "mean_partial": s["mean_partial"], "tasks": s["tasks"], "images_per_prompt": n}
        print(f"[{minutes:5.1f} min, iteration {trainer.iteration}] held-out overall {s['overall']:.3f} "
              f"(partial {s['mean_partial']:.3f}) tasks {json.dumps({k: round(v, 2) for k, v in s['tasks'].items()})}",
              flush=True)
        return row

    before = evaluate(args.images_per_prompt, 0.0)
    curve = [before] if args.curve_images == args.images_per_prompt else [evaluate(args.curve_images, 0.0)]
    trained, next_eval = 0.0, args.eval_every * 60
    while trained < args.minutes * 60:
        t0 = time.time()
        metrics = trainer.iterate()
        trained += time.time() - t0
        trainer.log(metrics)
        print(f"iteration {trainer.iteration}: reward {metrics['reward_mean']:.3f} kl {metrics.get('kl', 0):.2e} "
              f"clip {metrics.get('clip_fraction', 0):.2f} ({trained / 60:.1f} min)", flush=True)
        if trained >= next_eval and trained < args.minutes * 60:
            curve.append(evaluate(args.curve_images, trained / 60))
            next_eval += args.eval_every * 60
    trainer.save_checkpoint()
    final_lora = trainer.save_final()
    after = evaluate(args.images_per_prompt, trained / 60)
    if args.curve_images != args.images_per_prompt:
        curve.append(evaluate(args.curve_images, trained / 60))
    else:
        curve.append(after)
    res = {"algo": args.algo, "budget_minutes": args.minutes, "trained_minutes": trained / 60,
           "iterations": trainer.iteration, "before": before, "after": after,
           "gain_overall": after["overall"] - before["overall"], "curve": curve, "final_weights": final_lora,
           "overrides": args.overrides}
    with open(os.path.join(out, "learn.json"), "w") as f:
        json.dump(res, f, indent=2)
    plot(curve, os.path.join(out, "curve.png"), f"{args.algo} on the shapes model")
    print(f"{args.algo}: held-out overall {before['overall']:.3f} -> {after['overall']:.3f} "
          f"({res['gain_overall']:+.3f}) in {trained / 60:.1f} min, {trainer.iteration} iterations; "
          f"{out}/learn.json, {out}/curve.png")
    return res


if __name__ == "__main__":
    main()
