"""The shapes world's Adv-GRPO companions, written once and committed.

    python -m benchmarks.shapes.companions

- flowalign/shapes/references/: 256 rendered scenes of training prompts (PNG), Adv-GRPO's reference
  (real) images;
- flowalign/shapes/dino/: a Dinov2Model in transformers' format (image size 32, patch 4), seeded
  random weights. No pretrained DINOv2 can be fetched here and none fits the 32x32 world, so the
  backbone is a frozen random-feature extractor; the discriminator head learns on top of it;
- flowalign/shapes/captioner_vision/: the trained captioner's CLIP vision tower (CLIPVisionModel), cut
  out of flowalign/shapes/captioner: an encoder that has learnt the world (it reads scenes for the
  captioner), for the discriminator to read instead of the random one;
- flowalign/shapes/references_matched/: two rendered scenes of every prompt of the shapes training sets
  (train.jsonl, train_color_attr.jsonl) and `map.json` {prompt: [file names]}, the prompt-matched
  references of the co-trained PickScore reward (the reference's prompt2img json).

`python -m benchmarks.shapes.companions --vision-tower-only` rewrites the vision tower alone,
`--matched-references-only` the matched references alone."""

from __future__ import annotations

import json
import os
import random
import sys

import torch
from PIL import Image

from flowalign.shapes import CAPTIONER_DIR, CAPTIONER_VISION_DIR, MATCHED_REFERENCES_DIR, PROMPTS_DIR
from flowalign.shapes import DINO_DIR as DINO
from flowalign.shapes import REFERENCES_DIR as REFERENCES
from reward_models.shapes.prompts import prompt_set, read_jsonl
from reward_models.shapes.render import render_prompt


def write_references(out: str = REFERENCES, n: int = 256, seed: int = 0) -> str:
    rows = prompt_set("train", 200, seed=seed)
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        img, _ = render_prompt(rows[rng.randrange(len(rows))], seed=rng.randrange(1 << 30))
        Image.fromarray(img).save(os.path.join(out, f"{i:04d}.png"), optimize=True)
    return out


def write_matched_references(out: str = MATCHED_REFERENCES_DIR, per_prompt: int = 2, seed: int = 0,
                             prompt_files: tuple[str, ...] = ("train.jsonl", "train_color_attr.jsonl")) -> str:
    """`per_prompt` fresh renders of every prompt of the training sets, and map.json {prompt: [files]}."""
    rows: dict[str, dict] = {}
    for name in prompt_files:
        for r in read_jsonl(os.path.join(PROMPTS_DIR, name)):
            rows.setdefault(r["prompt"], r)
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    mapping = {}
    for i, (prompt, row) in enumerate(sorted(rows.items())):
        mapping[prompt] = []
        for j in range(per_prompt):
            img, _ = render_prompt(row, seed=rng.randrange(1 << 30))
            name = f"{i:04d}_{j}.png"
            Image.fromarray(img).save(os.path.join(out, name), optimize=True)
            mapping[prompt].append(name)
    with open(os.path.join(out, "map.json"), "w", encoding="utf-8") as f:
        json.dump(mapping, f, indent=0, sort_keys=True)
    return out


def write_dino(out: str = DINO, seed: int = 0) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=128, mlp_ratio=2)
    Dinov2Model(cfg).save_pretrained(out)
    return out


def write_vision_tower(captioner: str = CAPTIONER_DIR, out: str = CAPTIONER_VISION_DIR) -> str:
    """The captioner's vision tower (a CLIPVisionModel, float32) saved with save_pretrained."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(captioner, dtype=torch.float32)
    model.model.vision_tower.eval().save_pretrained(out)
    return out


def main(argv=None) -> int:
    if "--vision-tower-only" in (argv or []):
        print(f"wrote {write_vision_tower()}")
        return 0
    if "--matched-references-only" in (argv or []):
        print(f"wrote {write_matched_references()}")
        return 0
    print(f"wrote {write_references()}, {write_dino()}, {write_vision_tower()} and {write_matched_references()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
