"""HPSv2.1 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human preferences; the score is
cos(image, prompt) of its embeddings (ReNO's HPS loss is 1 - score). Load it as
model="ViT-H-14", pretrained="HPS_v2.1_compressed.pt" (the released state dict), or any open_clip
folder/hub id. Images are preprocessed as HPSv2's `img_score.py` does (`light_augmentation`: resize
the longest side, pad black to a square), so non-square generations are scored whole;
`resize: crop` (shortest side, centre crop) is the option. Differentiable."""

from __future__ import annotations

from torch import Tensor

from .open_clip_common import OpenCLIPSimilarity


class HPSv2Reward(OpenCLIPSimilarity):
    def __init__(self, model: str = "ViT-H-14", pretrained: str | None = "HPS_v2.1_compressed.pt", *,
                 resize: str = "pad", **kwargs):
        super().__init__(model, pretrained, resize=resize, **kwargs)
        self.name = "hps"

    def __call__(self, images: Tensor, prompts, **context) -> Tensor:
        return self.cosine(images, list(prompts))
