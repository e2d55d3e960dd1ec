"""Attention backend selection.

SD3's attention processor calls torch's scaled_dot_product_attention directly, so for it a backend
name selects a torch SDPA kernel (a context manager around the forward pass). Models routed through
diffusers' attention dispatcher (FLUX, Wan, Qwen-Image) get `model.set_attention_backend(...)`.
xformers is an optional extra that only runs on CUDA."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# name -> torch SDPA kernels it allows (None: let torch choose)
SDPA_KERNELS: dict[str, list[SDPBackend] | None] = {
    "sdpa": None,
    "math": [SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
}
CUDA_ONLY = {"flash", "efficient", "cudnn", "xformers"}
# our names -> diffusers dispatcher names
DISPATCHER_NAMES = {"sdpa": "native", "math": "_native_math", "flash": "_native_flash",
                    "efficient": "_native_efficient", "cudnn": "_native_cudnn", "xformers": "xformers"}
BACKENDS = sorted([*SDPA_KERNELS, "xformers"])


def check_backend(name: str, device: torch.device | str) -> None:
    """Raise a one-sentence ValueError if `name` is unknown or cannot run on `device`."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"attention_backend={name!r} is unknown; use one of {BACKENDS}.")
    if name in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"attention_backend={name!r} needs a CUDA device but the model is on {device.type}; "
                         "use attention_backend='sdpa' (or 'math') there.")
    if name == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ValueError("attention_backend='xformers' needs the xformers package; "
                         "install flowalign[xformers] on a CUDA machine or use 'sdpa'.")


def uses_dispatcher(model: torch.nn.Module) -> bool:
    """True for diffusers models whose attention goes through the attention dispatcher."""
    for module in model.modules():
        proc = getattr(module, "processor", None)
        if proc is not None and hasattr(proc, "_attention_backend"):
            return True
    return False


def configure_attention(model: torch.nn.Module, name: str, device: torch.device | str) -> None:
    """Apply the backend to a model once, where the model itself holds the choice."""
    check_backend(name, device)
    if uses_dispatcher(model) and hasattr(model, "set_attention_backend"):
        model.set_attention_backend(DISPATCHER_NAMES[name])
    elif name == "xformers":
        model.enable_xformers_memory_efficient_attention()


@contextlib.contextmanager
def attention_context(name: str) -> Iterator[None]:
    """Restrict torch SDPA to the kernels of `name` for the duration of a forward pass."""
    kernels = SDPA_KERNELS.get(name)
    if kernels is None:
        yield
    else:
        with sdpa_kernel(kernels):
            yield
