"""Wan2.1 text-to-video adapter: a diffusers WanPipeline seen as a FlowPolicy over video latents
[B, C, F, h, w] (F latent frames = (num_frames - 1) / temporal factor + 1). Classifier-free guidance
with the negative prompt, the Wan VAE's per-channel latent normalisation, decode to videos
[B, F, 3, H, W] in [0, 1]. The samplers work on any latent shape, so rollouts, log-probs and
training over videos need nothing else. Real Wan checkpoints ship a UniPC scheduler: flowalign
integrates the same flow with Euler / SDE steps on the scheduler's shifted grid (`flow_shift`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import samplers

from .diffusers_base import DiffusersPolicy


@dataclass
class WanCond:
    embeds: Tensor  # [B, T, D] UMT5 embeddings (padded with zeros after the prompt)
    neg_embeds: Tensor

    def select(self, rows: Tensor) -> WanCond:
        rows = rows.to(self.embeds.device)
        return WanCond(self.embeds[rows], self.neg_embeds[rows])

    def __len__(self) -> int:
        return self.embeds.shape[0]


def decode_normalised(vae, latents: Tensor) -> Tensor:
    """Decode [B, C, F, h, w] latents of a VAE with per-channel latents_mean / latents_std (Wan,
    Qwen-Image): z * std + mean, then vae.decode -> [B, 3, frames, H, W] fp32 in [-1, 1]."""
    z = latents.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
    return vae.decode(z * std + mean, return_dict=False)[0].float()


class WanPolicy(DiffusersPolicy):
    family = "wan"
    pipeline_class = "WanPipeline"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    base_defaults = {"num_steps": 50, "guidance": 5.0, "max_sequence_length": 226, "num_frames": 81}

    def __init__(self, pipe, **kwargs):
        super().__init__(pipe, **kwargs)
        self.num_frames = self.defaults["num_frames"]

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: an embedding must not depend on its batch
            embeds, _ = self.pipe.encode_prompt(prompt=[p], do_classifier_free_guidance=False,
                                                max_sequence_length=self.max_sequence_length, device=self.device)
            self._cache[p] = (embeds[0], None)

    def encode(self, prompts) -> WanCond:
        prompts = self._cached(prompts)
        e = torch.stack([self._cache[p][0] for p in prompts])
        return WanCond(e, self._cache[self.negative_prompt][0].expand_as(e))

    def velocity(self, x: Tensor, sigma: Tensor, cond: WanCond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, F, h, w] and sigma [B]; CFG when guidance > 1. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        return self._guided_forward(x, sigma, guidance, {"encoder_hidden_states": c.embeds},
                                    {"encoder_hidden_states": c.neg_embeds})

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, C, F, h, w] -> videos [B, frames, 3, H, W] in [0, 1], fp32."""
        video = decode_normalised(self.pipe.vae, latents.to(self.device))  # [B, 3, frames, H, W]
        return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    def latent_shape(self, height: int | None = None, width: int | None = None,
                     num_frames: int | None = None) -> tuple[int, int, int, int]:
        sp, tp = self.pipe.vae_scale_factor_spatial, self.pipe.vae_scale_factor_temporal
        height = height or self.defaults.get("height", 480)
        width = width or self.defaults.get("width", 832)
        frames = num_frames or self.num_frames
        ph, pw = self.transformer.config.patch_size[1:]
        if height % (sp * ph) or width % (sp * pw):
            raise ValueError(f"video size {height}x{width} must be a multiple of {sp * ph}x{sp * pw} for this model.")
        if (frames - 1) % tp:
            raise ValueError(f"num_frames={frames} must be 1 + a multiple of {tp} (e.g. {tp * ((frames - 1) // tp) + 1}).")
        return self.transformer.config.in_channels, (frames - 1) // tp + 1, height // sp, width // sp

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        cfg = self.pipe.scheduler.config
        shift = cfg.get("shift", None) or cfg.get("flow_shift", None) or 1.0
        return samplers.flow_match_sigmas(num_steps, shift=shift, num_train_timesteps=cfg.num_train_timesteps)
