"""Write the shapes testbed's prompt files (flowalign/shapes/prompts/train.jsonl and heldout.jsonl)
from the world's prompt generator (reward_models/shapes/prompts.py).

    python -m benchmarks.shapes.prompts [--out DIR] [--train-per-task 40] [--heldout-per-task 12]"""

from __future__ import annotations

import argparse
import os

from flowalign.shapes import PROMPTS_DIR
from reward_models.shapes.prompts import prompt_set, write_jsonl


def main(argv=None):
    ap = argparse.ArgumentParser(description="write the shapes world's train and held-out prompt files")
    ap.add_argument("--out", default=PROMPTS_DIR)
    ap.add_argument("--train-per-task", type=int, default=40)
    ap.add_argument("--heldout-per-task", type=int, default=12)
    args = ap.parse_args(argv)
    write_jsonl(prompt_set("train", args.train_per_task, seed=0), os.path.join(args.out, "train.jsonl"))
    write_jsonl(prompt_set("heldout", args.heldout_per_task, seed=1), os.path.join(args.out, "heldout.jsonl"))
    print(f"wrote {args.out}/train.jsonl and {args.out}/heldout.jsonl")


if __name__ == "__main__":
    main()
