"""FLUX.2 adapters: diffusers' Flux2KleinPipeline ([klein]) and Flux2Pipeline ([dev]) seen as
FlowPolicies.

Both share the latent space, the transformer call and the sigma schedule (module-level functions
below). The policy's latent is the pipeline's own noise space: the VAE latent patchified 2x2 into
[4C, h/2, w/2] and normalised by the VAE's batch-norm statistics; `velocity` flattens it into the
token sequence [B, h/2 * w/2, 4C] with FLUX.2's 4-axis position ids (T, H, W, L) and `decode`
undoes the normalisation and the patches before the VAE. Sigmas: linspace(1, 1/N, N) time-shifted
with FLUX.2's empirical mu (image tokens and step count).

They differ in text and guidance. [klein]: Qwen3 embeddings (hidden states 9, 18, 27, stacked); no
guidance embedding, so guidance > 1 is classifier-free guidance with the empty prompt, as the
pipeline does, except for a step-distilled checkpoint (`is_distilled`), which the pipeline always
runs without CFG. [dev]: Mistral-Small-3.1 embeddings (hidden states 10, 20, 30) of the prompt
under FLUX.2's system message, padded to max_sequence_length; guidance-distilled, so `guidance`
is the value the transformer embeds and there is no CFG pass."""

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


# -- what both FLUX.2 pipelines share ----------------------------------------------------------------
def encode_flux2(policy: DiffusersPolicy, prompts: list[str], out_layers: tuple[int, ...]) -> None:
    """Each prompt alone through the pipeline's encode_prompt (hidden states `out_layers`) into the cache."""
    for p in prompts:  # one at a time: an embedding must not depend on its batch
        embeds, ids = policy.pipe.encode_prompt(prompt=[p], device=policy.device,
                                                max_sequence_length=policy.max_sequence_length,
                                                text_encoder_out_layers=out_layers)
        policy._cache[p] = (embeds[0], ids[0])


def flux2_cond(policy: DiffusersPolicy, prompts) -> Flux2Cond:
    prompts = policy._cached(prompts)
    e = torch.stack([policy._cache[p][0] for p in prompts])
    ids = torch.stack([policy._cache[p][1] for p in prompts])
    ne, nids = policy._cache[policy.negative_prompt]
    return Flux2Cond(e, ids, ne.expand_as(e), nids.expand_as(ids))


def flux2_forward(policy: DiffusersPolicy, x: Tensor, sigma: Tensor, embeds: Tensor, text_ids: Tensor,
                  guidance: Tensor | None) -> Tensor:
    """The transformer on patchified latents x [B, 4C, h, w] at sigma [B] (the pipelines pass
    timestep / 1000 = sigma); the velocity [B, 4C, h, w] in the transformer's dtype."""
    B, C, h, w = x.shape
    tokens = x.to(policy.device, policy.dtype).reshape(B, C, h * w).permute(0, 2, 1)
    img_ids = policy.pipe._prepare_latent_ids(x).to(policy.device)
    policy.nfe += B
    with attention_context(policy.attention_backend):
        out = (policy.forward_module or policy.transformer)(
            hidden_states=tokens, timestep=sigma.to(policy.device, policy.dtype), guidance=guidance,
            encoder_hidden_states=embeds.to(policy.dtype), txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
    return out.permute(0, 2, 1).reshape(B, C, h, w)


def flux2_latent_shape(policy: DiffusersPolicy, height: int | None, width: int | None) -> tuple[int, int, int]:
    f = policy.pipe.vae_scale_factor
    height = height or policy.defaults.get("height") or policy.pipe.default_sample_size * f
    width = width or policy.defaults.get("width") or policy.pipe.default_sample_size * f
    if height % (2 * f) or width % (2 * f):
        raise ValueError(f"image size {height}x{width} must be a multiple of {2 * f} for {policy.family}.")
    return policy.transformer.config.in_channels, height // (2 * f), width // (2 * f)


def flux2_sigmas(policy: DiffusersPolicy, num_steps: int, height: int | None, width: int | None) -> Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    _, h, w = flux2_latent_shape(policy, height, width)
    sched = FlowMatchEulerDiscreteScheduler.from_config(policy.pipe.scheduler.config)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps),
                        mu=compute_empirical_mu(image_seq_len=h * w, num_steps=num_steps), device="cpu")
    return sched.sigmas.to(torch.float32)


def flux2_decode(policy: DiffusersPolicy, latents: Tensor) -> Tensor:
    """Patchified, normalised latents [B, 4C, h, w] -> images [B, 3, H, W] in [0, 1], fp32."""
    vae = policy.pipe.vae
    z = latents.to(policy.device, vae.dtype)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
    z = policy.pipe._unpatchify_latents(z * std + mean)
    return (vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)


# -- the two families ----------------------------------------------------------------------------------
class Flux2KleinPolicy(DiffusersPolicy):
    family = "flux2_klein"
    pipeline_class = "Flux2KleinPipeline"
    base_defaults = {"num_steps": 4, "guidance": 1.0, "max_sequence_length": 512}  # klein: 4 distilled steps
    text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)  # the pipeline's default

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        encode_flux2(self, prompts, self.text_encoder_out_layers)

    def encode(self, prompts) -> Flux2Cond:
        return flux2_cond(self, prompts)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Flux2Cond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, 4C, h, w] and sigma [B]; guidance > 1 adds CFG (not for distilled checkpoints). fp32 out."""
        c = cond if rows is None else cond.select(rows)
        out = flux2_forward(self, x, sigma, c.embeds, c.text_ids, None)
        if guidance > 1.0 and not self.pipe.config.get("is_distilled", False):
            neg = flux2_forward(self, x, sigma, c.neg_embeds, c.neg_text_ids, None)
            out = neg + guidance * (out - neg)
        return out.float()

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return flux2_latent_shape(self, height, width)

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        return flux2_sigmas(self, num_steps, height, width)

    def decode(self, latents: Tensor) -> Tensor:
        return flux2_decode(self, latents)


class Flux2Policy(DiffusersPolicy):
    """FLUX.2 [dev]: guidance-distilled, so `guidance` is embedded (the pipeline's guidance_scale,
    4.0 by default) and one transformer pass makes a step."""

    family = "flux2"
    pipeline_class = "Flux2Pipeline"
    base_defaults = {"num_steps": 50, "guidance": 4.0, "max_sequence_length": 512}  # the pipeline's defaults
    text_encoder_out_layers: tuple[int, ...] = (10, 20, 30)  # the pipeline's default

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        encode_flux2(self, prompts, self.text_encoder_out_layers)

    def encode(self, prompts) -> Flux2Cond:
        return flux2_cond(self, prompts)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Flux2Cond, *, guidance: float = 4.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, 4C, h, w] and sigma [B] with the embedded guidance value `guidance`. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        g = torch.full((x.shape[0],), float(guidance), device=self.device, dtype=torch.float32)
        return flux2_forward(self, x, sigma, c.embeds, c.text_ids, g).float()

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return flux2_latent_shape(self, height, width)

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        return flux2_sigmas(self, num_steps, height, width)

    def decode(self, latents: Tensor) -> Tensor:
        return flux2_decode(self, latents)
