"""Held-out evaluation during training: ODE samples for a fixed prompt set, scored by a reward,
summarised per GenEval task. With a 0/1 correctness reward (shapes_geneval or geneval in strict
mode) `overall` is GenEval's score: the unweighted mean of the task accuracies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def shard(n: int, rank: int, world: int) -> list[int]:
    """This rank's contiguous, equal-size shard of range(n) (the last padded with n - 1), so gathering
    the ranks' results in rank order gives the items in order followed by padding."""
    per = math.ceil(n / world)
    return [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]


def prompt_noise(policy, index: int, n: int, seed: int, height: int | None = None, width: int | None = None):
    """The n initial noises of prompt `index` of an evaluation: drawn from seed + index alone, so they
    do not depend on batching, sharding or which prompts were already done."""
    return policy.initial_noise(n, height, width, torch.Generator().manual_seed(seed + index))


def summarize_scores(scores: Sequence[float], tags: Sequence[str | None]) -> dict:
    """Mean score, and per task (tag) means with their unweighted mean as `overall`."""
    out = {"eval/reward_mean": float(sum(scores) / len(scores))}
    per: dict[str, list[float]] = {}
    for s, t in zip(scores, tags):
        if t:
            per.setdefault(t, []).append(float(s))
    if per:
        tasks = {t: sum(v) / len(v) for t, v in sorted(per.items())}
        out.update({f"eval/{t}": v for t, v in tasks.items()})
        out["eval/overall"] = sum(tasks.values()) / len(tasks)
    return out


@torch.no_grad()
def evaluate_prompts(policy, rows: Sequence[dict], reward, *, images_per_prompt: int, num_steps: int,
                     guidance: float, seed: int, batch_size: int, height: int | None = None,
                     width: int | None = None, rank: int = 0, world: int = 1, gather=None) -> dict:
    """Generate `images_per_prompt` images per row (noise from seed + row index) on this process's
    shard, score them, gather over processes (`gather`: a tensor all-gather, None on one process)."""
    jobs = [(i, j) for i in range(len(rows)) for j in range(images_per_prompt)]
    mine = shard(len(jobs), rank, world)
    scores = []
    for s in range(0, len(mine), batch_size):
        chunk = [jobs[k] for k in mine[s:s + batch_size]]
        per_prompt = {i: prompt_noise(policy, i, images_per_prompt, seed, height, width) for i, _ in chunk}
        noise = torch.cat([per_prompt[i][j:j + 1] for i, j in chunk])
        images = policy.generate([rows[i]["prompt"] for i, _ in chunk], num_steps=num_steps, guidance=guidance,
                                 height=height, width=width, noise=noise)
        metas = [rows[i] for i, _ in chunk]
        ctx = {"metadata": metas} if all("include" in m for m in metas) else {}
        scores.append(reward(images, [m["prompt"] for m in metas], **ctx).float().cpu())
    local = torch.cat(scores).to(policy.device)
    allscores = (gather(local) if gather is not None else local).cpu()[:len(jobs)]
    return summarize_scores(allscores.tolist(), [rows[i].get("tag") for i, _ in jobs])
