"""A weighted sum of registered rewards: R = sum_i w_i R_i, each with its own arguments and batch
size; differentiable when every part is. `last_parts` keeps the latest per-reward values (for
logging or per-reward advantages)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import learned


class WeightedReward:
    def __init__(self, weights: dict[str, float], args: dict[str, dict] | None = None,
                 batch_sizes: dict[str, int] | None = None):
        from . import build_reward

        if not weights:
            raise ValueError("reward.args.weights is empty; give e.g. {shapes_geneval: 1.0, jpeg_compressibility: 0.1}.")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.parts = {k: build_reward(k, **(args or {}).get(k, {})) for k in self.weights}
        self.batch_sizes = dict(batch_sizes or {})
        self.differentiable = all(getattr(p, "differentiable", False) for p in self.parts.values())
        self.name = "weighted(" + ",".join(f"{k}={w:g}" for k, w in self.weights.items()) + ")"
        self.last_parts: dict[str, Tensor] = {}
        self.learned = [k for k, p in self.parts.items() if learned(p) is not None]
        self.learns = bool(self.learned)  # the engine trains and checkpoints learned parts (a LearnedReward)

    def update(self, images: Tensor, prompts: Sequence[str] | None = None, *, iteration: int = 0, **context) -> dict:
        stats = {}
        for k in self.learned:
            part = self.parts[k].update(images, prompts, iteration=iteration, **context)
            stats.update({f"{k}/{s}": v for s, v in part.items()})
        return stats

    def trains_generator(self, iteration: int) -> bool:
        """The policy is updated when every learned part's schedule allows it."""
        return all(self.parts[k].trains_generator(iteration) for k in self.learned)

    def state_dict(self) -> dict:
        return {k: self.parts[k].state_dict() for k in self.learned}

    def load_state_dict(self, state: dict) -> None:
        for k in self.learned:
            self.parts[k].load_state_dict(state[k])

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        total, parts = weighted_sum(self.parts, self.weights, images, prompts, self.batch_sizes, **context)
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        return total


def weighted_sum(parts: dict, weights: dict[str, float], images: Tensor, prompts: Sequence[str],
                 batch_sizes: dict[str, int] | None = None, **context) -> tuple[Tensor, dict[str, Tensor]]:
    """(sum_i w_i R_i [B], {name: R_i [B]}) for rewards `parts` (name -> reward), each scored in
    chunks of its batch size (default: the whole batch); list/tuple context is chunked alongside."""
    total, values = 0.0, {}
    for name, r in parts.items():
        bs = (batch_sizes or {}).get(name, images.shape[0])
        vals = []
        for i in range(0, images.shape[0], bs):
            ctx = {k: v[i:i + bs] if isinstance(v, (list, tuple)) else v for k, v in context.items()}
            vals.append(r(images[i:i + bs], list(prompts[i:i + bs]), **ctx).float())
        values[name] = torch.cat(vals)
        total = total + weights[name] * values[name]
    return total, values
