"""FLUX.1 adapter: a diffusers FluxPipeline seen as a FlowPolicy.

The policy works on unpacked latents [B, C, h, w] (so the samplers and rewards see images-like
tensors) and packs them into FLUX's 2x2 patch sequence [B, h/2 * w/2, 4C] with image ids inside
`velocity`. Guidance: FLUX.1-dev embeds the guidance scale in the transformer
(`guidance_embeds`), FLUX.1-schnell has none; `true_cfg` > 1 adds real classifier-free guidance
with the negative prompt (two passes), as FluxPipeline's `true_cfg_scale` does. Sigmas are the
pipeline's: linspace(1, 1/N, N) time-shifted with the resolution-dependent mu."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..attention import attention_context
from .diffusers_base import DiffusersPolicy


@dataclass
class FluxCond:
    embeds: Tensor  # [B, T, D] T5 token embeddings
    pooled: Tensor  # [B, P] pooled CLIP embedding
    text_ids: Tensor  # [T, 3]
    neg_embeds: Tensor
    neg_pooled: Tensor

    def select(self, rows: Tensor) -> FluxCond:
        rows = rows.to(self.embeds.device)
        return FluxCond(self.embeds[rows], self.pooled[rows], self.text_ids, self.neg_embeds[rows],
                        self.neg_pooled[rows])

    def __len__(self) -> int:
        return self.embeds.shape[0]


def pack(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C] (FluxPipeline._pack_latents)."""
    B, C, h, w = x.shape
    return x.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), C * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w]."""
    B, _, C4 = x.shape
    return x.view(B, h // 2, w // 2, C4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> Tensor:
    """[h/2 * w/2, 3] positional ids of the packed latent grid."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxPolicy(DiffusersPolicy):
    family = "flux"
    pipeline_class = "FluxPipeline"

    base_defaults = {"num_steps": 28, "guidance": 3.5, "max_sequence_length": 512}

    def __init__(self, pipe, *, true_cfg: float = 1.0, **kwargs):
        super().__init__(pipe, **kwargs)
        self.true_cfg = true_cfg

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.get("guidance_embeds", False))

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: an embedding must not depend on its batch
            embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=[p], prompt_2=[p], device=self.device,
                                                               max_sequence_length=self.max_sequence_length)
            self._cache[p] = (embeds[0], pooled[0], text_ids)

    def encode(self, prompts) -> FluxCond:
        prompts = self._cached(prompts)
        e = torch.stack([self._cache[p][0] for p in prompts])
        q = torch.stack([self._cache[p][1] for p in prompts])
        ne, nq, _ = self._cache[self.negative_prompt]
        return FluxCond(e, q, self._cache[prompts[0]][2], ne.expand_as(e), nq.expand_as(q))

    def _forward(self, packed: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor, text_ids: Tensor,
                 img_ids: Tensor, guidance: float) -> Tensor:
        g = torch.full((packed.shape[0],), guidance, device=self.device, dtype=torch.float32) \
            if self.guidance_embeds else None
        self.nfe += packed.shape[0]
        with attention_context(self.attention_backend):
            return (self.forward_module or self.transformer)(
                hidden_states=packed, timestep=t, guidance=g, pooled_projections=pooled.to(self.dtype),
                encoder_hidden_states=embeds.to(self.dtype), txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]

    def velocity(self, x: Tensor, sigma: Tensor, cond: FluxCond, *, guidance: float = 3.5,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, h, w] and sigma [B]; `guidance` is the embedded guidance (dev; ignored by
        schnell); true_cfg > 1 adds negative-prompt CFG. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        _, _, h, w = x.shape
        packed = pack(x.to(self.device, self.dtype))
        t = sigma.to(self.device, self.dtype)  # FluxPipeline passes timestep / 1000 = sigma
        ids = image_ids(h, w, self.device, self.dtype)
        out = self._forward(packed, t, c.embeds, c.pooled, c.text_ids, ids, guidance)
        if self.true_cfg > 1:
            neg = self._forward(packed, t, c.neg_embeds, c.neg_pooled, c.text_ids, ids, guidance)
            out = neg + self.true_cfg * (out - neg)
        return unpack(out.float(), h, w)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return packed_latent_shape(self, height, width)

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        return shifted_linspace_sigmas(self, num_steps, height, width)


def packed_latent_shape(policy, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """The unpacked latent shape [C, h, w] of a 2x2-packing model (FLUX, Qwen-Image)."""
    f = policy.pipe.vae_scale_factor
    height = height or policy.defaults.get("height") or policy.pipe.default_sample_size * f
    width = width or policy.defaults.get("width") or policy.pipe.default_sample_size * f
    if height % (2 * f) or width % (2 * f):
        raise ValueError(f"image size {height}x{width} must be a multiple of {2 * f} for {policy.family} "
                         "(2x2 packing).")
    return policy.transformer.config.in_channels // 4, height // f, width // f


def shifted_linspace_sigmas(policy, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
    """FluxPipeline's grid (Qwen-Image's too): its scheduler's set_timesteps(sigmas=linspace(1, 1/N, N),
    mu) + [0], mu from the packed sequence length."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    _, h, w = policy.latent_shape(height, width)
    cfg = policy.pipe.scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device="cpu")
    return sched.sigmas.to(torch.float32)
