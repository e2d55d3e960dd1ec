"""Qwen-Image adapter: a diffusers QwenImagePipeline seen as a FlowPolicy.

Latents are handled unpacked [B, C, h, w] (the pipeline's single frame dimension dropped) and packed
into 2x2 patches inside `velocity`. The Qwen2.5-VL text encoder gives a variable number of tokens
per prompt: a batch is padded with zeros and masked (`encoder_hidden_states_mask`), as the pipeline
does. Guidance is Qwen-Image's true CFG with the negative prompt (default " ") and its norm
rescaling: v = c * ||v_cond|| / ||c|| with c = v_neg + w (v_cond - v_neg), per token. Sigmas are the
pipeline's: linspace(1, 1/N, N) shifted with the resolution-dependent mu."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import attention_context
from .diffusers_base import DiffusersPolicy
from .flux import pack, packed_latent_shape, shifted_linspace_sigmas, unpack
from .wan import decode_normalised


@dataclass
class QwenImageCond:
    embeds: Tensor  # [B, T, D] zero-padded
    mask: Tensor  # [B, T] 1 on real tokens
    neg_embeds: Tensor
    neg_mask: Tensor

    def select(self, rows: Tensor) -> QwenImageCond:
        rows = rows.to(self.embeds.device)
        return QwenImageCond(self.embeds[rows], self.mask[rows], self.neg_embeds[rows], self.neg_mask[rows])

    def __len__(self) -> int:
        return self.embeds.shape[0]


def pad_sequences(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad [T_i, D] sequences with zeros into [B, T, D], with the [B, T] mask of real tokens."""
    T = max(s.shape[0] for s in seqs)
    emb = torch.stack([torch.cat([s, s.new_zeros(T - s.shape[0], s.shape[1])]) for s in seqs])
    mask = torch.stack([torch.cat([torch.ones(s.shape[0], dtype=torch.long, device=s.device),
                                   torch.zeros(T - s.shape[0], dtype=torch.long, device=s.device)]) for s in seqs])
    return emb, mask


class QwenImagePolicy(DiffusersPolicy):
    family = "qwen_image"
    pipeline_class = "QwenImagePipeline"

    base_defaults = {"num_steps": 50, "guidance": 4.0, "max_sequence_length": 512}

    def __init__(self, pipe, *, negative_prompt: str = " ", **kwargs):
        super().__init__(pipe, negative_prompt=negative_prompt, **kwargs)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> None:
        for p in prompts:  # one at a time: no padding inside the cache
            embeds, mask = self.pipe.encode_prompt(prompt=[p], device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
            n = int(mask[0].sum()) if mask is not None else embeds.shape[1]
            self._cache[p] = (embeds[0, :n], None, None)

    def encode(self, prompts) -> QwenImageCond:
        prompts = self._cached(prompts)
        emb, mask = pad_sequences([self._cache[p][0] for p in prompts])
        neg, nmask = pad_sequences([self._cache[self.negative_prompt][0]] * len(prompts))
        return QwenImageCond(emb, mask, neg, nmask)

    def _call(self, packed: Tensor, t: Tensor, embeds: Tensor, mask: Tensor, h: int, w: int) -> Tensor:
        self.nfe += packed.shape[0]
        with attention_context(self.attention_backend):
            return (self.forward_module or self.transformer)(
                hidden_states=packed, timestep=t, encoder_hidden_states=embeds.to(self.dtype),
                encoder_hidden_states_mask=mask, img_shapes=[[(1, h // 2, w // 2)]] * packed.shape[0],
                return_dict=False)[0]

    def velocity(self, x: Tensor, sigma: Tensor, cond: QwenImageCond, *, guidance: float = 4.0,
                 rows: Tensor | None = None) -> Tensor:
        """v at x [B, C, h, w] and sigma [B]; true CFG with norm rescaling when guidance > 1. fp32 out."""
        c = cond if rows is None else cond.select(rows)
        _, _, h, w = x.shape
        packed = pack(x.to(self.device, self.dtype))
        t = sigma.to(self.device, self.dtype)
        out = self._call(packed, t, c.embeds, c.mask, h, w)
        if guidance > 1:
            neg = self._call(packed, t, c.neg_embeds, c.neg_mask, h, w)
            comb = neg + guidance * (out - neg)
            out = comb * (out.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
        return unpack(out.float(), h, w)

    def decode(self, latents: Tensor) -> Tensor:
        img = decode_normalised(self.pipe.vae, latents.to(self.device).unsqueeze(2))[:, :, 0]  # one frame
        return (img / 2 + 0.5).clamp(0, 1)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return packed_latent_shape(self, height, width)

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        return shifted_linspace_sigmas(self, num_steps, height, width)
