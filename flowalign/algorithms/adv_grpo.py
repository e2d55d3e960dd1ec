"""Adv-GRPO: Flow-GRPO with an adversarial reward. The policy update is Flow-GRPO's (this file
registers the FlowGRPO algorithm under its own schema); the reward is the DINO discriminator of
reward_models/adversarial.py or the co-trained PickScore of reward_models/adversarial_pickscore.py
(alone or inside a weighted reward; the schema requires one), a `LearnedReward` the engine trains
after every batch (`reward.update`: reference images positive, the batch's images negative) on the
iterations its schedule gives it (`reward.trains_generator`: the DINO reference's 9 head iterations
then 1 policy iteration; the PickScore reference's discriminator step instead of a policy update
whenever the references score lower), and saves with every checkpoint (`reward.pt`)."""

from __future__ import annotations

from dataclasses import dataclass

from reward_models import reward_names

from .flow_grpo import FlowGRPO, FlowGRPOConfig

ADVERSARIAL = ("adversarial_dino", "adversarial_pickscore")


@dataclass
class AdvGRPOConfig(FlowGRPOConfig):
    name: str = "adv_grpo"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if not set(ADVERSARIAL) & set(reward_names(cfg.reward.name, cfg.reward.args)):
            raise ValueError(f"algorithm.name=adv_grpo needs an adversarial reward ({' or '.join(ADVERSARIAL)}; "
                             f"reward.name={cfg.reward.name!r}); set reward.name to one or add it to "
                             "reward.args.weights.")


ALGORITHM = FlowGRPO  # Flow-GRPO's rollouts, advantages and loss
