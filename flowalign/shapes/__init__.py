"""The shapes testbed's files, shipped with the package: the pretrained tiny SD3 pipeline
(`model/`), its prompt sets (`prompts/`), the tiny captioner PromptEcho reads (`captioner/`), the
encoders Adv-GRPO's discriminator can read (random `dino/`, the captioner's vision tower
`captioner_vision/`, the self-supervised `dino_ssl/`) and its reference images (`references/`). Paths are absolute, so defaults work from any working directory."""

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
TRAIN_PROMPTS = os.path.join(PROMPTS_DIR, "train.jsonl")
HELDOUT_PROMPTS = os.path.join(PROMPTS_DIR, "heldout.jsonl")
