"""Does an algorithm make the shapes model better, and how fast? Train the committed model with
each algorithm for the same wall-clock budget on CPU (same seed, prompts and evaluation) and
report the held-out GenEval-shapes score before and after.

    python -m benchmarks.shapes.learn --algo flow_grpo --minutes 20 [key=value ...]
    python -m benchmarks.shapes.learn --algo flow_grpo,dense_grpo,branch_grpo,branch_grpo_early,nft --minutes 20 --seeds 2

The budget counts training time only; held-out evaluations (every --eval-every minutes with
--curve-images images per prompt; the first and last with --images-per-prompt) run between
iterations. The base model is evaluated once (it is the same for every algorithm). The first and
last evaluations use the same seeds, so the gain is also reported as a paired difference with its
standard error over prompts (gain_paired, gain_stderr); a fresh seed is the check on a gain picked
out of several runs (`benchmarks.shapes.paired`). The training prompts are scored before and after
too (--train-images-per-prompt, paired): a gain there without one on held-out prompts is learning
that does not transfer to unseen prompts. The final weights are then re-evaluated against the base
on a fresh seed (--fresh-seed, --fresh-images per held-out prompt, paired): the row's claim. With
--seeds N every algorithm trains N times (run.seed 0..N-1) and the table adds each algorithm's mean
fresh-seed gain over its runs with the standard error of the prompts, of the spread between
seeds, and both combined (`over_seeds`); the runs go seed by seed (every algorithm's seed 0 first). Writes
OUT/learn.json, OUT/table.md, OUT/curve.png (score against training time and against NFE) after
every run and one run folder per algorithm (OUT/ALGO[/seedS]: metrics, lora/, the evaluations).

A scoreboard can outlast one sitting: each finished run's result is kept in
OUT/completed/ALGO[_seedS].json, and a later call with the same --out and settings reuses those
runs instead of training them again (other settings, or a config file edited since, are an error,
so nothing is mixed). A run stopped before it finished is trained again from the base; its folder
is moved to OUT/ALGO[/seedS].unfinished."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

from omegaconf import OmegaConf

from flowalign.config import load_config
from flowalign.evaluation.shapes import evaluate_policy, load_prompts
from flowalign.trainer import Trainer

from .paired import paired, read_results

CONFIGS = {
    "flow_grpo": "configs/shapes/flow_grpo.yaml",
    "dense_grpo": "configs/shapes/dense_grpo.yaml",
    "branch_grpo": "configs/shapes/branch_grpo.yaml",
    "branch_grpo_mix": "configs/shapes/branch_grpo_mix.yaml",
    "branch_grpo_early": "configs/shapes/branch_grpo_early.yaml",
    "branch_grpo_pruned": "configs/shapes/branch_grpo_pruned.yaml",
    "branch_grpo_early_pruned": "configs/shapes/branch_grpo_early_pruned.yaml",
    "prompt_echo_grpo": "configs/shapes/prompt_echo_grpo.yaml",
    "prompt_echo_grpo_color_attr": "configs/shapes/prompt_echo_grpo_color_attr.yaml",
    "adv_grpo": "configs/shapes/adv_grpo.yaml",
    "adv_grpo_pickscore": "configs/shapes/adv_grpo_pickscore.yaml",
    "nft": "configs/shapes/nft.yaml",
}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for algo, res in results.items():
        c = res["curve"]
        axes[0].plot([p["train_minutes"] for p in c], [p["overall"] for p in c], "o-", label=algo)
        axes[1].plot([p["nfe"] / 1e3 for p in c], [p["overall"] for p in c], "o-", label=algo)
    axes[0].set_xlabel("training time (min, 2 CPU cores)")
    axes[1].set_xlabel("transformer evaluations (thousands of samples, CFG included)")
    for ax in axes:
        ax.set_ylabel("held-out GenEval-shapes overall")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("shapes model: held-out score during training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict, base: str | None) -> str:
    ref = results.get(base) if base else None
    lines = ["| run | iterations | s / iteration | relative to flow_grpo | NFE / iteration | before | after | "
             "paired gain +- s.e. | training prompts: paired gain +- s.e. | fresh seed, held-out: paired gain +- s.e. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for algo, r in results.items():
        rel = f"{r['seconds_per_iteration'] / ref['seconds_per_iteration']:.2f}" if ref else "-"
        t, f = r.get("train_prompts"), r.get("fresh_seed")
        train = f"{t['gain_paired']:+.3f} +- {t['gain_stderr']:.3f}" if t else "-"
        fresh = f"{f['gain_paired']:+.3f} +- {f['gain_stderr']:.3f}" if f else "-"
        lines.append(f"| {algo} | {r['iterations']} | {r['seconds_per_iteration']:.2f} | {rel} | "
                     f"{r['nfe_per_iteration']:.0f} | {r['before']['overall']:.3f} | {r['after']['overall']:.3f} | "
                     f"{r['gain_paired']:+.3f} +- {r['gain_stderr']:.3f} | {train} | {fresh} |")
    return "\n".join(lines) + "\n"


def over_seeds(results: dict, algos: list[str]) -> dict:
    """Per algorithm, the fresh-seed gain averaged over its training seeds and three standard errors
    of that mean: `gain_stderr`, the evaluation's prompt noise alone (independent runs:
    sqrt(sum s.e.^2) / n); `seed_stderr`, the spread of the runs' gains (sample std / sqrt(n), None
    for one run), which also holds what the training seed changes; and `combined_stderr`,
    sqrt(gain_stderr^2 + seed_stderr^2), the conservative one the scoreboard's claims use (the
    spread already holds part of the prompt noise, so this errs on the wide side)."""
    out = {}
    for algo in algos:
        runs = [r["fresh_seed"] for key, r in results.items() if key.split("/")[0] == algo and r.get("fresh_seed")]
        if runs:
            n = len(runs)
            gains = [f["gain_paired"] for f in runs]
            mean = sum(gains) / n
            prompt_se = sum(f["gain_stderr"] ** 2 for f in runs) ** 0.5 / n
            seed_se = statistics.stdev(gains) / n ** 0.5 if n > 1 else None
            out[algo] = {"runs": n, "gain_paired": mean, "gain_stderr": prompt_se, "seed_stderr": seed_se,
                         "combined_stderr": None if seed_se is None else (prompt_se ** 2 + seed_se ** 2) ** 0.5}
    return out


def _se(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


SETTINGS = ("minutes", "eval_every", "images_per_prompt", "curve_images", "train_images_per_prompt", "fresh_images",
            "fresh_seed", "overrides")


def settings_of(args) -> dict:
    """What a run's result depends on besides its algorithm and seed."""
    return {k: getattr(args, k) for k in SETTINGS}


def run_config(algo: str, args, seed: int | None):
    """The full configuration of one run of the scoreboard."""
    out = os.path.join(args.out, algo) if seed is None else os.path.join(args.out, algo, f"seed{seed}")
    return load_config(CONFIGS[algo], [f"run.output_dir={out}", "run.max_iterations=100000",
                                       "run.checkpoint_every=100000", "run.sample_every=0", "run.progress=false",
                                       *([f"run.seed={seed}"] if seed is not None else []), *args.overrides])


def completed_run(path: str, settings: dict, config: dict) -> dict | None:
    """A finished run's result kept at `path`, or None; an error when it was made with other settings
    or another configuration (a config file edited since)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    if res.get("resolved_config") != config:
        old = res.get("resolved_config") or {}
        diff = sorted(f"{s}.{k}" for s in set(old) | set(config) for k in
                      set(old.get(s) or {}) | set(config.get(s) or {})
                      if (old.get(s) or {}).get(k) != (config.get(s) or {}).get(k))
        raise SystemExit(f"{path} was trained with another configuration ({', '.join(diff) or 'none recorded'} "
                         f"differ); restore {res.get('config')} as it was, or pass another --out to start a new "
                         f"scoreboard")
    if res.get("settings") != settings:
        diff = sorted(k for k in settings if res.get("settings", {}).get(k) != settings[k])
        raise SystemExit(f"{path} was made with other settings ({', '.join(diff)}: "
                         f"{ {k: res.get('settings', {}).get(k) for k in diff} }); pass the same settings to "
                         f"continue that scoreboard, or another --out to start a new one")
    return res


def set_aside_unfinished(out: str) -> None:
    """Move the folder of a run that an earlier sitting began but did not finish (it has no kept
    result, and a wall-clock budget cannot be resumed) to OUT.unfinished, replacing an older one
    there, so the run starts again from the base and nothing is deleted unseen."""
    if os.path.isdir(out) and os.listdir(out):
        aside = out.rstrip("/") + ".unfinished"
        print(f"[{out}] an unfinished run from an earlier sitting, moved to {aside}; training it again", flush=True)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)


def run_one(algo: str, args, metas, before_cache: dict, cfg) -> dict:
    """Train `algo` with `cfg` (from run_config) for the budget and evaluate it."""
    out = cfg.run.output_dir
    set_aside_unfinished(out)
    trainer = Trainer(cfg)
    os.makedirs(out, exist_ok=True)
    state = {"nfe": 0}

    def score(rows: list[dict], n: int, seed: int, minutes: float, folder: str | None, key: tuple) -> tuple:
        """(summary, per-image results or None) of `rows` at `n` images per prompt. The untouched base
        model (minutes 0) is scored once for all algorithms."""
        if minutes == 0 and key in before_cache:
            return before_cache[key]
        with trainer.sampling_weights():  # the EMA weights when EMA is on, as in the saved LoRA
            s = evaluate_policy(trainer.policy, rows, images_per_prompt=n, seed=seed, progress=False, out=folder)
        res = (s, read_results(folder) if folder else None)  # per image, for the paired gains
        if minutes == 0:
            before_cache[key] = res
        return res

    def evaluate(n: int, minutes: float) -> dict:
        folder = os.path.join(out, f"eval_{minutes:05.1f}min") if n == args.images_per_prompt else None
        s, images = score(metas, n, 1234, minutes, folder, (n, minutes))
        row = {"train_minutes": minutes, "iteration": trainer.iteration, "nfe": state["nfe"], "overall": s["overall"],
               "mean_partial": s["mean_partial"], "tasks": s["tasks"], "images_per_prompt": n}
        if images is not None:
            state.setdefault("images", {})[minutes] = images
        print(f"[{algo} {minutes:5.1f} min, iteration {trainer.iteration}, {state['nfe']} NFE] held-out overall "
              f"{s['overall']:.3f} (partial {s['mean_partial']:.3f}) "
              f"tasks {json.dumps({k: round(v, 2) for k, v in s['tasks'].items()})}", flush=True)
        return row

    # the training prompts (data.train_prompts, when GenEval-shapes metadata), paired before/after: what the
    # run learned on its own prompts, against which the held-out gain measures transfer
    train_file = cfg.data.train_prompts
    train_metas = load_prompts(train_file) if args.train_images_per_prompt and train_file.endswith(".jsonl") else []
    if not all("tag" in m and "include" in m for m in train_metas):
        train_metas = []

    def evaluate_train(minutes: float) -> tuple | None:
        if not train_metas:
            return None
        s, images = score(train_metas, args.train_images_per_prompt, 4321, minutes,
                          os.path.join(out, f"eval_train_{minutes:05.1f}min"),
                          ("train", os.path.abspath(train_file), minutes))
        print(f"[{algo} {minutes:5.1f} min] training prompts overall {s['overall']:.3f}", flush=True)
        return s, images

    def evaluate_fresh(minutes: float) -> tuple:
        """The fresh-seed evaluation (--fresh-seed, --fresh-images); at minutes 0 the untouched base,
        scored before any training (once for all runs)."""
        name = "eval_fresh_base" if minutes == 0 else "eval_fresh_final"
        return score(metas, args.fresh_images, args.fresh_seed, minutes, os.path.join(out, name),
                     ("fresh", args.fresh_images, args.fresh_seed, minutes))

    fresh_before = evaluate_fresh(0.0) if args.fresh_images else None
    train_before = evaluate_train(0.0)
    before = evaluate(args.images_per_prompt, 0.0)
    curve = [before] if args.curve_images == args.images_per_prompt else [evaluate(args.curve_images, 0.0)]
    trained, next_eval = 0.0, args.eval_every * 60
    while trained < args.minutes * 60:
        t0 = time.time()
        metrics = trainer.iterate()
        trained += time.time() - t0
        state["nfe"] += metrics["nfe"]
        trainer.log(metrics)
        print(f"{algo} iteration {trainer.iteration}: reward {metrics['reward_mean']:.3f} kl {metrics.get('kl', 0):.2e} "
              f"NFE {metrics['nfe']} ({trained / 60:.1f} min)", flush=True)
        if trained >= next_eval and trained < args.minutes * 60:
            curve.append(evaluate(args.curve_images, trained / 60))
            next_eval += args.eval_every * 60
    final_lora = trainer.save_final()
    after = evaluate(args.images_per_prompt, trained / 60)
    curve.append(after if args.curve_images == args.images_per_prompt else evaluate(args.curve_images, trained / 60))
    # the same seeds before and after: the per-prompt paired difference gives the gain's standard error
    pair = paired(state["images"][0.0], state["images"][trained / 60])
    # the claim: the final weights against the base on a seed no choice during the run has seen
    fresh = None
    if fresh_before is not None:
        (fb, fb_images), (fa, fa_images) = fresh_before, evaluate_fresh(trained / 60)
        fp = paired(fb_images, fa_images)
        fresh = {"seed": args.fresh_seed, "images_per_prompt": args.fresh_images, "before": fb["overall"],
                 "after": fa["overall"], "gain_paired": fp["difference"], "gain_stderr": fp["stderr"],
                 "tasks": fp["tasks"]}
        print(f"[{algo}] fresh seed {args.fresh_seed}: {fb['overall']:.3f} -> {fa['overall']:.3f}, paired "
              f"{fp['difference']:+.3f} +- {fp['stderr']:.3f}", flush=True)
    train_after = evaluate_train(trained / 60)
    train = None
    if train_before is not None:
        (sb, ib), (sa, ia) = train_before, train_after
        tp = paired(ib, ia)
        train = {"prompts": train_file, "images_per_prompt": args.train_images_per_prompt,
                 "before": sb["overall"], "after": sa["overall"], "before_tasks": sb["tasks"],
                 "after_tasks": sa["tasks"], "gain_paired": tp["difference"], "gain_stderr": tp["stderr"]}
    return {"algo": algo, "config": CONFIGS[algo], "budget_minutes": args.minutes, "trained_minutes": trained / 60,
            "iterations": trainer.iteration, "seconds_per_iteration": trained / max(1, trainer.iteration),
            "nfe_total": state["nfe"], "nfe_per_iteration": state["nfe"] / max(1, trainer.iteration),
            "before": before, "after": after, "gain_overall": after["overall"] - before["overall"],
            "gain_paired": pair["difference"], "gain_stderr": pair["stderr"], "train_prompts": train,
            "fresh_seed": fresh, "seed": cfg.run.seed, "curve": curve, "final_weights": final_lora}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="flow_grpo", help=f"comma-separated, from {sorted(CONFIGS)}")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget per algorithm")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes of training between curve points")
    ap.add_argument("--images-per-prompt", type=int, default=4, help="for the first and last evaluation")
    ap.add_argument("--curve-images", type=int, default=2, help="images per prompt of intermediate points")
    ap.add_argument("--train-images-per-prompt", type=int, default=2,
                    help="images per training prompt, before and after (0: no training-prompt evaluation)")
    ap.add_argument("--seeds", type=int, default=1, help="training runs per algorithm (run.seed 0..N-1)")
    ap.add_argument("--fresh-images", type=int, default=8,
                    help="images per held-out prompt of the fresh-seed re-evaluation (0: none)")
    ap.add_argument("--fresh-seed", type=int, default=7, help="the seed of the fresh-seed re-evaluation")
    ap.add_argument("--out", default=None, help="default: runs/learn_<algos>")
    ap.add_argument("overrides", nargs="*", help="config overrides for every algorithm, key=value")
    args = ap.parse_args(argv)
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    bad = [a for a in algos if a not in CONFIGS]
    if bad or not algos:
        ap.error(f"--algo {args.algo!r}: unknown {bad}; use a comma-separated list of {sorted(CONFIGS)}")
    args.out = args.out or f"runs/learn_{'_'.join(algos)}"
    os.makedirs(args.out, exist_ok=True)
    metas = load_prompts("held-out")
    cache: dict = {}
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds} must be at least 1")
    runs = [(a, None) for a in algos] if args.seeds == 1 else [(a, s) for s in range(args.seeds) for a in algos]
    settings = settings_of(args)
    os.makedirs(os.path.join(args.out, "completed"), exist_ok=True)
    results: dict = {}
    rank = {a: i for i, a in enumerate(algos)}  # rows by algorithm, then seed (sorted keeps the seed order)
    for a, s in runs:
        key = a if s is None else f"{a}/seed{s}"
        kept = os.path.join(args.out, "completed", key.replace("/", "_") + ".json")
        cfg = run_config(a, args, s)
        config = OmegaConf.to_container(cfg, resolve=True)
        res = completed_run(kept, settings, config)
        if res is None:
            res = run_one(a, args, metas, cache, cfg)
            res["settings"], res["resolved_config"] = settings, config
            with open(kept + ".tmp", "w") as f:
                json.dump(res, f, indent=2)
            os.replace(kept + ".tmp", kept)
        else:
            print(f"[{key}] reusing the finished run in {kept}", flush=True)
        results[key] = res
        res_all = write(args, algos, {k: results[k] for k in sorted(results, key=lambda k: rank[k.split("/")[0]])})
    return res_all


def write(args, algos: list[str], results: dict) -> dict:
    """learn.json, table.md and curve.png of the runs finished so far (rows by algorithm, then seed)."""
    md = table(results, next((k for k in results if k.split("/")[0] == "flow_grpo"), None))
    summary = over_seeds(results, algos)
    if args.seeds > 1 and summary:
        md += ("\n| algorithm | runs | fresh seed, held-out: mean paired gain +- s.e. (prompts) | s.e. between seeds "
               "| combined s.e. |\n|---|---|---|---|---|\n") + "".join(
            f"| {a} | {s['runs']} | {s['gain_paired']:+.3f} +- {s['gain_stderr']:.3f} | {_se(s['seed_stderr'])} | "
            f"{_se(s['combined_stderr'])} |\n" for a, s in summary.items())
    res = {"algos": algos, "budget_minutes": args.minutes, "seeds": args.seeds, "overrides": args.overrides,
           "results": results, "over_seeds": summary, "table": md}
    if len(results) == 1:  # the single-run layout of earlier results
        res.update(next(iter(results.values())))
    with open(os.path.join(args.out, "learn.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md)
    plot(results, os.path.join(args.out, "curve.png"))
    print(md)
    print(f"wrote {args.out}/learn.json, {args.out}/table.md, {args.out}/curve.png")
    return res


if __name__ == "__main__":
    main()
