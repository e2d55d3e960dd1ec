"""Training captions for DenseAlignBench on the shapes testbed: every dense caption the benchmark can
draw, minus the evaluation captions of `flowalign eval densealign --prompts shapes` (seeds 0..S-1 with
--num-prompts N), so a model trained on them is evaluated on captions it never saw.

    python -m benchmarks.densealign.train_prompts [--num-prompts 48] [--seeds 4]
        [--out flowalign/shapes/prompts/dense_train.jsonl]"""

from __future__ import annotations

import argparse
import json

from flowalign.evaluation.densealign import all_dense_captions, dense_captions


def train_captions(num_prompts: int = 48, seeds: int = 4) -> list[dict]:
    held = {m["prompt"] for s in range(seeds) for m in dense_captions(num_prompts, s)}
    return [m for m in all_dense_captions() if m["prompt"] not in held]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=48, help="--num-prompts of the evaluations to exclude")
    ap.add_argument("--seeds", type=int, default=4, help="exclude the captions of evaluation seeds 0..S-1")
    ap.add_argument("--out", default="flowalign/shapes/prompts/dense_train.jsonl")
    args = ap.parse_args(argv)
    rows = train_captions(args.num_prompts, args.seeds)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} training captions to {args.out}")
    return rows


if __name__ == "__main__":
    main()
