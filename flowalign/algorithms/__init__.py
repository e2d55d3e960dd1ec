"""The algorithm registry: name -> (config schema, algorithm class). One file per algorithm holds
both; its schema (a dataclass, the `algorithm.*` section of a config) validates itself with
`Schema.validate(cfg)`. Adding an algorithm: a file here, a line below, a config, a test."""

from __future__ import annotations

from typing import NamedTuple

from . import adv_grpo
from .base import Advantages, LocalComm
from .branch_grpo import BranchGRPO, BranchGRPOConfig
from .dense_grpo import DenseGRPO, DenseGRPOConfig
from .flow_grpo import FlowGRPO, FlowGRPOConfig
from .nft import NFT, NFTConfig


class Registered(NamedTuple):
    schema: type  # a dataclass with a `validate(cfg)` classmethod
    algorithm: type  # built as algorithm(algo_cfg, sampler_cfg, part_weights=...)


ALGORITHMS: dict[str, Registered] = {
    "flow_grpo": Registered(FlowGRPOConfig, FlowGRPO),
    "dense_grpo": Registered(DenseGRPOConfig, DenseGRPO),
    "branch_grpo": Registered(BranchGRPOConfig, BranchGRPO),
    "adv_grpo": Registered(adv_grpo.AdvGRPOConfig, adv_grpo.ALGORITHM),
    "nft": Registered(NFTConfig, NFT),
}


def registered(name: str) -> Registered:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name={name!r} is unknown; use one of {sorted(ALGORITHMS)}.")
    return ALGORITHMS[name]


def build_algorithm(algo_cfg, sampler_cfg, part_weights=None):
    """The algorithm of `algo_cfg.name`; `part_weights` are a weighted reward's weights, which
    algorithm.reward_aggregation=advantage needs."""
    return registered(algo_cfg.name).algorithm(algo_cfg, sampler_cfg, part_weights=part_weights)


__all__ = ["ALGORITHMS", "Advantages", "BranchGRPO", "DenseGRPO", "FlowGRPO", "LocalComm", "NFT", "Registered",
           "build_algorithm", "registered"]
