"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences; reward =
logit_scale * cos(image, prompt) (about 20-23 for good images). Differentiable."""

from __future__ import annotations

from .clip_common import CLIPSimilarity


class PickScoreReward(CLIPSimilarity):
    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", **kwargs):
        super().__init__(model, processor, **kwargs)
        self.name = "pickscore"
