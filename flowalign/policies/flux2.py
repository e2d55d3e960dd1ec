"""FLUX.2 [klein] adapter: a diffusers Flux2KleinPipeline seen as a FlowPolicy.

The policy's latent is the pipeline's own noise space: the VAE latent patchified 2x2 into
[4C, h/2, w/2] and normalised by the VAE's batch-norm statistics; `velocity` flattens it into the
token sequence [B, h/2 * w/2, 4C] with FLUX.2's 4-axis position ids (T, H, W, L) and `decode`
undoes the normalisation and the patches before the VAE. Text: the pipeline's Qwen3 embeddings
(hidden states of `text_encoder_out_layers`, stacked). Guidance: klein has no guidance embedding;
guidance > 1 is classifier-free guidance with the empty prompt, as the pipeline does, except for a
step-distilled checkpoint (`is_distilled`), which the pipeline always runs without CFG. Sigmas:
linspace(1, 1/N, N) time-shifted with FLUX.2's empirical mu (image tokens and step count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..attention import attention_context
from .diffusers_base import DiffusersPolicy


@dataclass
class Flux2Cond:
    embeds: Tensor  # [B, T, D]
    text_ids: Tensor  # [B, T, 4]
    neg_embeds: Tensor
    neg_text_ids: Tensor

    def select(self, rows: Tensor) -> Flux2Cond:
        rows = rows.to(self.embeds.device)
        return Flux2Cond(self.embeds[rows], self.text_ids[rows], self.neg_embeds[rows], self.neg_text_ids[rows])

    def __len__(self) -> int:
        return self.embeds.shape[0]


class Flux2KleinPolicy(DiffusersPolicy):
    family = "flux2_klein"
    pipeline_class = "Flux2KleinPipeline"
    base_defaults = {"num_steps": 4, "guidance": 1.0, "max_sequence_length": 512}  # klein: 4 distilled steps
    text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)  # the pipeline's default

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: an embedding must not depend on its batch
            embeds, ids = self.pipe.encode_prompt(prompt=[p], device=self.device,
                                                  max_sequence_length=self.max_sequence_length,
                                                  text_encoder_out_layers=self.text_encoder_out_layers)
            self._cache[p] = (embeds[0], ids[0])

    def encode(self, prompts) -> Flux2Cond:
        prompts = self._cached(prompts)
        e = torch.stack([self._cache[p][0] for p in prompts])
        ids = torch.stack([self._cache[p][1] for p in prompts])
        ne, nids = self._cache[self.negative_prompt]
        return Flux2Cond(e, ids, ne.expand_as(e), nids.expand_as(ids))

    def _forward(self, tokens: Tensor, t: Tensor, embeds: Tensor, text_ids: Tensor, img_ids: Tensor) -> Tensor:
        self.nfe += tokens.shape[0]
        with attention_context(self.attention_backend):
            return (self.forward_module or self.transformer)(
                hidden_states=tokens, timestep=t, guidance=None, encoder_hidden_states=embeds.to(self.dtype),
                txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]

    def velocity(self, x: Tensor, sigma: Tensor, cond: Flux2Cond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, 4C, h, w] and sigma [B]; guidance > 1 adds CFG (not for distilled checkpoints). fp32 out."""
        c = cond if rows is None else cond.select(rows)
        B, C, h, w = x.shape
        tokens = x.to(self.device, self.dtype).reshape(B, C, h * w).permute(0, 2, 1)
        img_ids = self.pipe._prepare_latent_ids(x).to(self.device)
        t = sigma.to(self.device, self.dtype)  # the pipeline passes timestep / 1000 = sigma
        out = self._forward(tokens, t, c.embeds, c.text_ids, img_ids)
        if guidance > 1.0 and not self.pipe.config.get("is_distilled", False):
            neg = self._forward(tokens, t, c.neg_embeds, c.neg_text_ids, img_ids)
            out = neg + guidance * (out - neg)
        return out.float().permute(0, 2, 1).reshape(B, C, h, w)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        height = height or self.defaults.get("height") or self.pipe.default_sample_size * f
        width = width or self.defaults.get("width") or self.pipe.default_sample_size * f
        if height % (2 * f) or width % (2 * f):
            raise ValueError(f"image size {height}x{width} must be a multiple of {2 * f} for flux2_klein.")
        return self.transformer.config.in_channels, height // (2 * f), width // (2 * f)

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        _, h, w = self.latent_shape(height, width)
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps),
                            mu=compute_empirical_mu(image_seq_len=h * w, num_steps=num_steps), device="cpu")
        return sched.sigmas.to(torch.float32)

    def decode(self, latents: Tensor) -> Tensor:
        """Patchified, normalised latents [B, 4C, h, w] -> images [B, 3, H, W] in [0, 1], fp32."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
        z = self.pipe._unpatchify_latents(z * std + mean)
        return (vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
