"""One file per algorithm; `build_algorithm` picks it by `algorithm.name`."""

from __future__ import annotations

from .adv_grpo import AdvGRPO
from .branch_grpo import BranchGRPO
from .dense_grpo import DenseGRPO
from .flow_grpo import FlowGRPO

ALGORITHMS = {"flow_grpo": FlowGRPO, "dense_grpo": DenseGRPO, "branch_grpo": BranchGRPO, "adv_grpo": AdvGRPO}


def build_algorithm(algo_cfg, sampler_cfg):
    if algo_cfg.name not in ALGORITHMS:
        raise ValueError(f"algorithm.name={algo_cfg.name!r} is unknown; use one of {sorted(ALGORITHMS)}.")
    return ALGORITHMS[algo_cfg.name](algo_cfg, sampler_cfg)


__all__ = ["ALGORITHMS", "AdvGRPO", "BranchGRPO", "DenseGRPO", "FlowGRPO", "build_algorithm"]
