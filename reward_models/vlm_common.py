"""Loading a frozen transformers image-text-to-text model (Qwen2.5-VL, LLaVA-style, ...) and its
processor, for PromptEcho and the DenseAlignBench judge."""

from __future__ import annotations

import torch

from .base import default_device
from .clip_common import check_local


def load_vlm(path: str, what: str, device: str | None = None, dtype: str = "float32"):
    """-> (model in eval mode without gradients, processor with right padding, device)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_local(path, what)
    dev = default_device(device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
        processor = AutoProcessor.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"could not load the {what} {path!r}: {str(e).splitlines()[0]}; pass a local folder "
                                "saved with save_pretrained or a hub id.") from None
    processor.tokenizer.padding_side = "right"  # answers sit where an unpadded forward puts them
    return model.to(dev).eval().requires_grad_(False), processor, dev
