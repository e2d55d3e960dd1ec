"""Reward models. `build_reward(name, **kwargs)` constructs one by name; modules are imported only
when their reward is built (no import-time registration)."""

from __future__ import annotations

import importlib
import inspect

from .base import Reward

# name -> "module:Class"
REWARDS: dict[str, str] = {
    "shapes_geneval": "reward_models.shapes_geneval:ShapesGenEvalReward",
    "jpeg_compressibility": "reward_models.compressibility:JpegCompressibility",
    "shapes_soft": "reward_models.shapes_soft:ShapesSoftReward",
    "video_segmental": "reward_models.video:SegmentalVideoReward",
    "pickscore": "reward_models.pickscore:PickScoreReward",
    "clip": "reward_models.clip_score:CLIPScoreReward",
    "weighted": "reward_models.weighted:WeightedReward",
    "adversarial_dino": "reward_models.adversarial:AdversarialDinoReward",
    "adversarial_pickscore": "reward_models.adversarial_pickscore:AdversarialPickScoreReward",
    "geneval": "reward_models.geneval:GenEvalReward",
    "prompt_echo": "reward_models.prompt_echo:PromptEchoReward",
    "hps": "reward_models.hps:HPSv2Reward",
    "aesthetic": "reward_models.aesthetic:AestheticReward",
    "remote": "reward_models.remote:RemoteReward",
}


def build_reward(name: str, **kwargs) -> Reward:
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is unknown; use one of {sorted(REWARDS)}.")
    module, cls = REWARDS[name].split(":")
    klass = getattr(importlib.import_module(module), cls)
    params = inspect.signature(klass.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            known = sorted(set(params) - {"self"})
            raise ValueError(f"reward {name!r} takes no argument {unknown[0]!r} (reward.args.{unknown[0]}); "
                             f"its arguments are {known}.")
    return klass(**kwargs)


def reward_names(name: str, args) -> list[str]:
    """The registered rewards a reward config (name, args) uses: the name, plus a weighted reward's parts."""
    return [name] + (list((args.get("weights") or {}).keys()) if name == "weighted" else [])


__all__ = ["REWARDS", "Reward", "build_reward", "reward_names"]
