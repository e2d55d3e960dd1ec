"""SD3 / SD3.5 adapter: a diffusers StableDiffusion3Pipeline seen as a FlowPolicy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import samplers

from .diffusers_base import DTYPE_KWARG, DiffusersPolicy, parse_dtype  # noqa: F401  (re-exported)


@dataclass
class SD3Cond:
    """Cached SD3 conditioning for a batch of prompts."""

    embeds: Tensor  # [B, T, D] joint CLIP+T5 token embeddings
    pooled: Tensor  # [B, P] pooled CLIP embeddings
    neg_embeds: Tensor  # [B, T, D] negative-prompt embeddings (for CFG)
    neg_pooled: Tensor  # [B, P]

    def select(self, rows: Tensor) -> SD3Cond:
        rows = rows.to(self.embeds.device)
        return SD3Cond(self.embeds[rows], self.pooled[rows], self.neg_embeds[rows], self.neg_pooled[rows])

    def __len__(self) -> int:
        return self.embeds.shape[0]


class SD3Policy(DiffusersPolicy):
    """Wraps a StableDiffusion3Pipeline: CLIP-L, CLIP-G and T5 conditioning, joint attention."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    # sampling defaults of the family; a checkpoint's flowalign.json overrides them
    base_defaults = {"num_steps": 28, "guidance": 7.0, "max_sequence_length": 256}

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        from diffusers.utils import logging as dlog

        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # truncation to max_sequence_length is by choice, not worth a warning
        try:
            # one prompt at a time: an embedding must not depend on which prompts shared its batch
            # (CPU kernels block differently by batch size), or resumed runs would drift
            for p in prompts:
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    prompt=[p], prompt_2=[p], prompt_3=[p], device=self.device,
                    do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
                )
                self._cache[p] = (embeds[0], pooled[0])
        finally:
            dlog.set_verbosity(level)

    def encode(self, prompts: Sequence[str]) -> SD3Cond:
        """Embeddings of `prompts` and of the negative prompt; each distinct text is encoded once."""
        prompts = self._cached(prompts)
        e = torch.stack([self._cache[p][0] for p in prompts])
        q = torch.stack([self._cache[p][1] for p in prompts])
        ne, nq = self._cache[self.negative_prompt]
        return SD3Cond(e, q, ne.expand_as(e), nq.expand_as(q))

    # -- model -----------------------------------------------------------------------------------
    def velocity(self, x: Tensor, sigma: Tensor, cond: SD3Cond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, h, w] and sigma [B]; classifier-free guidance when guidance > 1. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        return self._guided_forward(x, sigma, guidance, {"encoder_hidden_states": c.embeds, "pooled_projections": c.pooled},
                                    {"encoder_hidden_states": c.neg_embeds, "pooled_projections": c.neg_pooled})

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        height = height or self.pipe.default_sample_size * f
        width = width or self.pipe.default_sample_size * f
        if height % (f * self.transformer.config.patch_size) or width % (f * self.transformer.config.patch_size):
            raise ValueError(f"image size {height}x{width} must be a multiple of "
                             f"{f * self.transformer.config.patch_size} for this model.")
        return self.transformer.config.in_channels, height // f, width // f

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """The pipeline scheduler's [num_steps + 1] sigmas (static shift or resolution-dependent mu)."""
        cfg = self.pipe.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            _, h, w = self.latent_shape(height, width)
            p = self.transformer.config.patch_size
            mu = samplers.dynamic_shift_mu((h // p) * (w // p), cfg.get("base_image_seq_len", 256),
                                           cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                           cfg.get("max_shift", 1.16))
            return samplers.flow_match_sigmas(num_steps, mu=mu, time_shift_kind=cfg.get("time_shift_type", "exponential"),
                                              num_train_timesteps=cfg.num_train_timesteps)
        return samplers.flow_match_sigmas(num_steps, shift=cfg.shift, num_train_timesteps=cfg.num_train_timesteps)
