"""Run under 2 processes (torchrun): compute Flow-GRPO advantages through the trainer's gather path
for a known global batch whose prompt groups span the two processes, and save each rank's slice."""

import json
import sys

import torch
from accelerate import Accelerator

from flowalign.algorithms import build_algorithm
from flowalign.algorithms.base import gathered
from flowalign.config import load_config

REWARDS = [0.1, 0.9, 0.4, 0.4, 1.0, 0.0, 0.3, 0.7, 0.2, 0.2, 0.9, 0.5]  # 3 prompts x 4 samples
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    cfg = load_config(None, ["algorithm.group_size=4", "algorithm.prompts_per_iteration=3"])
    algo = build_algorithm(cfg.algorithm, cfg.sampler)
    n = len(REWARDS) // acc.num_processes
    lo = acc.process_index * n
    rewards = torch.tensor(REWARDS[lo:lo + n])
    gids = torch.tensor(GROUPS[lo:lo + n])
    _, adv_all, adv_local = gathered(acc, rewards, gids, algo.group_advantages)
    with open(f"{out}/rank{acc.process_index}.json", "w") as f:
        json.dump({"world": acc.num_processes, "backend": str(acc.state.backend), "local": adv_local.tolist(),
                   "all": adv_all.tolist()}, f)
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group: a clean gloo shutdown


if __name__ == "__main__":
    main(sys.argv[1])
