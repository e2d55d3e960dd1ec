"""Seconds per training iteration of each algorithm on the shapes model at equal group size
(8 images per prompt, 4 prompts, 10 steps): the shapes configs, interleaved round by round so
machine noise hits all of them alike; medians, ratios to Flow-GRPO, and the median seconds of each
phase (rollout, scoring with DenseGRPO's completions, update).

    python -m benchmarks.speed.algorithms [--rounds 8] [--device cuda] [--out benchmarks/results/algorithm_speed.json]
        [KEY=VALUE ...] [ALGO:KEY=VALUE ...]

An override prefixed with an algorithm's name applies to that algorithm alone
(dense_grpo:algorithm.completion_batch_size=512)."""

from __future__ import annotations

import argparse
import json
import os
import statistics

from benchmarks.shapes.learn import CONFIGS
from flowalign.config import load_config
from flowalign.trainer import Trainer


def overrides_for(algo: str, overrides: list[str]) -> list[str]:
    """The overrides that apply to `algo`: unprefixed ones, and `algo:KEY=VALUE` without its prefix."""
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and "=" not in head and head in CONFIGS:
            if head == algo:
                out.append(rest)
        else:
            out.append(o)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--algo", default="flow_grpo,dense_grpo,branch_grpo,branch_grpo_mix,nft")
    ap.add_argument("--device", default=None, help="run.device (default: the config's)")
    ap.add_argument("--out", default="benchmarks/results/algorithm_speed.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    algos = args.algo.split(",")
    dev = [f"run.device={args.device}"] if args.device else []
    trainers = {a: Trainer(load_config(CONFIGS[a], [f"run.output_dir=runs/speed_{a}", "run.progress=false",
                                                    *dev, *overrides_for(a, args.overrides)])) for a in algos}
    for t in trainers.values():  # warm-up
        t.iterate()
    times: dict[str, list[float]] = {a: [] for a in algos}
    nfe: dict[str, int] = {}
    phases = ("time_rollout", "time_score", "time_update")
    phase_times: dict[str, dict[str, list[float]]] = {a: {p: [] for p in phases} for a in algos}
    for r in range(args.rounds):
        for a, t in trainers.items():
            m = t.iterate()
            times[a].append(m["iteration_time"])
            nfe[a] = m["nfe"]
            for p in phases:
                phase_times[a][p].append(m[p])
        print(f"round {r + 1}: " + ", ".join(f"{a} {times[a][-1]:.2f} s" for a in algos), flush=True)
    med = {a: statistics.median(v) for a, v in times.items()}
    base = med.get("flow_grpo")
    res = {"rounds": args.rounds, "overrides": args.overrides, "device": str(next(iter(trainers.values())).acc.device),
           "median_seconds": med, "nfe_per_iteration": nfe, "times": times,
           "median_phase_seconds": {a: {p[5:]: statistics.median(v) for p, v in ph.items()}
                                    for a, ph in phase_times.items()},
           "ratio_to_flow_grpo": {a: med[a] / base for a in algos} if base else None}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    for a in algos:
        rel = f", {med[a] / base:.2f} x flow_grpo" if base else ""
        ph = ", ".join(f"{p} {s:.2f}" for p, s in res["median_phase_seconds"][a].items())
        print(f"{a}: {med[a]:.2f} s per iteration (median of {args.rounds}; {ph}), {nfe[a]} NFE{rel}")
    return res


if __name__ == "__main__":
    main()
