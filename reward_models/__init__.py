"""Reward models. `build_reward(name, **kwargs)` constructs one by name; modules are imported only
when their reward is built (no import-time registration)."""

from __future__ import annotations

import importlib

from .base import Reward

# name -> "module:Class"
REWARDS: dict[str, str] = {
    "shapes_geneval": "reward_models.shapes_geneval:ShapesGenEvalReward",
    "jpeg_compressibility": "reward_models.compressibility:JpegCompressibility",
}


def build_reward(name: str, **kwargs) -> Reward:
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is unknown; use one of {sorted(REWARDS)}.")
    module, cls = REWARDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["REWARDS", "Reward", "build_reward"]
