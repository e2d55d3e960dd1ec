"""The LAION aesthetic predictor (improved-aesthetic-predictor, v2): an MLP on the L2-normalised CLIP
ViT-L/14 image embedding, 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between the first layers,
no activations, as released), giving a 1-10 score. The CLIP runs through open_clip
(clip="ViT-L-14", clip_pretrained=the OpenAI weights, or an open_clip folder); `head` is the released
state dict (sac+logos+ava1-l14-linearMSE.pth). Layer sizes are read from the state dict. The
prompt is ignored. Differentiable."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .open_clip_common import encode_images, load_open_clip


class AestheticMLP(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < 3:  # Dropout after the first three linears (0.2, 0.2, 0.1 in training; identity in eval)
                layers.append(nn.Dropout(0.2 if i < 2 else 0.1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)

    @staticmethod
    def dims_from_state_dict(sd: dict) -> list[int]:
        ws = [sd[k] for k in sorted((k for k in sd if k.endswith(".weight")),
                                    key=lambda k: int(k.split(".")[1]))]
        return [ws[0].shape[1]] + [w.shape[0] for w in ws]


class AestheticReward:
    differentiable = True

    def __init__(self, head: str = "sac+logos+ava1-l14-linearMSE.pth", clip: str = "ViT-L-14",
                 clip_pretrained: str | None = "openai", device: str | None = None, dtype: str = "float32",
                 batch_size: int = 32, quick_gelu: bool = True):
        if not os.path.isfile(head):
            raise FileNotFoundError(f"aesthetic head {head!r} does not exist; download the LAION predictor's state "
                                    "dict (sac+logos+ava1-l14-linearMSE.pth) and pass its path as head=.")
        # the predictor was trained on OpenAI's ViT-L/14 embeddings: QuickGELU, as OpenAI's CLIP
        self.model, _, self.preprocess, self.device = load_open_clip(clip, clip_pretrained, device=device, dtype=dtype,
                                                                     quick_gelu=quick_gelu)
        sd = torch.load(head, map_location="cpu", weights_only=True)
        self.head = AestheticMLP(AestheticMLP.dims_from_state_dict(sd))
        self.head.load_state_dict(sd)
        self.head = self.head.to(self.device).eval().requires_grad_(False)
        self.batch_size, self.name = batch_size, "aesthetic"

    def __call__(self, images: Tensor, prompts=None, **context) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            out.append(self.head(encode_images(self.model, self.preprocess, images[i:i + self.batch_size])))
        return torch.cat(out).float()
