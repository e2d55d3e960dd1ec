"""Adv-GRPO: Flow-GRPO with an adversarial reward. The policy update is Flow-GRPO's; the reward is
the DINO discriminator of reward_models/adversarial.py (alone or inside a weighted reward), whose
head the engine trains after every batch (`reward.update`: hinge loss, reference images positive,
the batch's images negative, k head steps per generator step or while the references score lower)
and saves with every checkpoint (`reward.pt`)."""

from __future__ import annotations

from .flow_grpo import FlowGRPO


class AdvGRPO(FlowGRPO):
    def check_reward(self, reward) -> None:
        if not hasattr(reward, "update"):
            raise ValueError(f"adv_grpo needs a learned reward with an update hook; {getattr(reward, 'name', reward)!r} "
                             "has none (use reward.name=adversarial_dino).")
