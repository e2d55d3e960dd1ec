"""GenEval-style evaluation of a model on the shapes world: generate, detect, score.

    flowalign eval shapes --model flowalign/shapes/model --prompts held-out --images-per-prompt 4 --out OUT

Writes OUT/summary.json ({"overall", "tasks", "n_images", ...}), OUT/results.jsonl (one line
per image: prompt, tag, correct, partial score, reasons) and OUT/grid.png."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from reward_models.base import to_uint8_hwc
from reward_models.geneval_rules import evaluate, summarize
from reward_models.shapes.detector import detect
from reward_models.shapes.prompts import prompt_set, read_jsonl

from ..data import load_prompt_rows
from ..shapes import HELDOUT_PROMPTS as HELDOUT_FILE
from ..shapes import TRAIN_PROMPTS as TRAIN_FILE


def load_prompts(which: str, key: str = "--prompts") -> list[dict]:
    """'held-out', 'train' (the shapes testbed's sets) or a prompt file: GenEval-format JSONL or
    .txt with one prompt a line (flowalign.data.load_prompt_rows; `key` names the option in errors)."""
    if which in ("held-out", "heldout"):
        return read_jsonl(HELDOUT_FILE) if os.path.isfile(HELDOUT_FILE) else prompt_set("heldout", 12, seed=1)
    if which == "train":
        return read_jsonl(TRAIN_FILE) if os.path.isfile(TRAIN_FILE) else prompt_set("train", 40, seed=0)
    if not os.path.isfile(which):
        raise FileNotFoundError(f"prompt set {which!r} is neither 'held-out', 'train' nor a prompt file "
                                "(.jsonl or .txt).")
    return load_prompt_rows(which, key=key)


def first_per_task(metas: Sequence[dict], n: int | None) -> list[dict]:
    """The first `n` prompts of each task, in file order (all prompts if n is None)."""
    if n is None:
        return list(metas)
    counts: dict[str, int] = {}
    out = []
    for m in metas:
        if counts.get(m["tag"], 0) < n:
            counts[m["tag"]] = counts.get(m["tag"], 0) + 1
            out.append(m)
    return out


def score_images(images: torch.Tensor, metas: Sequence[dict]) -> list[dict]:
    """images [N, 3, H, W] in [0, 1] with one metadata row each -> per-image verdicts."""
    arr = to_uint8_hwc(images)
    out = []
    for img, meta in zip(arr, metas):
        v = evaluate(detect(img), meta)
        out.append({"tag": meta["tag"], "prompt": meta["prompt"], "correct": v.correct, "partial": v.partial,
                    "reasons": v.reasons})
    return out


@torch.no_grad()
def evaluate_policy(policy, metas: Sequence[dict], *, images_per_prompt: int = 4, num_steps: int | None = None,
                    guidance: float | None = None, seed: int = 0, batch_size: int = 64, out: str | None = None,
                    progress: bool = True) -> dict:
    """Generate `images_per_prompt` images per prompt with ODE sampling and score them."""
    jobs = [(i, j, m) for i, m in enumerate(metas) for j in range(images_per_prompt)]
    results, images = [], []
    gen = torch.Generator().manual_seed(seed)
    for start in tqdm(range(0, len(jobs), batch_size), desc="eval shapes", disable=not progress):
        chunk = jobs[start:start + batch_size]
        imgs = policy.generate([m["prompt"] for _, _, m in chunk], num_steps=num_steps, guidance=guidance,
                               noise=policy.initial_noise(len(chunk), policy.defaults.get("height"),
                                                          policy.defaults.get("width"), gen))
        for (i, j, _), r in zip(chunk, score_images(imgs, [m for _, _, m in chunk])):
            results.append({"prompt_index": i, "image_index": j, **r})
        images.append(imgs.cpu())
    summary = {**summarize(results), "mean_partial": float(np.mean([r["partial"] for r in results])),
               "images_per_prompt": images_per_prompt, "n_prompts": len(metas)}
    if out:
        from ..report import write_report, write_results

        write_results(out, summary, results)
        from ..images import save_grid

        allimg = torch.cat(images)
        # one row per prompt (at most 24 prompts shown)
        save_grid(allimg[: 24 * images_per_prompt], os.path.join(out, "grid.png"), nrow=images_per_prompt * 4, scale=2)
        write_report(out, "GenEval-shapes evaluation", summary, allimg,
                     [{"caption": r["prompt"], "correct": r["correct"], "details": "; ".join(r["reasons"])}
                      for r in results])
    return summary
