"""Model-family adapters. `load_policy` picks the adapter from the pipeline's class."""

from __future__ import annotations

import json
import os

from .base import FlowPolicy
from .flux import FluxCond, FluxPolicy
from .flux2 import Flux2Cond, Flux2KleinPolicy, Flux2Policy
from .qwen_image import QwenImageCond, QwenImagePolicy
from .qwen_image21 import QwenImage21Policy
from .sd3 import SD3Cond, SD3Policy
from .wan import WanCond, WanPolicy
from .z_image import ZImageCond, ZImagePolicy

ADAPTERS = {"StableDiffusion3Pipeline": SD3Policy, "FluxPipeline": FluxPolicy, "WanPipeline": WanPolicy,
            "QwenImagePipeline": QwenImagePolicy, "QwenImage21Pipeline": QwenImage21Policy, "ZImagePipeline": ZImagePolicy,
            "Flux2KleinPipeline": Flux2KleinPolicy, "Flux2Pipeline": Flux2Policy}


def pipeline_class(path: str) -> str:
    """The diffusers pipeline class a local folder or a hub id declares (`model_index.json`'s
    `_class_name`). A hub id is read from the Hugging Face cache when the hub cannot be reached
    (diffusers' `DiffusionPipeline.load_config`); one that is not cached stops with the command
    that downloads it."""
    path = str(path)
    local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") != 1 or os.path.isdir(path)
    if local:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {path!r} does not exist; pass a diffusers pipeline folder or a hub id "
                                    "(org/name).")
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"model {path!r} has no model_index.json; pass a diffusers pipeline folder "
                                    "(saved with save_pretrained).")
        with open(index) as f:
            return json.load(f).get("_class_name", "")
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(path).get("_class_name", "")
    except OSError:
        raise FileNotFoundError(f"model {path!r} is not in the Hugging Face cache and the hub cannot be reached; "
                                f"download it first (`hf download {path}`) or pass a local pipeline folder.") from None


def load_policy(path: str, **kwargs) -> FlowPolicy:
    """Load a diffusers pipeline directory (or hub id) with the adapter of its family, found from the
    pipeline's own config."""
    cls = pipeline_class(path)
    if cls not in ADAPTERS:
        raise ValueError(f"model {path!r} is a {cls or 'pipeline without a class name'}; flowalign supports "
                         f"{sorted(ADAPTERS)}.")
    return ADAPTERS[cls].from_pretrained(str(path), **kwargs)


__all__ = ["ADAPTERS", "FlowPolicy", "Flux2Cond", "Flux2KleinPolicy", "Flux2Policy", "FluxCond", "FluxPolicy", "QwenImage21Policy", "QwenImageCond", "QwenImagePolicy", "SD3Cond", "SD3Policy", "WanCond", "WanPolicy",
           "ZImageCond", "ZImagePolicy", "load_policy", "pipeline_class"]
