"""The shapes testbed's files, shipped with the package: the pretrained tiny SD3 pipeline
(`model/`), its prompt sets (`prompts/`), the tiny captioner PromptEcho reads (`captioner/`), the
encoders Adv-GRPO's discriminator can read (random `dino/`, the captioner's vision tower
`captioner_vision/`, the self-supervised `dino_ssl/`) and its reference images (`references/`), the
CLIP model of the co-trained PickScore reward (`clip/`) and its prompt-matched references
(`references_matched/`, with `map.json`). Paths are absolute, so defaults work from any working
directory."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
PROMPTS_DIR = os.path.join(HERE, "prompts")
CAPTIONER_DIR = os.path.join(HERE, "captioner")
DINO_DIR = os.path.join(HERE, "dino")
DINO_SSL_DIR = os.path.join(HERE, "dino_ssl")
CAPTIONER_VISION_DIR = os.path.join(HERE, "captioner_vision")
REFERENCES_DIR = os.path.join(HERE, "references")
CLIP_DIR = os.path.join(HERE, "clip")
MATCHED_REFERENCES_DIR = os.path.join(HERE, "references_matched")
REFERENCE_MAP = os.path.join(MATCHED_REFERENCES_DIR, "map.json")
TRAIN_PROMPTS = os.path.join(PROMPTS_DIR, "train.jsonl")
HELDOUT_PROMPTS = os.path.join(PROMPTS_DIR, "heldout.jsonl")
