"""Train the shapes world's captioning VLM (PromptEcho's model on the testbed), on CPU.

    python -m benchmarks.shapes.captioner --out flowalign/shapes/captioner --minutes 10

A tiny LLaVA (transformers' LlavaForConditionalGeneration: CLIP vision tower + Llama language model)
with an offline word-level tokenizer over the world's vocabulary and a chat template. It learns to
answer "Describe the image." with the prompt a scene was rendered from: teacher-forced cross-entropy
on the answer tokens only, freshly rendered scenes of every prompt of the world (train and held-out
prompt sets: the captioner plays a general VLM, not the T2I model's training data) each step.
Saves the model (fp16 weights) and its processor with save_pretrained; prints the held-out
caption-matching AUROC (the rendered prompt's reward against a mismatched prompt's) at the end.

Augmentation teaches it what a general VLM knows and a clean render never shows: 30 % of the scenes
are degraded (pixel noise, blur, colour jitter) and keep their caption, and 15 % of the images are
pure texture (smooth colour fields and speckle over the background, the look of a failed
generation) captioned "a photo of noise", so an image without the prompt's objects echoes the
prompt badly (--no-augment: clean renders only).

--contrast W (default 0, off) adds an image-side ranking term: each scene's caption must echo better
from its own render than from a render of a near-miss prompt (one to two words away: another colour,
class, count or relation), a logistic loss on the difference of the caption's summed
log-likelihoods, over --contrast-pairs pairs a step. It is the comparison a group-relative PromptEcho
advantage makes, but on renders it is already easy (the shipped captioner ranks such pairs at 0.97),
and trained with it the captioner ranked *generated* images of one prompt worse (docs/results.md,
Reward signal), so it stays off."""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

from flowalign.shapes import CAPTIONER_DIR
from reward_models.prompt_echo import PromptEchoReward, answer_texts, answer_token_losses, query_prefix
from reward_models.shapes.prompts import all_prompts
from reward_models.shapes.render import render_prompt

from .timed import train_for

QUERY = "Describe the image."


def world_rows() -> list[dict]:
    return [r for split in ("train", "heldout") for rows in all_prompts(split).values() for r in rows]


NOISE_CAPTION = "a photo of noise"


def vocabulary(rows) -> list[str]:
    return sorted({w for r in rows for w in r["prompt"].split()} | set(NOISE_CAPTION.split()))


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel noise, a box blur and colour jitter of a rendered scene (uint8 [H, W, 3])."""
    x = img.astype(np.float32) / 255
    if rng.random() < 0.5:  # 3x3 box blur
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3)) / 9
    x = x * rng.uniform(0.85, 1.15, size=3) + rng.normal(0, rng.uniform(0.0, 0.12), size=x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A failed-generation look: smooth random colour fields and speckle over the #999 background."""
    cells = int(rng.integers(2, 9))
    low = torch.from_numpy(rng.uniform(0, 1, (1, 3, cells, cells)).astype(np.float32))
    smooth = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    a = rng.uniform(0.2, 1.0)
    x = (1 - a) * 0.6 + a * smooth + rng.normal(0, rng.uniform(0.02, 0.2), (size, size, 3))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def word_distance(a: str, b: str) -> int:
    """Levenshtein distance between two captions, counted in words."""
    x, y = a.split(), b.split()
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i]
        for j, wy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy)))
        prev = cur
    return prev[-1]


def near_misses(rows, max_distance: int = 2) -> list[list[int]]:
    """For each row, the indices of the rows whose prompt differs from it by 1..max_distance words."""
    prompts = [r["prompt"] for r in rows]
    return [[j for j, q in enumerate(prompts) if q != p and word_distance(p, q) <= max_distance] for p in prompts]


def batch(rows, rng: random.Random, n: int, augment: bool = False):
    picks = [rows[rng.randrange(len(rows))] for _ in range(n)]
    images = [render_prompt(r, rng.randrange(1 << 30))[0] for r in picks]
    caps = [r["prompt"] for r in picks]
    if augment:
        nrng = np.random.default_rng(rng.randrange(1 << 30))
        for i in range(n):
            u = nrng.random()
            if u < 0.15:
                images[i], caps[i] = texture(images[i].shape[0], nrng), NOISE_CAPTION
            elif u < 0.45:
                images[i] = degrade(images[i], nrng)
    return np.stack(images), caps


def contrast_pairs(rows, neighbours, rng: random.Random, n: int, augment: bool = False):
    """`n` (render of a prompt, render of one of its near misses `neighbours[i]`, the prompt) triples;
    with `augment` both renders of a pair are degraded alike 30 % of the time."""
    pos, neg, caps = [], [], []
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    while len(caps) < n:
        i = rng.randrange(len(rows))
        if not neighbours[i]:
            continue
        j = neighbours[i][rng.randrange(len(neighbours[i]))]
        a, b = render_prompt(rows[i], rng.randrange(1 << 30))[0], render_prompt(rows[j], rng.randrange(1 << 30))[0]
        if augment and nrng.random() < 0.3:
            a, b = degrade(a, nrng), degrade(b, nrng)
        pos.append(a), neg.append(b), caps.append(rows[i]["prompt"])
    return np.stack(pos), np.stack(neg), caps


def contrast_loss(model, proc, prefix: str, pos, neg, captions) -> torch.Tensor:
    """Mean softplus(-(log p(caption | own render) - log p(caption | near-miss render))), log-likelihoods
    summed over the caption's tokens."""
    texts = answer_texts(proc, prefix, captions, QUERY)
    ce, mask = answer_token_losses(model, proc, np.concatenate([pos, neg]), prefix, texts + texts)
    logp = -(ce * mask).sum(1)
    return F.softplus(-(logp[:len(captions)] - logp[len(captions):])).mean()


def caption_loss(model, proc, prefix: str, images, captions) -> torch.Tensor:
    """Mean cross-entropy over every caption token (and </s>) of the batch: PromptEcho's masked
    token losses, trained."""
    ce, mask = answer_token_losses(model, proc, images, prefix, answer_texts(proc, prefix, captions, QUERY))
    return (ce * mask).sum() / mask.sum()


def auroc(pos, neg) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def grouped_auroc(scores, labels, groups) -> tuple[float, int]:
    """AUROC over the (positive, negative) pairs that share a group (a prompt), and the number of such
    pairs: the comparison a group-relative advantage makes (GRPO compares images of one prompt only).
    NaN when no group holds both a positive and a negative."""
    scores, labels, groups = np.asarray(scores, float), np.asarray(labels, bool), np.asarray(groups)
    wins, pairs = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        pos, neg = scores[m & labels], scores[m & ~labels]
        if len(pos) and len(neg):
            wins += auroc(pos, neg) * len(pos) * len(neg)
            pairs += len(pos) * len(neg)
    return (wins / pairs if pairs else float("nan")), pairs


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=CAPTIONER_DIR)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contrast", type=float, default=0.0,
                    help="weight of the near-miss ranking term (0: likelihood training alone)")
    ap.add_argument("--contrast-pairs", type=int, default=None,
                    help="near-miss pairs per step (default: half the batch size)")
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="clean renders only")
    args = ap.parse_args(argv)

    from flowalign.testing import tiny_llava

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    rows = world_rows()
    model, proc = tiny_llava(vocabulary(rows), image_size=32, patch_size=4, vision_width=64, text_width=96, layers=2,
                             seed=args.seed)
    proc.tokenizer.padding_side = "right"
    prefix = query_prefix(proc, QUERY)
    print(f"captioner: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(rows)} prompts, "
          f"{len(proc.tokenizer)} tokens")
    neighbours = near_misses(rows) if args.contrast > 0 else None
    n_pairs = args.contrast_pairs if args.contrast_pairs is not None else max(1, args.batch_size // 2)

    def step_loss():
        images, caps = batch(rows, rng, args.batch_size, augment=args.augment)
        loss = caption_loss(model, proc, prefix, images, caps)
        if neighbours is None:
            return loss, {}
        pos, neg, pcaps = contrast_pairs(rows, neighbours, rng, n_pairs, augment=args.augment)
        rank = contrast_loss(model, proc, prefix, pos, neg, pcaps)
        return loss + args.contrast * rank, {"rank": f"{rank.item():.3f}"}

    step, loss, seconds = train_for(model, args.minutes, args.lr, step_loss, "captioner")
    # held-out check: the rendered prompt should echo better than a random other prompt of the same task

    os.makedirs(args.out, exist_ok=True)
    model.to(torch.float16).save_pretrained(args.out)
    proc.save_pretrained(args.out)
    reward = PromptEchoReward(args.out, query=QUERY, device="cpu")
    erng = random.Random(12345)
    images, caps = batch(rows, erng, 256)
    wrong = [rows[erng.randrange(len(rows))]["prompt"] for _ in caps]
    keep = [i for i in range(len(caps)) if wrong[i] != caps[i]]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pos = reward(x[keep], [caps[i] for i in keep]).numpy()
    neg = reward(x[keep], [wrong[i] for i in keep]).numpy()
    near = near_miss_auroc(reward, rows)
    print(f"trained {step} steps in {seconds:.0f} s; final loss {loss:.3f}; matched-vs-mismatched "
          f"caption AUROC {auroc(pos, neg):.3f}; own-render-vs-near-miss-render AUROC {near:.3f}; saved {args.out}")
    return args.out


def near_miss_auroc(reward, rows, n: int = 256, seed: int = 12345) -> float:
    """P(a prompt echoes better from a fresh render of itself than from a render of a near miss), over
    `n` fresh pairs: the within-prompt comparison PromptEcho's advantages make, on clean renders."""
    pos, neg, caps = contrast_pairs(rows, near_misses(rows), random.Random(seed), n)
    with torch.no_grad():
        a = reward(torch.from_numpy(pos).permute(0, 3, 1, 2).float() / 255, caps).numpy()
        b = reward(torch.from_numpy(neg).permute(0, 3, 1, 2).float() / 255, caps).numpy()
    return float((a > b).mean() + 0.5 * (a == b).mean())


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
