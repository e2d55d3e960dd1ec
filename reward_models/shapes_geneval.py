"""GenEval reward on the shapes world: the procedural detector and GenEval's rules.

mode="strict": 1 if the image passes GenEval's verdict, else 0.
mode="partial": the fraction of the prompt's clauses satisfied (counts, colours, positions,
exclusions): a dense reward in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from reward_models.geneval_rules import evaluate, require_clauses
from reward_models.shapes.detector import detect

from .base import to_uint8_hwc


class ShapesGenEvalReward:
    differentiable = False

    def __init__(self, mode: str = "partial"):
        if mode not in ("strict", "partial"):
            raise ValueError(f"shapes_geneval mode {mode!r} is unknown; use 'strict' or 'partial'.")
        self.mode = mode
        self.name = f"shapes_geneval_{mode}"

    def __call__(self, images: Tensor, prompts: Sequence[str], *, metadata: Sequence[dict] | None = None,
                 **context) -> Tensor:
        require_clauses(metadata, len(images), "shapes_geneval")
        arr = to_uint8_hwc(images)
        scores = []
        for img, meta in zip(arr, metadata):
            v = evaluate(detect(img), meta)
            scores.append(float(v.correct) if self.mode == "strict" else v.partial)
        return torch.tensor(np.asarray(scores), dtype=torch.float32)
