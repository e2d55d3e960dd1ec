"""CLIPScore (Hessel et al. 2021): w * max(cos(image, prompt), 0) with w = 2.5 as in the paper
(`scale` overrides w; `clip: false` keeps negative cosines). backend="open_clip" (model: an open_clip
folder, hub id or architecture with `pretrained`) or backend="transformers" (a CLIPModel checkpoint).
`prefix` is prepended to every prompt: Hessel et al. score "A photo depicts " + caption with ViT-B/32
(model="openai/clip-vit-base-patch32", prefix="A photo depicts "); the defaults (no prefix, ViT-L/14)
make a reward, whose numbers are not comparable with published CLIPScores. Differentiable."""

from __future__ import annotations

import torch
from torch import Tensor

from .clip_common import CLIPSimilarity
from .open_clip_common import OpenCLIPSimilarity


class CLIPScoreReward:
    differentiable = True

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
                 scale: float = 2.5, clip: bool = True, backend: str = "transformers", pretrained: str | None = None,
                 prefix: str = "", **kwargs):
        if backend == "transformers":
            self.sim = CLIPSimilarity(model, processor, scale=1.0, **kwargs)
        elif backend == "open_clip":
            kwargs.setdefault("quick_gelu", True)  # CLIPScore's CLIP is OpenAI's, trained with QuickGELU
            self.sim = OpenCLIPSimilarity(model, pretrained, **kwargs)
        else:
            raise ValueError(f"clip backend {backend!r} is unknown; use 'open_clip' or 'transformers'.")
        self.name, self.scale, self.clip, self.backend, self.prefix = "clip", scale, clip, backend, prefix

    def __call__(self, images: Tensor, prompts, **context) -> Tensor:
        prompts = [self.prefix + p for p in prompts]
        cos = self.sim(images, prompts) if self.backend == "transformers" else self.sim.cosine(images, list(prompts))
        s = self.scale * cos
        return torch.clamp(s, min=0.0) if self.clip else s
