"""Paired comparison of `flowalign eval shapes` folders made with the same prompts, images per
prompt and seed (so image (i, j) starts from the same noise in each): the difference in GenEval
correctness against the first folder, with its standard error over prompts (each prompt's images
averaged first, since they share the prompt), and per task.

    flowalign eval shapes --images-per-prompt 8 --seed 7 --out runs/ev_base
    flowalign eval shapes --images-per-prompt 8 --seed 7 --lora RUN/lora --out runs/ev_tuned
    python -m benchmarks.shapes.paired runs/ev_base runs/ev_tuned [--out paired.json]

With several tuned folders (e.g. the final weights of two training seeds, evaluated alike), `--mean`
also reports their mean gain: each prompt's paired difference averaged over the folders, with its
standard error over prompts (the folders share the base and the prompts, so they are not independent;
the error does not count the spread between training seeds beyond what the prompts show)."""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import numpy as np

from flowalign.report import write_json


def read_results(folder: str) -> dict[tuple[int, int], dict]:
    path = os.path.join(folder, "results.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no results.jsonl; pass the --out folder of `flowalign eval shapes`.")
    with open(path) as f:
        return {(r["prompt_index"], r["image_index"]): r for r in map(json.loads, f)}


def paired(base: dict, other: dict) -> dict:
    """Mean correctness of both on their common images, the mean paired difference and its
    standard error over prompts, and the difference per task."""
    keys = sorted(set(base) & set(other))
    if not keys:
        raise ValueError("the two evaluations share no (prompt, image) pair; use the same prompts and seed.")
    if any(base[k]["prompt"] != other[k]["prompt"] for k in keys):
        raise ValueError("the two evaluations used different prompts; use the same --prompts and --per-task.")
    per_prompt, per_task = defaultdict(list), defaultdict(list)
    for k in keys:
        d = float(other[k]["correct"]) - float(base[k]["correct"])
        per_prompt[k[0]].append(d)
        per_task[base[k]["tag"]].append(d)
    pm = np.array([np.mean(v) for v in per_prompt.values()])
    se = float(pm.std(ddof=1) / np.sqrt(len(pm))) if len(pm) > 1 else float("nan")
    return {"images": len(keys), "prompts": len(pm),
            "base": float(np.mean([base[k]["correct"] for k in keys])),
            "other": float(np.mean([other[k]["correct"] for k in keys])),
            "difference": float(pm.mean()), "stderr": se,
            "tasks": {t: float(np.mean(v)) for t, v in sorted(per_task.items())}}


def paired_mean(base: dict, others: list[dict]) -> dict:
    """The mean over `others` of each prompt's paired difference against `base`, and its standard
    error over prompts: `paired` against one folder whose correctness is the others' mean per image;
    only images every folder has count."""
    keys = set(base).intersection(*others)
    if any(o[k]["prompt"] != base[k]["prompt"] for o in others for k in keys):
        raise ValueError("the evaluations used different prompts; use the same --prompts and --per-task.")
    averaged = {k: {**base[k], "correct": float(np.mean([float(o[k]["correct"]) for o in others]))} for k in keys}
    return {"folders": len(others), **paired(base, averaged)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the reference evaluation folder")
    ap.add_argument("others", nargs="+", help="evaluation folders compared with it")
    ap.add_argument("--mean", action="store_true", help="also the mean gain over the compared folders")
    ap.add_argument("--out", default=None, help="also write the comparison as JSON")
    args = ap.parse_args(argv)
    if args.mean and len(args.others) < 2:
        ap.error("--mean needs at least two folders to compare with the base.")
    base = read_results(args.base)
    loaded = {other: read_results(other) for other in args.others}
    result = {other: paired(base, rows) for other, rows in loaded.items()}
    for other, r in result.items():
        tasks = ", ".join(f"{t} {v:+.3f}" for t, v in r["tasks"].items())
        print(f"{other}: {r['base']:.3f} -> {r['other']:.3f}, paired {r['difference']:+.3f} +- {r['stderr']:.3f} "
              f"({r['images']} images, {r['prompts']} prompts; {tasks})")
    out = {"base": args.base, "comparisons": result}
    if args.mean:
        out["mean"] = m = paired_mean(base, list(loaded.values()))
        print(f"mean of the {m['folders']} folders: paired {m['difference']:+.3f} +- {m['stderr']:.3f} "
              f"({m['images']} images, {m['prompts']} prompts)")
    if args.out:
        write_json(args.out, out)
    return result


if __name__ == "__main__":
    main()
