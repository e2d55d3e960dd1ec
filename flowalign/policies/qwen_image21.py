"""Qwen-Image 2.1 adapter: a diffusers QwenImage21Pipeline seen as a FlowPolicy.

Qwen-Image 2.1 is not Qwen-Image with new weights: its text encoder is Qwen3-VL (the last decoder
layer's hidden states before the final norm, system tokens dropped), its VAE compresses 16x with
64 latent channels, and its single-stream transformer reads the latents unpatched, one token per
16x16 pixel tile, interleaved with the text by an image-slot mask (`img_mask`: one slot per 2x2
tokens, appended after the prompt). The policy's latent is [B, C, H/16, W/16]; `velocity` flattens
it to [B, h*w, C]. A batch of prompts of different lengths is right-padded with zeros and masked
(`encoder_hidden_states_mask`), as the pipeline does. Guidance: plain true CFG with the negative
prompt when guidance > 1 (the checkpoint is meant to be sampled without: default 1). Sigmas: the
checkpoint's `sample_sigmas` when its config has them, else linspace(1, 1/N, N), shifted with mu
from the h*w sequence length. The stock pipeline caches the text keys and values after the first
step (exact, as text tokens modulate from t = 0); the policy recomputes them, since training
changes the weights between calls."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..attention import attention_context
from .diffusers_base import DiffusersPolicy
from .qwen_image import QwenImageCond, pad_sequences
from .wan import decode_normalised


class QwenImage21Policy(DiffusersPolicy):
    family = "qwen_image21"
    pipeline_class = "QwenImage21Pipeline"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    base_defaults = {"num_steps": 40, "guidance": 1.0, "max_sequence_length": 512}  # the pipeline's

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: no padding inside the cache
            embeds, _, image_pad = self.pipe.encode_prompt(prompt=[p], device=self.device)
            if bool(image_pad.any()):
                raise ValueError(f"prompt {p[:60]!r} holds image placeholder tokens; text-to-image prompts cannot.")
            self._cache[p] = (embeds[0], None)

    def encode(self, prompts) -> QwenImageCond:
        prompts = self._cached(prompts)
        emb, mask = pad_sequences([self._cache[p][0] for p in prompts])
        neg, nmask = pad_sequences([self._cache[self.negative_prompt][0]] * len(prompts))
        return QwenImageCond(emb, mask, neg, nmask)

    def _call(self, tokens: Tensor, t: Tensor, embeds: Tensor, mask: Tensor, h: int, w: int) -> Tensor:
        B, T = mask.shape
        # text positions (no image slots in a text-to-image prompt), then one slot per 2x2 latent tokens
        img_mask = torch.cat([torch.zeros(B, T, dtype=torch.bool, device=self.device),
                              torch.ones(B, h * w // 4, dtype=torch.bool, device=self.device)], dim=1)
        self.nfe += B
        with attention_context(self.attention_backend):
            return (self.forward_module or self.transformer)(
                hidden_states=tokens, timestep=t, encoder_hidden_states=embeds.to(self.device, self.dtype),
                encoder_hidden_states_mask=None if bool(mask.all()) else mask.to(self.device),
                img_shapes=[[(1, h, w)]] * B, img_mask=img_mask, return_dict=False)[0][:, -h * w:]  # image tokens

    def velocity(self, x: Tensor, sigma: Tensor, cond: QwenImageCond, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, h, w] and sigma [B]; true CFG with the negative prompt when guidance > 1. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        B, C, h, w = x.shape
        tokens = x.to(self.device, self.dtype).reshape(B, C, h * w).transpose(1, 2)
        t = sigma.to(self.device, self.dtype)  # the pipeline passes timestep / 1000 = sigma
        out = self._call(tokens, t, c.embeds, c.mask, h, w)
        if guidance > 1:
            neg = self._call(tokens, t, c.neg_embeds, c.neg_mask, h, w)
            out = neg + guidance * (out - neg)
        return out.float().transpose(1, 2).reshape(B, C, h, w)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1], fp32 (an RGBA VAE's alpha is dropped)."""
        img = decode_normalised(self.pipe.vae, latents.to(self.device).unsqueeze(2))[:, :3, 0]  # one frame
        return (img / 2 + 0.5).clamp(0, 1)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        height = height or self.defaults.get("height", 1024)
        width = width or self.defaults.get("width", 1024)
        if height % (2 * f) or width % (2 * f):
            raise ValueError(f"image size {height}x{width} must be a multiple of {2 * f} for qwen_image21.")
        return self.transformer.config.in_channels, height // f, width // f

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

        sigmas = self.pipe.config.get("sample_sigmas")
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        elif len(sigmas) != num_steps:
            raise ValueError(f"this checkpoint samples with its own {len(sigmas)} sigmas (sample_sigmas in its "
                             f"model_index.json), not {num_steps}; set sampler.num_steps={len(sigmas)}.")
        _, h, w = self.latent_shape(height, width)
        cfg = self.pipe.scheduler.config
        mu = calculate_shift(h * w, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        sched.set_timesteps(sigmas=np.asarray(sigmas), mu=mu, device="cpu")
        return sched.sigmas.to(torch.float32)
