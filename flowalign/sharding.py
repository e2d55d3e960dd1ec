"""`run.sharding: fsdp2`: the trained transformer sharded over the processes with torch's FSDP2
(`torch.distributed.fsdp.fully_shard`), one FSDP unit per transformer block and one for the rest.

Parameters, gradients and optimiser state live as shards (DTensors, `Shard(0)` over a 1-D mesh of
all processes); a forward gathers a block's parameters and frees them after it. Mixed precision
(`optim.mixed_precision: bf16`) computes in bf16 (parameters gathered in bf16, forward under bf16
autocast) with float32 master weights, float32 gradient reduction and float32 outputs (the log-prob
maths runs in float32).

Checkpoints stay flowalign's atomic folders: each process writes its shards
(`trainable_rank{r}.safetensors`, `optimizer_rank{r}.pt`, ... as plain local tensors, read back with
`weights_only=True`), so a resume needs the same number of processes. The final `model/` or LoRA is
gathered to full tensors and written by the main process in diffusers' format."""

from __future__ import annotations

import torch
from torch import Tensor


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def block_lists(module: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The transformer's lists of blocks (transformer_blocks, single_transformer_blocks, blocks, ...):
    every ModuleList child with more than one module."""
    return [m for m in module.children() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]


def shard_fsdp2(parts: list[torch.nn.Module], device: torch.device, mixed_precision: str = "no") -> None:
    """fully_shard every block of each part, then the part itself (in place)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    for part in parts:
        for blocks in block_lists(part):
            for block in blocks:
                fully_shard(block, mesh=mesh, mp_policy=mp)
        # the root too frees its gathered parameters after every forward: weights swapped into the
        # shards in place (EMA, the KL reference, NFT's old policy) are gathered afresh by the next pass
        fully_shard(part, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
        if mixed_precision == "bf16":  # ops the model keeps in float32 (timestep embeddings) meet bf16 weights
            _autocast_forward(part, device.type)


def _autocast_forward(module: torch.nn.Module, device_type: str) -> None:
    """Run `module`'s forward under bf16 autocast (what accelerate does for mixed precision)."""
    forward = module.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    module.forward = autocast_forward


def set_gradient_sync(parts: list[torch.nn.Module], enabled: bool) -> None:
    """Reduce-scatter gradients on this backward (the last of an accumulation) or not."""
    for part in parts:
        part.set_requires_gradient_sync(enabled)


def to_local(obj):
    """A state with every DTensor replaced by this process's shard (a plain tensor)."""
    if is_dtensor(obj):
        return obj.to_local().detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_local(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_local(v) for v in obj)
    return obj


def like(t: Tensor, ref) -> Tensor:
    """A saved local shard `t` as a DTensor laid out as `ref` (a sharded parameter); a tensor of
    another shape (a scalar step count) stays as it is."""
    from torch.distributed.tensor import DTensor

    if not is_dtensor(ref) or tuple(t.shape) != tuple(ref.to_local().shape):
        return t
    local = t.to(ref.to_local().device, ref.dtype if t.is_floating_point() else t.dtype)
    return DTensor.from_local(local, ref.device_mesh, ref.placements, shape=ref.shape, stride=ref.stride())


def optimizer_state_like(state: dict, params: list) -> dict:
    """A saved local optimiser state dict (one param group, state keyed by index) with its tensors
    laid out as the sharded parameters."""
    out = {"param_groups": state["param_groups"], "state": {}}
    for k, s in state["state"].items():
        p = params[int(k)]
        out["state"][k] = {name: like(v, p) if isinstance(v, Tensor) else v for name, v in s.items()}
    return out


def list_like(saved: list, params: list) -> list:
    """Saved local shards of per-parameter tensors (EMA, an old policy) as DTensors like `params`."""
    return [like(t, p) for t, p in zip(saved, params)]


def full_state_dict(module: torch.nn.Module) -> dict:
    """Every process takes part; the main process gets the full (gathered, CPU) state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
