"""Adv-GRPO's PickScore adversarial reward (showlab/Adv-GRPO `scripts/train_sd3_fast_pickscore.py`,
`adv_grpo/pickscore_scorer.py`, `adv_grpo/pick_score_training.py`): the reward is a CLIP model's
text-image score, and the CLIP model is co-trained as a prompt-conditioned discriminator that prefers
each prompt's reference images to the images the policy generates for it.

Reward of an image x for a prompt p, on unit-normalised CLIP features t(p) and v(x):
    R(x, p) = scale * exp(logit_scale) * <t(p), v(x)>,     scale = 1/26 (the reference's "norm to 0-1").
Discriminator loss (PickScore's CLIPCriterion without in-batch negatives, the reference image of the
prompt preferred, label 1 / 0): per prompt of the batch, with r its reference and g the generated image,
    L = mean over pairs of CE([ls <t, v(r)>, ls <t, v(g)>], 0),    ls = exp(logit_scale).
Only the last `tune_layers` layers of the vision encoder train (the reference's `tune_layer = -1` of
config/grpo.py `pickscore_cotrain_sd3_fast`; the text tower, the projections and the rest stay
frozen), with Adam (its d_lr 5e-6, betas (0.5, 0.999)).

Schedules: `reference` (default): after a batch is scored, when its prompts' references score below the
batch on average, the discriminator takes one step and the policy is not updated that iteration
(`trains_generator` is False; the reference's `continue`); otherwise the policy is updated and the
discriminator rests. `k_steps`: k discriminator steps on every batch and a policy update every iteration.
References are matched by prompt: `reference_map` is a JSON file {prompt: [file names in reference_dir]}
(the reference's prompt2img json), cycled through in batch order.

The engine calls `update(images, prompts, iteration=)` after scoring each batch and saves `state_dict()`
(the trained layers, the optimiser, the step count) with every checkpoint. Nothing is drawn at random:
the references are matched by prompt, so the reward has no random state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .adversarial import load_reference_map, reference_batch
from .clip_common import CLIPPreprocess, features, load_clip

SCHEDULES = ("reference", "k_steps")
REFERENCE_SCALE = 1 / 26


def clip_scores(text: Tensor, image: Tensor, logit_scale: Tensor) -> Tensor:
    """exp(logit_scale) <t_i, v_i> on unit-normalised rows: the score of each (prompt, image) pair."""
    return logit_scale.exp() * (F.normalize(text, dim=-1) * F.normalize(image, dim=-1)).sum(-1)


def preference_loss(text: Tensor, real: Tensor, fake: Tensor, logit_scale: Tensor) -> Tensor:
    """PickScore's pairwise loss with the real (reference) image preferred: mean over rows of
    CE([score(t, real), score(t, fake)], 0) = mean softplus(score(t, fake) - score(t, real))."""
    logits = torch.stack([clip_scores(text, real, logit_scale), clip_scores(text, fake, logit_scale)], dim=-1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


class AdversarialPickScoreReward:
    learns = True  # a LearnedReward: the engine trains it after every batch
    differentiable = True

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", reference_dir: str | None = None, *,
                 reference_map: str | None = None, tune_layers: int = 1, lr: float = 5e-6,
                 betas: Sequence[float] = (0.5, 0.999), schedule: str = "reference", k: int = 1,
                 scale: float = REFERENCE_SCALE, batch_size: int = 16, device: str | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is unknown; use one of {', '.join(SCHEDULES)}.")
        if not reference_dir or not reference_map:
            raise ValueError("adversarial_pickscore needs reward.args.reference_dir and reward.args.reference_map "
                             "(a JSON file {prompt: [file names in reference_dir]}): its discriminator compares each "
                             "generated image with a reference image of the same prompt.")
        self.model, self.processor, self.device = load_clip(model, processor, device=device, dtype="float32")
        layers = self.model.vision_model.encoder.layers
        if not 1 <= tune_layers <= len(layers):
            raise ValueError(f"tune_layers={tune_layers} must be between 1 and the vision encoder's {len(layers)} "
                             "layers.")
        self.tuned = [p for layer in layers[len(layers) - tune_layers:] for p in layer.parameters()]
        for p in self.tuned:
            p.requires_grad_(True)
        self.tuned_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.tuned, lr=lr, betas=tuple(betas))
        self.preprocess = CLIPPreprocess.from_processor(self.processor.image_processor)
        self.schedule, self.k, self.scale, self.batch_size = schedule, k, scale, batch_size
        self.reference_dir = reference_dir
        self.reference_map = load_reference_map(reference_map, reference_dir)
        self.name = "adversarial_pickscore"
        self.updates = 0
        self.discriminator_iteration: int | None = None  # the iteration whose batch trained the discriminator

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        tok = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            return features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                         attention_mask=tok["attention_mask"].to(self.device)))

    def image_features(self, images: Tensor) -> Tensor:
        return features(self.model.get_image_features(pixel_values=self.preprocess(images.to(self.device)).float()))

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"adversarial_pickscore scores {images.shape[0]} images against {len(prompts)} prompts; "
                             "pass one prompt per image.")
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            t = self.text_features(prompts[i:i + self.batch_size])
            v = self.image_features(images[i:i + self.batch_size])
            out.append(self.scale * clip_scores(t, v, self.model.logit_scale))
        return torch.cat(out).float()

    def discriminator_step(self, real: Tensor, fake: Tensor, prompts: Sequence[str]) -> float:
        """One Adam step of the preference loss (reference preferred) on matched pairs; returns the loss."""
        t = self.text_features(prompts)
        loss = preference_loss(t, self.image_features(real), self.image_features(fake), self.model.logit_scale)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        return float(loss.detach())

    def trains_generator(self, iteration: int) -> bool:
        """False on an iteration whose batch trained the discriminator under the reference schedule."""
        return self.schedule != "reference" or self.discriminator_iteration != iteration

    def update(self, images: Tensor, prompts: Sequence[str] | None = None, *, iteration: int, **context) -> dict:
        """Called by the engine after each batch is scored: train the discriminator as the schedule says."""
        fake = images.detach()
        real = reference_batch(fake, prompts, None, self.reference_map, self.reference_dir, None)
        if self.schedule == "reference":
            with torch.no_grad():
                real_mean, fake_mean = self(real, prompts).mean(), self(fake, prompts).mean()
            if real_mean >= fake_mean:
                return {"disc_loss": 0.0, "disc_step": 0.0, "reference_reward": float(real_mean)}
            self.discriminator_iteration = iteration
            return {"disc_loss": self.discriminator_step(real, fake, prompts), "disc_step": 1.0,
                    "reference_reward": float(real_mean)}
        losses = [self.discriminator_step(real, fake, prompts) for _ in range(self.k)]
        return {"disc_loss": sum(losses) / len(losses), "disc_step": float(len(losses))}

    def state_dict(self) -> dict:
        params = dict(self.model.named_parameters())
        return {"tuned": {n: params[n].detach().clone() for n in self.tuned_names}, "opt": self.opt.state_dict(),
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, value in state["tuned"].items():
                params[n].copy_(value)
        self.opt.load_state_dict(state["opt"])
        self.updates = state["updates"]
