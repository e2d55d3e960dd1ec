"""Adv-GRPO: Flow-GRPO with an adversarial reward. The policy update is Flow-GRPO's (this file
registers the FlowGRPO algorithm under its own schema); the reward is the DINO discriminator of
reward_models/adversarial.py (alone or inside a weighted reward; the schema requires it), a
`LearnedReward` whose head the engine trains after every batch (`reward.update`: hinge loss,
reference images positive, the batch's images negative) on the iterations its schedule gives it
(the reference's: 9 head iterations, then 1 policy iteration; `reward.trains_generator`), and
saves with every checkpoint (`reward.pt`)."""

from __future__ import annotations

from dataclasses import dataclass

from reward_models import reward_names

from .flow_grpo import FlowGRPO, FlowGRPOConfig


@dataclass
class AdvGRPOConfig(FlowGRPOConfig):
    name: str = "adv_grpo"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if "adversarial_dino" not in reward_names(cfg.reward.name, cfg.reward.args):
            raise ValueError(f"algorithm.name=adv_grpo needs the adversarial_dino reward (reward.name="
                             f"{cfg.reward.name!r}); set reward.name=adversarial_dino or add it to reward.args.weights.")


ALGORITHM = FlowGRPO  # Flow-GRPO's rollouts, advantages and loss
