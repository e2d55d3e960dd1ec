"""The seed arithmetic of a run, in one place. Every random stream of a training run derives from
(run.seed, iteration), so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import torch


def iteration_seed(seed: int, iteration: int) -> int:
    """The integer the streams of one iteration derive from."""
    return seed * 1_000_003 + iteration


def rollout_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The generator of process `rank`'s rollouts and minibatch order at `iteration`."""
    return torch.Generator().manual_seed(iteration_seed(seed, iteration) * 131 + rank)


def group_noise_seed(seed: int, iteration: int, group: int) -> int:
    """The seed of prompt group `group`'s shared initial noise (the same on every process)."""
    return iteration_seed(seed, iteration) * 100_003 + group


def sde_window_seed(seed: int, iteration: int) -> int:
    """The seed of Flow-GRPO-Fast's random SDE window at `iteration` (the same on every process)."""
    return iteration_seed(seed, iteration) * 7 + 3


SAMPLE_GRID_OFFSET = 12345  # sample grids use run.seed + this, the same noise at every grid
CALIBRATION_PROMPT_OFFSET = 7919  # DenseGRPO's calibration draws prompts with run.seed + this


def sample_seed(seed: int, iteration: int, sample: int) -> int:
    """The seed of sample `sample`'s own streams at `iteration` (its index in the whole batch, the
    same whichever process holds it): NFT's initial noise, timesteps and re-noising."""
    return iteration_seed(seed, iteration) * 1_000_033 + 17 * sample + 5
