"""Train the shapes world's CLIP (the PickScore stand-in of Adv-GRPO's co-trained PickScore reward), on CPU.

    python -m benchmarks.shapes.clip --out flowalign/shapes/clip --minutes 8

A tiny transformers CLIPModel (flowalign.testing.tiny_clip: CLIP's BPE tokenizer cut to 2,000 merges,
a 32-pixel ViT with patch 4) trained with CLIP's symmetric contrastive loss on freshly rendered scenes of
every prompt of the world (train and held-out prompt sets, as the captioner: it plays a general
text-image model, not the T2I model's training data), distinct prompts in each batch, 30 % of the
scenes degraded (pixel noise, blur, colour jitter; benchmarks.shapes.captioner.degrade). Saves the
model and its processor with save_pretrained and prints the held-out matching accuracy (a fresh render
scored against every prompt of the world: is its own prompt the best?)."""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

from flowalign.shapes import CLIP_DIR
from reward_models.clip_common import CLIPPreprocess, features
from reward_models.shapes.render import render_prompt

from .captioner import degrade, world_rows
from .timed import train_for


def encode(model, proc, prep: CLIPPreprocess, images: np.ndarray, captions) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-normalised (image, text) features of uint8 images [B, H, W, 3] and their captions."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    tok = proc.tokenizer(list(captions), padding=True, truncation=True, max_length=77, return_tensors="pt")
    v = features(model.get_image_features(pixel_values=prep(x)))
    t = features(model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
    return F.normalize(v, dim=-1), F.normalize(t, dim=-1)


def contrastive_loss(v: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's image-text similarity matrix (pairs on the diagonal)."""
    logits = logit_scale.exp().clamp(max=100) * v @ t.T
    labels = torch.arange(len(v))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def scene_batch(rows, rng: random.Random, n: int, augment: bool = True):
    """Fresh renders of `n` distinct prompts (30 % degraded with `augment`) and the prompts."""
    picks = rng.sample(rows, min(n, len(rows)))
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    images = []
    for r in picks:
        img = render_prompt(r, rng.randrange(1 << 30))[0]
        images.append(degrade(img, nrng) if augment and nrng.random() < 0.3 else img)
    return np.stack(images), [r["prompt"] for r in picks]


@torch.no_grad()
def matching_accuracy(model, proc, rows, n: int = 256, seed: int = 12345) -> float:
    """Share of `n` fresh renders whose own prompt scores highest among all the world's prompts."""
    prep = CLIPPreprocess.from_processor(proc.image_processor)
    prompts = sorted({r["prompt"] for r in rows})
    rng = random.Random(seed)
    picks = [rows[rng.randrange(len(rows))] for _ in range(n)]
    images = np.stack([render_prompt(r, rng.randrange(1 << 30))[0] for r in picks])
    v, _ = encode(model, proc, prep, images, [p["prompt"] for p in picks])
    _, t = encode(model, proc, prep, images[:1], prompts)
    best = (v @ t.T).argmax(1)
    return float(np.mean([prompts[b] == p["prompt"] for b, p in zip(best.tolist(), picks)]))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=CLIP_DIR)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from flowalign.testing import tiny_clip

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    rows = world_rows()
    model, proc = tiny_clip(image_size=32, patch_size=4, width=64, layers=3, projection_dim=64, seed=args.seed)
    prep = CLIPPreprocess.from_processor(proc.image_processor)
    print(f"shapes CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(rows)} prompts")

    def step_loss():
        images, caps = scene_batch(rows, rng, args.batch_size)
        v, t = encode(model, proc, prep, images, caps)
        return contrastive_loss(v, t, model.logit_scale), {}

    step, loss, seconds = train_for(model, args.minutes, args.lr, step_loss, "shapes clip")
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    acc = matching_accuracy(model, proc, rows)
    print(f"trained {step} steps in {seconds:.0f} s; final loss {loss:.3f}; a fresh render's own "
          f"prompt is the best of the world's {len({r['prompt'] for r in rows})} for {acc:.1%} of 256; saved {args.out}")
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
