"""DenseAlignBench's protocol on the shapes testbed: dense captions that bind colours and a spatial
relation ("a photo of a red circle left of a blue square": two colours, two classes, one relation;
5 clauses), both models generate from the same noise, and the procedural judge (the share of the
caption's clauses GenEval-shapes finds satisfied) compares them in both orders."""

from __future__ import annotations

import itertools
import random

import torch

from reward_models.base import to_uint8_hwc
from reward_models.geneval_rules import evaluate
from reward_models.shapes.detector import detect
from reward_models.shapes.world import CLASSES, COLORS

from .winrate import clause_judge, net_win_rate, pair_outcome

RELATIONS = ("left of", "right of", "above", "below")


def dense_row(a: str, c1: str, rel: str, b: str, c2: str) -> dict:
    """The GenEval-format row of 'a photo of a <c1> <a> <rel> a <c2> <b>'."""
    return {"tag": "dense", "prompt": f"a photo of a {c1} {a} {rel} a {c2} {b}",
            "include": [{"class": b, "count": 1, "color": c2},
                        {"class": a, "count": 1, "color": c1, "position": [rel, 0]}]}


def dense_captions(n: int, seed: int = 0) -> list[dict]:
    """n GenEval-format rows: '<c1> <cls1> <rel> <c2> <cls2>' with distinct colours."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(CLASSES, 2)
        c1, c2 = rng.sample(list(COLORS), 2)
        rows.append(dense_row(a, c1, rng.choice(RELATIONS), b, c2))
    return rows


def all_dense_captions() -> list[dict]:
    """Every caption dense_captions can draw (ordered class pair x ordered distinct colours x relation)."""
    return [dense_row(a, c1, rel, b, c2)
            for a, b in itertools.permutations(CLASSES, 2)
            for c1, c2 in itertools.permutations(COLORS, 2)
            for rel in RELATIONS]


def judge_scores(images: torch.Tensor, metas: list[dict]) -> list[float]:
    return [evaluate(detect(img), m).partial for img, m in zip(to_uint8_hwc(images), metas)]


@torch.no_grad()
def compare(model, baseline, metas: list[dict], *, images_per_prompt: int = 2, seed: int = 0,
            num_steps: int | None = None, guidance: float | None = None, out: str | None = None,
            judge=None) -> dict:
    """Both policies generate from the same noises; the judge sees every pair in both orders.
    judge=None: the procedural clause judge; else a pairwise judge (VLMJudge: judge(first, second,
    captions) -> verdicts)."""
    rows, outcomes = [], []
    gen = torch.Generator().manual_seed(seed)
    for m in metas:
        noise = model.initial_noise(images_per_prompt, model.defaults.get("height"), model.defaults.get("width"), gen)
        prompts = [m["prompt"]] * images_per_prompt
        a = model.generate(prompts, num_steps=num_steps, guidance=guidance, noise=noise)
        b = baseline.generate(prompts, num_steps=num_steps, guidance=guidance, noise=noise)
        sa, sb = judge_scores(a, [m] * images_per_prompt), judge_scores(b, [m] * images_per_prompt)
        if judge is None:
            a_first = [clause_judge(x, y) for x, y in zip(sa, sb)]
            b_first = [clause_judge(y, x) for x, y in zip(sa, sb)]
        else:
            a_first, b_first = judge(a, b, prompts), judge(b, a, prompts)
        for j in range(images_per_prompt):
            o = pair_outcome(a_first[j], b_first[j])
            outcomes.append(o)
            rows.append({"prompt": m["prompt"], "image": j, "model_score": sa[j], "baseline_score": sb[j],
                         "verdict_model_first": a_first[j], "verdict_baseline_first": b_first[j], "outcome": o})
    summary = {**net_win_rate(outcomes, seed=seed), "prompts": len(metas), "images_per_prompt": images_per_prompt,
               "model_mean_score": sum(r["model_score"] for r in rows) / len(rows),
               "baseline_mean_score": sum(r["baseline_score"] for r in rows) / len(rows)}
    if out:
        from flowalign.report import write_results

        write_results(out, summary, rows)
    return summary
