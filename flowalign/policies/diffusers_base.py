"""What the diffusers-pipeline adapters share: loading, LoRA, the reference (adapter-off) context,
prompt caching, classifier-free guidance in one batch, the image VAE decode, noise and ODE
sampling. A family adapter adds its conditioning (`encode`), its transformer call (`velocity`), its
latent shape and its sigma schedule."""

from __future__ import annotations

import contextlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

import samplers
from samplers import VelocityFn

from ..attention import attention_context, configure_attention

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _dtype_kwarg() -> str:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype`; use the one this version wants."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
        return "dtype"
    except ImportError:
        return "torch_dtype"


DTYPE_KWARG = _dtype_kwarg()


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of {sorted(DTYPES)}.") from None


def check_pipeline_dir(path: str, expected: str) -> None:
    """Fail early, in one sentence, on a local path that is not a pipeline of the expected class."""
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path)
    if not looks_local:
        return  # a hub id: diffusers resolves it
    from . import pipeline_class

    cls = pipeline_class(path)
    if cls != expected:
        raise ValueError(f"model path {path!r} holds a {cls}, not a {expected}; use the adapter for that family.")


def lora_metadata(module: torch.nn.Module) -> dict:
    """The adapter's LoraConfig as diffusers stores it beside the weights, so that a loader rebuilds
    the same adapter (lora_alpha above all: without it diffusers assumes alpha = rank and the
    LoRA acts at rank / alpha of its strength)."""
    cfg = module.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}


def read_defaults(path: str) -> dict:
    """Sampling defaults a checkpoint ships in `flowalign.json` (num_steps, guidance, height, width,
    max_sequence_length); empty for other directories and hub ids."""
    f = os.path.join(path, "flowalign.json")
    if not os.path.isfile(f):
        return {}
    with open(f) as fh:
        info = json.load(fh)
    keys = ("num_steps", "guidance", "guidance_2", "height", "width", "max_sequence_length", "num_frames")
    return {k: info[k] for k in keys if k in info}


class DiffusersPolicy(ABC):
    """A diffusers pipeline seen as a FlowPolicy (flowalign/policies/base.py). Log-prob maths stay
    in samplers (fp32); the transformer runs in `dtype`. Subclasses set `family`,
    `pipeline_class`, `lora_targets`, `base_defaults` and implement `_encode_uncached`, `encode`,
    `velocity`, `latent_shape` and `family_sigmas`."""

    family = ""
    pipeline_class = ""
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    base_defaults: dict = {"num_steps": 28, "guidance": 7.0, "max_sequence_length": 256}
    num_frames: int | None = None  # frames per video; None for image models

    def __init__(self, pipe, *, device: str | torch.device = "cpu", attention_backend: str = "sdpa",
                 max_sequence_length: int | None = None, negative_prompt: str = "",
                 defaults: dict | None = None):
        self.pipe = pipe
        # sampling defaults of this checkpoint (from its flowalign.json, if any)
        self.defaults = {**self.base_defaults, **(defaults or {})}
        max_sequence_length = max_sequence_length or self.defaults["max_sequence_length"]
        self.device = torch.device(device)
        self.attention_backend = attention_backend
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self.forward_module: torch.nn.Module | None = None  # e.g. the DDP-wrapped transformer when training
        self.nfe = 0  # transformer evaluations (samples x CFG branches) so far
        pipe.to(self.device)
        for m in self.denoisers():
            configure_attention(m, attention_backend, self.device)
        for m in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                  getattr(pipe, "text_encoder_3", None)):
            if m is not None:
                m.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
                        **kwargs) -> DiffusersPolicy:
        import diffusers

        check_pipeline_dir(str(path), cls.pipeline_class)
        pipe_cls = getattr(diffusers, cls.pipeline_class)
        pipe = pipe_cls.from_pretrained(str(path), **{DTYPE_KWARG: parse_dtype(dtype)})
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device=device, defaults=read_defaults(str(path)), **kwargs)

    # -- modules ---------------------------------------------------------------------------------
    def denoisers(self) -> list[torch.nn.Module]:
        """Every diffusers model sampling calls (one transformer; Wan2.2 has two experts)."""
        return [self.pipe.transformer]

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def trainable_parts(self) -> list[torch.nn.Module]:
        """The diffusers models training changes (LoRA goes on each): the transformer here; a
        family with several denoisers (Wan2.2's experts) returns the ones selected for training."""
        return [self.pipe.transformer]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for m in self.trainable_parts():
            if enabled:
                m.enable_gradient_checkpointing()
            else:
                m.disable_gradient_checkpointing()

    def add_lora(self, rank: int = 32, alpha: float = 64, target_modules: Sequence[str] | None = None,
                 init: bool | str = True) -> None:
        """Attach a peft LoRA adapter to each trainable part (attention projections by default)."""
        from peft import LoraConfig

        targets = list(target_modules or self.lora_targets)
        for m in self.trainable_parts():
            m.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=init))

    def _adapted(self) -> list[torch.nn.Module]:
        return [m for m in self.trainable_parts() if getattr(m, "_hf_peft_config_loaded", False)]

    @property
    def has_lora(self) -> bool:
        return bool(self._adapted())

    _reference_weights: list | None = None

    def keep_reference(self) -> None:
        """Full fine-tuning: keep a frozen copy of the trainable weights as they are now (the base
        model), the reference `reference()` evaluates for the KL term. Costs one copy of the
        trainable weights in memory; a LoRA policy needs none (its base is the adapter switched off)."""
        self._reference_weights = [(p, p.detach().clone()) for m in self.trainable_parts()
                                   for p in m.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Evaluate the base model: LoRA adapters are disabled inside the context; a fully
        fine-tuned policy runs on the weights `keep_reference()` kept (its own come back on exit,
        bit-identical, also after an exception)."""
        adapted = self._adapted()
        if not adapted and self._reference_weights is not None:
            from ..sharding import is_dtensor

            if any(is_dtensor(p) for p, _ in self._reference_weights):
                # FSDP2 gathers from its shards' own storage: copy the reference in, and back out
                from ..ema import swapped_weights

                with swapped_weights([p for p, _ in self._reference_weights],
                                     [r for _, r in self._reference_weights]):
                    yield
                return
            own = [(p, p.data) for p, _ in self._reference_weights]
            for p, ref in self._reference_weights:
                p.data = ref
            try:
                yield
            finally:
                for p, data in own:
                    p.data = data
            return
        for m in adapted:
            m.disable_adapters()
        try:
            yield
        finally:
            for m in adapted:
                m.enable_adapters()

    _merged = False
    merge_lora = True  # lora.merge_for_sampling: passes without gradient run on merged weights

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The context of a pass without gradient: `merged_lora()` when `merge_lora` is on."""
        return self.merged_lora() if self.merge_lora else contextlib.nullcontext()

    @contextlib.contextmanager
    def merged_lora(self) -> Iterator[None]:
        """For passes without gradient (rollouts, completions, evaluation): every LoRA layer's base
        weight is replaced by W + scale B A, computed once on entry from the current adapter weights,
        and each LoRA wrapper is swapped out of its parent for its base layer, so a forward runs the
        base model's modules and costs what the base model's does (no adapter branch, no wrapper
        call). On exit the wrappers and the original weight tensors come back untouched
        (bit-identical; nothing is subtracted). Outputs differ from the adapter path only by rounding.
        Not reentrant; a no-op without LoRA."""
        if self._merged:
            raise RuntimeError("merged_lora() is already active; enter it once per pass.")
        adapted = self._adapted()
        if not adapted:
            yield
            return
        from peft.tuners.lora import LoraLayer

        restore: list[tuple[torch.nn.Module, Tensor]] = []
        swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
        try:
            with torch.no_grad():
                for part in adapted:
                    for name, m in list(part.named_modules()):
                        if not isinstance(m, LoraLayer):
                            continue
                        names = [a for a in m.active_adapters if a in m.lora_A] if not m.disable_adapters else []
                        base = m.get_base_layer()
                        if names:
                            delta = sum(m.get_delta_weight(a) for a in names)
                            restore.append((base, base.weight.data))
                            base.weight.data = base.weight.data + delta.to(base.weight.dtype)
                        parent_name, _, child = name.rpartition(".")
                        parent = part.get_submodule(parent_name) if parent_name else part
                        setattr(parent, child, base)
                        swapped.append((parent, child, m))
            self._merged = True
            yield
        finally:
            for parent, child, m in reversed(swapped):
                setattr(parent, child, m)
            for base, data in restore:
                base.weight.data = data
            self._merged = False

    # LoRA files in diffusers' format: the transformer's, then (Wan2.2) the low-noise expert's
    lora_files = ("pytorch_lora_weights.safetensors",)

    def save_lora(self, out: str) -> list[str]:
        """Write the trained LoRA weights in diffusers' format, loadable by the stock pipeline's
        `load_lora_weights(out)`; returns the files written."""
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(self.pipe.transformer)
        type(self.pipe).save_lora_weights(out, transformer_lora_layers=layers,
                                          transformer_lora_adapter_metadata=lora_metadata(self.pipe.transformer))
        return [os.path.join(out, self.lora_files[0])]

    def load_lora(self, folder: str) -> None:
        """Load a LoRA folder written by `save_lora` (or any diffusers LoRA of this pipeline)."""
        self.pipe.load_lora_weights(folder)

    # -- conditioning ----------------------------------------------------------------------------
    @abstractmethod
    def _encode_uncached(self, prompts: list[str]) -> None:
        """Encode each prompt alone into self._cache (a batch must not change an embedding)."""

    def _cached(self, prompts: Sequence[str] | str) -> list[str]:
        """Encode what is not cached yet (the prompts and the negative prompt); returns the prompt list."""
        if isinstance(prompts, str):
            prompts = [prompts]
        todo = list(dict.fromkeys(p for p in [*prompts, self.negative_prompt] if p not in self._cache))
        if todo:
            self._encode_uncached(todo)
        return list(prompts)

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> Any:
        """The family's conditioning for `prompts` and the negative prompt (cached per text)."""

    # -- model -----------------------------------------------------------------------------------
    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor, cond: Any, *, guidance: float = 1.0,
                 rows: Tensor | None = None) -> Tensor:
        """The family's transformer call: v at x [B, *S] and sigma [B], CFG when guidance > 1; fp32."""

    def _guided_forward(self, x: Tensor, sigma: Tensor, guidance: float | Tensor, cond: dict[str, Tensor],
                        neg: dict[str, Tensor]) -> Tensor:
        """One transformer call on x at timestep sigma x num_train_timesteps with the conditioning
        tensors `cond`; with guidance > 1 the batch is doubled with `neg` and the outputs combined
        as classifier-free guidance (a [B] tensor `guidance` gives each row its own scale, always
        with CFG). fp32 out."""
        dtype = self.dtype  # a module walk in diffusers: once per call
        x_in = x.to(self.device, dtype)
        t = sigma.to(self.device, torch.float32) * self.pipe.scheduler.config.num_train_timesteps
        cfg = isinstance(guidance, Tensor) or guidance > 1.0
        if cfg:
            x_in, t = torch.cat([x_in, x_in]), torch.cat([t, t])
            cond = {k: torch.cat([neg[k], v]) for k, v in cond.items()}
        self.nfe += x_in.shape[0]
        with attention_context(self.attention_backend):
            out = (self.forward_module or self.transformer)(
                hidden_states=x_in, timestep=t, return_dict=False, **{k: v.to(dtype) for k, v in cond.items()})[0]
        if cfg:
            uncond, text = out.chunk(2)
            if isinstance(guidance, Tensor):
                guidance = guidance.to(out).view(-1, *([1] * (out.ndim - 1)))
            out = uncond + guidance * (text - uncond)
        return out.float()

    def velocity_fn(self, cond: Any, *, guidance: float = 1.0) -> VelocityFn:
        def fn(x: Tensor, sigma: Tensor, rows: Tensor) -> Tensor:
            return self.velocity(x, sigma, cond, guidance=guidance, rows=rows)
        return fn

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1], fp32."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)

    # -- schedule and noise ----------------------------------------------------------------------
    @abstractmethod
    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The shape of one latent at this image size."""

    @abstractmethod
    def family_sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """The family pipeline's [num_steps + 1] sigma grid."""

    sigma_shift: float | None = None  # sampler.shift: a static shift of the linear grid instead

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """The [num_steps + 1] sigma grid: the family pipeline's, or with `sigma_shift` set the linear
        grid 1 .. 0 shifted statically, shift t / (1 + (shift - 1) t) (DanceGRPO's and BranchGRPO's)."""
        if self.sigma_shift is not None:
            return samplers.linear_sigmas(num_steps, shift=self.sigma_shift, dtype=torch.float32)
        return self.family_sigmas(num_steps, height, width)

    def initial_noise(self, n: int, height: int | None = None, width: int | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n, *self.latent_shape(height, width)), generator=generator, dtype=torch.float32).to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, num_steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0,
                 noise: Tensor | None = None) -> Tensor:
        """Plain ODE sampling -> images [B, 3, H, W] in [0, 1]. Unset arguments take the checkpoint's
        defaults."""
        num_steps = num_steps or self.defaults["num_steps"]
        guidance = self.defaults["guidance"] if guidance is None else guidance
        height, width = height or self.defaults.get("height"), width or self.defaults.get("width")
        cond = self.encode(list(prompts))
        if noise is None:
            noise = self.initial_noise(len(prompts), height, width, torch.Generator().manual_seed(seed))
        traj = samplers.rollout(self.velocity_fn(cond, guidance=guidance), noise, self.sigmas(num_steps, height, width), "ode")
        return self.decode(traj.final)
