"""Shared pieces of the CLIP-based rewards (transformers CLIPModel): loading from a local directory
or hub id with a clear error, and torch-only preprocessing so gradients reach the image."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import default_device


def check_local(path: str, what: str, fix: str = "pass a local directory saved with save_pretrained or a hub id") -> None:
    """A path that looks local (absolute, ./ or ../, or more than one '/') must exist; hub ids
    ("owner/name") are left to the loader. `fix` ends the error sentence."""
    looks_local = os.path.isabs(path) or path.startswith(".") or path.count("/") > 1
    if looks_local and not os.path.exists(path):
        raise FileNotFoundError(f"{what} checkpoint {path!r} does not exist; {fix}.")


def load_clip(model: str, processor: str | None, device: str | None, dtype: str):
    from transformers import AutoProcessor, CLIPModel

    check_local(model, "CLIP")
    check_local(processor or model, "processor")
    dev = default_device(device)
    try:
        m = CLIPModel.from_pretrained(model, dtype=getattr(torch, dtype)).to(dev).eval().requires_grad_(False)
        proc = AutoProcessor.from_pretrained(processor or model)
    except OSError as e:
        raise FileNotFoundError(f"could not load CLIP checkpoint {model!r} (processor {processor or model!r}): "
                                f"{str(e).splitlines()[0]}; pass a local directory or a reachable hub id.") from None
    return m, proc, dev


def features(out) -> Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if isinstance(out, Tensor) else out.pooler_output


class CLIPPreprocess:
    """Differentiable CLIP preprocessing in torch, images [B, 3, H, W] in [0, 1] -> normalised pixels.
    `resize='crop'`: resize the shortest side to the crop size (bicubic, antialiased) and centre-crop,
    CLIPImageProcessor's steps. `resize='pad'`: resize the longest side to the size and pad black to a
    square, centred (HPSv2's `ResizeMaxSize` with `light_augmentation`), so a non-square image is
    scored whole. float64 images stay float64."""

    def __init__(self, size: int, mean, std, resize: str = "crop"):
        if resize not in ("crop", "pad"):
            raise ValueError(f"resize {resize!r} is unknown; use 'crop' or 'pad'.")
        self.size, self.resize = int(size), resize
        self.mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)

    @classmethod
    def from_processor(cls, image_processor) -> CLIPPreprocess:
        """From a transformers CLIPImageProcessor."""
        crop = image_processor.crop_size
        size = int(crop) if isinstance(crop, (int, float)) else int(crop["height"])  # dict or SizeDict
        return cls(size, image_processor.image_mean, image_processor.image_std)

    def __call__(self, images: Tensor) -> Tensor:
        x = images if images.dtype == torch.float64 else images.float()
        _, _, h, w = x.shape
        if self.resize == "pad":
            s = self.size / max(h, w)
            nh, nw = round(h * s), round(w * s)
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            ph, pw = self.size - nh, self.size - nw
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        else:
            s = self.size / min(h, w)
            nh, nw = max(self.size, round(h * s)), max(self.size, round(w * s))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
            x = x[:, :, top:top + self.size, left:left + self.size]
        return (x - self.mean.to(x)) / self.std.to(x)


class CLIPSimilarity:
    """scale * cos(image, text) with a transformers CLIPModel, batched; differentiable in the image."""

    differentiable = True

    def __init__(self, model: str, processor: str | None = None, *, device: str | None = None,
                 dtype: str = "float32", batch_size: int = 32, scale: float | None = None):
        self.model, self.processor, self.device = load_clip(model, processor, device, dtype)
        self.preprocess = CLIPPreprocess.from_processor(self.processor.image_processor)
        self.batch_size = batch_size
        self.scale = scale

    def _scale(self) -> Tensor:
        return torch.tensor(self.scale) if self.scale is not None else self.model.logit_scale.exp().float()

    def __call__(self, images: Tensor, prompts, **context) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            img = self.preprocess(images[i:i + self.batch_size].to(self.device))
            tok = self.processor.tokenizer(list(prompts[i:i + self.batch_size]), padding=True, truncation=True,
                                           max_length=77, return_tensors="pt").to(self.device)
            ie = features(self.model.get_image_features(pixel_values=img.to(self.model.dtype))).float()
            te = features(self.model.get_text_features(**tok)).float()
            ie, te = ie / ie.norm(dim=-1, keepdim=True), te / te.norm(dim=-1, keepdim=True)
            out.append(self._scale().to(ie.device) * (ie * te).sum(-1))
        return torch.cat(out).float()
