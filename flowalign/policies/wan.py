"""Wan text-to-video adapter: a diffusers WanPipeline seen as a FlowPolicy over video latents
[B, C, F, h, w] (F latent frames = (num_frames - 1) / temporal factor + 1). Classifier-free guidance
with the negative prompt, the Wan VAE's per-channel latent normalisation, decode to videos
[B, F, 3, H, W] in [0, 1]. The samplers work on any latent shape, so rollouts, log-probs and
training over videos need nothing else. Real Wan checkpoints ship a UniPC scheduler: flowalign
integrates the same flow with Euler / SDE steps on the scheduler's shifted grid (`flow_shift`).

Wan2.1 has one transformer. Wan2.2's A14B checkpoints have two experts: `transformer` denoises
timesteps at or above boundary_ratio x num_train_timesteps and `transformer_2` those below, each
with its own guidance scale (`guidance_2`, the stock pipeline's `guidance_scale_2`). Both run as
one module (`WanExperts`), which routes every row of a batch by its own timestep, so rollouts,
ODE completions, tree rollouts and training batches that mix noise levels all use the right
expert. `trained_experts` picks which experts training changes (LoRA on both or either)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import samplers

from .diffusers_base import DiffusersPolicy, lora_metadata


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


class WanExperts(torch.nn.Module):
    """Wan2.2's two experts as one module: a row whose timestep is at or above `boundary` goes to
    `high` (the pipeline's `transformer`), the others to `low` (`transformer_2`), as in
    WanPipeline's denoising loop; each expert runs once on its rows."""

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary: float):
        super().__init__()
        self.high, self.low, self.boundary = high, low, float(boundary)

    def forward(self, hidden_states: Tensor, timestep: Tensor, return_dict: bool = False, **cond: Tensor):
        is_high = timestep >= self.boundary
        if bool(is_high.all()) or not bool(is_high.any()):
            expert = self.high if bool(is_high.all()) else self.low
            return expert(hidden_states=hidden_states, timestep=timestep, return_dict=False, **cond)
        out = None
        for expert, rows in ((self.high, is_high.nonzero()[:, 0]), (self.low, (~is_high).nonzero()[:, 0])):
            part = expert(hidden_states=hidden_states[rows], timestep=timestep[rows], return_dict=False,
                          **{k: v[rows] for k, v in cond.items()})[0]
            if out is None:
                out = part.new_empty((hidden_states.shape[0], *part.shape[1:]))
            out = out.index_put((rows,), part)
        return (out,)


EXPERTS = {"both": ("high", "low"), "high": ("high",), "low": ("low",)}


class WanPolicy(DiffusersPolicy):
    family = "wan"
    pipeline_class = "WanPipeline"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    base_defaults = {"num_steps": 50, "guidance": 5.0, "max_sequence_length": 226, "num_frames": 81}
    experts: WanExperts | None

    def __init__(self, pipe, **kwargs):
        low = getattr(pipe, "transformer_2", None)
        self.experts = None
        if low is not None:
            if pipe.transformer is None or pipe.config.boundary_ratio is None:
                raise ValueError("this WanPipeline has a transformer_2 but no transformer or no boundary_ratio; "
                                 "flowalign trains Wan2.1 (one transformer) and Wan2.2 A14B (two experts and a "
                                 "boundary_ratio).")
            boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
            self.experts = WanExperts(pipe.transformer, low, boundary)
        self.trained_experts = "both"
        super().__init__(pipe, **kwargs)
        self.num_frames = self.defaults["num_frames"]
        self.guidance_2 = self.defaults.get("guidance_2")  # the low-noise expert's CFG scale; None: `guidance`

    # -- Wan2.2's experts ------------------------------------------------------------------------
    @property
    def transformer(self) -> torch.nn.Module:
        return self.experts if self.experts is not None else self.pipe.transformer

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer] if self.experts is None else [self.experts.high, self.experts.low]

    def trainable_parts(self) -> list[torch.nn.Module]:
        if self.experts is None:
            return [self.pipe.transformer]
        if self.trained_experts not in EXPERTS:
            raise ValueError(f"model.experts={self.trained_experts!r} is unknown; use one of {', '.join(EXPERTS)}.")
        return [getattr(self.experts, name) for name in EXPERTS[self.trained_experts]]

    lora_files = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors")

    def save_lora(self, out: str) -> list[str]:
        """Wan2.2: one diffusers LoRA file per trained expert, the high-noise expert's as
        pytorch_lora_weights.safetensors and the low-noise one's as
        pytorch_lora_weights_transformer_2.safetensors (load it into the stock pipeline with
        `load_lora_weights(out, weight_name=..., load_into_transformer_2=True)`)."""
        if self.experts is None:
            return super().save_lora(out)
        import os

        from peft.utils import get_peft_model_state_dict

        written = []
        for expert, name in ((self.experts.high, self.lora_files[0]), (self.experts.low, self.lora_files[1])):
            if getattr(expert, "_hf_peft_config_loaded", False):
                type(self.pipe).save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(expert),
                                                  transformer_lora_adapter_metadata=lora_metadata(expert),
                                                  weight_name=name)
                written.append(os.path.join(out, name))
        return written

    def load_lora(self, folder: str) -> None:
        if self.experts is None:
            return super().load_lora(folder)
        import os

        for name, into_low in ((self.lora_files[0], False), (self.lora_files[1], True)):
            if os.path.isfile(os.path.join(folder, name)):
                self.pipe.load_lora_weights(folder, weight_name=name, load_into_transformer_2=into_low)

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
        g: float | Tensor = guidance
        if self.experts is not None and guidance > 1.0 and self.guidance_2 is not None:
            low = sigma.to(torch.float32) * self.pipe.scheduler.config.num_train_timesteps < self.experts.boundary
            g = torch.where(low, torch.tensor(float(self.guidance_2)), torch.tensor(float(guidance)))
        return self._guided_forward(x, sigma, g, {"encoder_hidden_states": c.embeds},
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
        ph, pw = self.denoisers()[0].config.patch_size[1:]
        if height % (sp * ph) or width % (sp * pw):
            raise ValueError(f"video size {height}x{width} must be a multiple of {sp * ph}x{sp * pw} for this model.")
        if (frames - 1) % tp:
            raise ValueError(f"num_frames={frames} must be 1 + a multiple of {tp} (e.g. {tp * ((frames - 1) // tp) + 1}).")
        return self.denoisers()[0].config.in_channels, (frames - 1) // tp + 1, height // sp, width // sp

    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        cfg = self.pipe.scheduler.config
        shift = cfg.get("shift", None) or cfg.get("flow_shift", None) or 1.0
        return samplers.flow_match_sigmas(num_steps, shift=shift, num_train_timesteps=cfg.num_train_timesteps)
