"""Model-family adapters. `load_policy` picks the adapter from the pipeline's class."""

from __future__ import annotations

import json
import os

from .base import FlowPolicy
from .flux import FluxCond, FluxPolicy
from .qwen_image import QwenImageCond, QwenImagePolicy
from .sd3 import SD3Cond, SD3Policy
from .wan import WanCond, WanPolicy

ADAPTERS = {"StableDiffusion3Pipeline": SD3Policy, "FluxPipeline": FluxPolicy, "WanPipeline": WanPolicy,
            "QwenImagePipeline": QwenImagePolicy}


def load_policy(path: str, **kwargs) -> FlowPolicy:
    """Load a diffusers pipeline directory (or hub id) with the adapter of its family."""
    local = os.path.isabs(str(path)) or str(path).startswith((".", "~")) or str(path).count("/") != 1
    if local and not os.path.isdir(str(path)):
        raise FileNotFoundError(f"model {path!r} does not exist; pass a diffusers pipeline folder or a hub id "
                                "(org/name).")
    if os.path.isdir(str(path)) and not os.path.isfile(os.path.join(str(path), "model_index.json")):
        raise FileNotFoundError(f"model {path!r} has no model_index.json; pass a diffusers pipeline folder "
                                "(saved with save_pretrained).")
    index = os.path.join(str(path), "model_index.json")
    cls = "StableDiffusion3Pipeline"
    if os.path.isfile(index):
        with open(index) as f:
            cls = json.load(f).get("_class_name", cls)
    if cls not in ADAPTERS:
        raise ValueError(f"model {path!r} is a {cls}; flowalign supports {sorted(ADAPTERS)}.")
    return ADAPTERS[cls].from_pretrained(str(path), **kwargs)


__all__ = ["ADAPTERS", "FlowPolicy", "FluxCond", "FluxPolicy", "QwenImageCond", "QwenImagePolicy", "SD3Cond", "SD3Policy", "WanCond", "WanPolicy",
           "load_policy"]
