"""Adv-GRPO: Flow-GRPO with an adversarial reward. The policy update is Flow-GRPO's; the reward is
the DINO discriminator of reward_models/adversarial.py (alone or inside a weighted reward; the
config's validation requires it), whose head the engine trains after every batch
(`reward.update`: hinge loss, reference images positive, the batch's images negative, k head steps
per generator step or while the references score lower) and saves with every checkpoint
(`reward.pt`)."""

from __future__ import annotations

from .flow_grpo import FlowGRPO


class AdvGRPO(FlowGRPO):
    """Flow-GRPO's rollouts, advantages and loss; the learned reward is driven by the engine."""
