"""The policy interface: everything the trainer, the algorithms, evaluation and ReNO use of a model.
Every model family implements it; `DiffusersPolicy` (diffusers_base.py) implements all but the
family's conditioning, transformer call, latent shape and sigma schedule."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from samplers import VelocityFn


@runtime_checkable
class FlowPolicy(Protocol):
    """A flow-matching generator wrapped for RL: x -> velocity at noise level sigma."""

    family: str  # "sd3", "flux", "wan", "qwen_image"
    pipe: Any  # the diffusers pipeline (saving LoRA weights and full models goes through its class)
    device: torch.device
    defaults: dict  # sampling defaults: num_steps, guidance, height, width, max_sequence_length[, num_frames]
    num_frames: int | None  # frames per video (video models, settable); None for image models
    nfe: int  # transformer evaluations so far (samples x CFG branches)
    forward_module: torch.nn.Module | None  # the wrapped transformer (DDP) training calls go through

    @property
    def transformer(self) -> torch.nn.Module:
        """The denoiser: LoRA is attached to it, its parameters are trained."""

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype."""

    # -- training hooks ---------------------------------------------------------------------------
    def add_lora(self, rank: int = 32, alpha: float = 64, target_modules: Sequence[str] | None = None,
                 init: bool | str = True) -> None:
        """Attach a peft LoRA adapter to the transformer."""

    @property
    def has_lora(self) -> bool:
        """Whether a LoRA adapter is attached."""

    def trainable_parts(self) -> list[torch.nn.Module]:
        """The models training changes (the transformer; the chosen experts of Wan2.2)."""

    lora_files: tuple[str, ...]  # the diffusers LoRA file names `save_lora` writes

    def save_lora(self, out: str) -> list[str]:
        """Write the LoRA weights in diffusers' format (loadable by the stock pipeline); the files."""

    def load_lora(self, folder: str) -> None:
        """Load a LoRA folder `save_lora` wrote."""

    def set_gradient_checkpointing(self, enabled: bool) -> None: ...

    def reference(self) -> AbstractContextManager:
        """Within this context the base model (LoRA disabled) is evaluated, for KL."""

    # -- conditioning and the model -----------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> Any:
        """Text conditioning for `prompts` (cached), with the negative prompt for CFG; supports
        `cond.select(rows)` and `len(cond)`."""

    def velocity(self, x: Tensor, sigma: Tensor, cond: Any, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """v = eps - x0 predicted at x [B, *S], sigma [B]; `rows` selects cond's rows; fp32."""

    def velocity_fn(self, cond: Any, *, guidance: float = 1.0) -> VelocityFn:
        """A samplers.VelocityFn bound to `cond`."""

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images [B, 3, H, W] (or videos [B, F, 3, H, W]) in [0, 1], fp32."""

    # -- schedule, noise, sampling --------------------------------------------------------------------
    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The shape of one latent at this image size (the checkpoint's default when None)."""

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """The model's own [num_steps + 1] sigma schedule at this image size."""

    def initial_noise(self, n: int, height: int | None = None, width: int | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """[n, *latent_shape] standard normal noise, drawn on the CPU from `generator`."""

    def generate(self, prompts: Sequence[str], *, num_steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0,
                 noise: Tensor | None = None) -> Tensor:
        """Plain ODE sampling -> decoded images (videos); unset arguments take `defaults`."""
