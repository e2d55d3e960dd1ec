"""CLIPScore (Hessel et al. 2021) with a transformers CLIP checkpoint: w * max(cos(image, prompt), 0)
with w = 2.5 as in the paper (`scale` overrides w; `clip: false` keeps negative cosines).
Differentiable."""

from __future__ import annotations

import torch
from torch import Tensor

from .clip_common import CLIPSimilarity


class CLIPScoreReward(CLIPSimilarity):
    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
                 scale: float = 2.5, clip: bool = True, **kwargs):
        super().__init__(model, processor, scale=scale, **kwargs)
        self.name, self.clip = "clip", clip

    def __call__(self, images: Tensor, prompts, **context) -> Tensor:
        s = super().__call__(images, prompts, **context)
        return torch.clamp(s, min=0.0) if self.clip else s
