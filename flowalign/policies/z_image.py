"""Z-Image adapter: a diffusers ZImagePipeline seen as a FlowPolicy.

The prompt goes through the pipeline's own encoding (its chat template, the text encoder's
second-to-last hidden states, padding tokens dropped), so every prompt has its own number of
tokens; the transformer takes lists of per-sample latents [C, 1, h, w] and embeddings. Z-Image's
transformer is called at t = 1 - sigma and predicts minus the velocity. Guidance: flowalign's scale
g (1 = off) is the usual uncond + g (cond - uncond); ZImagePipeline's `guidance_scale` s means
cond + s (cond - uncond), i.e. s = g - 1 (its CFG renormalisation and truncation options are not
used). Sigmas are the pipeline's default Z-Image grid, time-shifted with the resolution-dependent mu."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import attention_context
from .diffusers_base import DiffusersPolicy


@dataclass
class ZImageCond:
    embeds: list[Tensor]  # per prompt [T_i, D]
    neg: list[Tensor]  # the negative prompt's, one per prompt

    def select(self, rows: Tensor) -> ZImageCond:
        idx = rows.tolist()
        return ZImageCond([self.embeds[i] for i in idx], [self.neg[i] for i in idx])

    def __len__(self) -> int:
        return len(self.embeds)


class ZImagePolicy(DiffusersPolicy):
    family = "z_image"
    pipeline_class = "ZImagePipeline"
    base_defaults = {"num_steps": 9, "guidance": 1.0, "max_sequence_length": 512}  # Z-Image-Turbo: no CFG

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: an embedding must not depend on its batch
            self._cache[p] = self.pipe._encode_prompt(prompt=[p], device=self.device,
                                                      max_sequence_length=self.max_sequence_length)[0]

    def encode(self, prompts) -> ZImageCond:
        prompts = self._cached(prompts)
        neg = self._cache[self.negative_prompt]
        return ZImageCond([self._cache[p] for p in prompts], [neg] * len(prompts))

    def velocity(self, x: Tensor, sigma: Tensor, cond: ZImageCond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, h, w] and sigma [B]; guidance > 1 adds negative-prompt CFG. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        dtype = self.dtype
        x_in = list(x.to(self.device, dtype).unsqueeze(2).unbind(0))
        t = 1.0 - sigma.to(self.device, torch.float32)  # ZImagePipeline: (1000 - timestep) / 1000
        embeds = [e.to(dtype) for e in c.embeds]
        cfg = guidance > 1.0
        if cfg:
            x_in, t, embeds = x_in + x_in, torch.cat([t, t]), embeds + [e.to(dtype) for e in c.neg]
        self.nfe += len(x_in)
        with attention_context(self.attention_backend):
            out = (self.forward_module or self.transformer)(x_in, t, embeds, return_dict=False)[0]
        out = torch.stack([o.float() for o in out]).squeeze(2)
        if cfg:
            pos, neg = out.chunk(2)
            out = neg + guidance * (pos - neg)
        return -out

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        height = height or self.defaults.get("height") or 1024
        width = width or self.defaults.get("width") or 1024
        if height % (2 * f) or width % (2 * f):
            raise ValueError(f"image size {height}x{width} must be a multiple of {2 * f} for z_image.")
        return self.transformer.in_channels, 2 * (height // (2 * f)), 2 * (width // (2 * f))

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """ZImagePipeline's grid: get_default_z_image_sigmas(N) time-shifted with mu from the latent
        sequence length, plus the final 0."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

        _, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        sched.set_timesteps(sigmas=get_default_z_image_sigmas(num_steps), mu=mu, device="cpu")
        return sched.sigmas.to(torch.float32)
