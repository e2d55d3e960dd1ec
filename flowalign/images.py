"""Saving images and grids."""

from __future__ import annotations

import math
import os

import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> PIL image."""
    from reward_models.base import to_uint8_hwc

    return Image.fromarray(to_uint8_hwc(image.unsqueeze(0))[0])


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> str:
    """Save [N, 3, H, W] images in [0, 1] as one PNG grid (`nrow` per row), upscaled by `scale`."""
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected [N, 3, H, W].")
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    img = to_pil(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return str(path)


def save_video_grid(videos: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1,
                    fps: int = 8) -> str:
    """Save [N, F, 3, H, W] videos in [0, 1] as one animated GIF of grids (one grid per frame)."""
    from torchvision.utils import make_grid

    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"videos have shape {tuple(videos.shape)}; expected [N, F, 3, H, W].")
    nrow = nrow or math.ceil(math.sqrt(videos.shape[0]))
    frames = []
    for f in range(videos.shape[1]):
        img = to_pil(make_grid(videos[:, f].detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0))
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        frames.append(img)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return str(path)


def read_frames(path: str | os.PathLike):
    """The frames of a saved PNG (one) or GIF (each) as uint8 [F, H, W, 3]."""
    import numpy as np
    from PIL import ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
