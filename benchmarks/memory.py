"""Training memory per GPU for every shipped real-checkpoint config, computed from the model
configs without downloading a weight: the transformer is built on PyTorch's meta device from its
architecture config (diffusers' class defaults are the flagship checkpoint's config; the variants'
differences are written below), and one training forward at the config's batch and resolution runs
on meta tensors under `torch.autograd.graph.saved_tensors_hooks`, which adds up the bytes autograd
keeps for the backward (the activations).

    python -m benchmarks.memory [--gpus 8] [--out benchmarks/results/memory.json]

Per GPU, in GiB, for data parallel training (every GPU holds everything) and for `run.sharding=fsdp2`
over --gpus GPUs (weights, gradients, optimiser state and the frozen KL reference divided by the
number of GPUs, plus the largest block gathered twice: the one computing and the one prefetched):
  weights      every parameter at model.dtype
  trainable    LoRA's parameters (rank and targets of the config) or the whole transformer
  grads+adam   gradients and AdamW's two moments of the trainable parameters, at model.dtype
  reference    the frozen copy a full fine-tune keeps for the KL term (kl_beta > 0)
  activations  what autograd saves in one training forward of train_batch_size samples (x 2 when
               classifier-free guidance runs in the training forward), with gradient checkpointing as
               the config sets it (then: the block inputs plus one block's recomputation)
Not counted: the text encoders and VAE (loaded in model.dtype for rollouts and decoding: add their
size), the CUDA context and allocator fragmentation (typically 1-3 GiB). Attention saves what a
flash-attention kernel saves (q, k, v, output, log-sum-exp; no T x T matrix)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30

# model.path -> the transformer's diffusers class, its config as differences from the class defaults
# (the defaults are the flagship checkpoint's transformer/config.json), the policy's LoRA targets,
# the text length of the prompt encoder, and whether guidance is embedded (no CFG batch)
FAMILIES = {
    "stabilityai/stable-diffusion-3.5-medium": dict(
        cls="SD3Transformer2DModel", family="sd3",
        config={"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
                "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"},
        lora=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
    "black-forest-labs/FLUX.1-dev": dict(cls="FluxTransformer2DModel", family="flux", config={"guidance_embeds": True},
                                         embedded_guidance=True),
    "Qwen/Qwen-Image": dict(cls="QwenImageTransformer2DModel", family="qwen_image", config={}),
    "Qwen/Qwen-Image-2.1": dict(cls="QwenImage21Transformer2DModel", family="qwen_image21", config={}),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": dict(
        cls="WanTransformer3DModel", family="wan", config={"num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}),
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": dict(cls="WanTransformer3DModel", family="wan", config={}, experts=2),
    "Tongyi-MAI/Z-Image-Turbo": dict(cls="ZImageTransformer2DModel", family="z_image", config={}),
    "black-forest-labs/FLUX.2-dev": dict(cls="Flux2Transformer2DModel", family="flux2", config={},
                                         embedded_guidance=True),
    # FLUX.2 [klein] 4B: 5 double- and 20 single-stream blocks, 24 heads x 128, MLP 3 x 3072 (as MLX and
    # C ports of it state); the text input is three stacked hidden states of Qwen3-4B (3 x 2560), as
    # the klein pipeline builds it; no guidance embedding
    "black-forest-labs/FLUX.2-klein-4B": dict(
        cls="Flux2Transformer2DModel", family="flux2",
        config={"num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "joint_attention_dim": 7680,
                "guidance_embeds": False}),
}
DEFAULT_LORA = ("to_q", "to_k", "to_v", "to_out.0")


def shipped_configs() -> list[Path]:
    """Training configs of real checkpoints (not the shapes testbed, ReNO or launch configs)."""
    skip = {"shapes", "reno", "accelerate"}
    return sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in skip)


def build_meta(spec: dict, dtype: torch.dtype):
    import diffusers

    with torch.device("meta"):
        model = getattr(diffusers, spec["cls"])(**spec["config"])
    return model.to(dtype)


def inputs(spec: dict, model, batch: int, height: int, width: int, frames: int | None, text_len: int, dtype):
    """One training forward's keyword arguments on the meta device."""
    m = dict(device="meta", dtype=dtype)
    c = model.config
    fam = spec["family"]
    h, w = height // 8, width // 8
    t = torch.ones(batch, device="meta", dtype=torch.float32)
    if fam == "sd3":
        return dict(hidden_states=torch.empty(batch, c.in_channels, h, w, **m),
                    encoder_hidden_states=torch.empty(batch, 77 + text_len, c.joint_attention_dim, **m),
                    pooled_projections=torch.empty(batch, c.pooled_projection_dim, **m), timestep=t)
    if fam in ("flux", "flux2"):
        n = (h // 2) * (w // 2)
        ids = 3 if fam == "flux" else 4
        kw = dict(hidden_states=torch.empty(batch, n, c.in_channels, **m),
                  encoder_hidden_states=torch.empty(batch, text_len, c.joint_attention_dim, **m),
                  timestep=t, img_ids=torch.zeros(n, ids, device="meta"), txt_ids=torch.zeros(text_len, ids, device="meta"))
        if c.guidance_embeds:
            kw["guidance"] = t
        if fam == "flux":
            kw["pooled_projections"] = torch.empty(batch, c.pooled_projection_dim, **m)
        return kw
    if fam == "qwen_image":
        n = (h // 2) * (w // 2)
        return dict(hidden_states=torch.empty(batch, n, c.in_channels, **m),
                    encoder_hidden_states=torch.empty(batch, text_len, c.joint_attention_dim, **m),
                    encoder_hidden_states_mask=torch.ones(batch, text_len, device="meta", dtype=torch.long),
                    timestep=t, img_shapes=[[(1, h // 2, w // 2)]] * batch)
    if fam == "qwen_image21":  # one token per 16 x 16 pixels (the pipeline's vae_scale_factor), text first
        h, w = height // 16, width // 16
        return dict(hidden_states=torch.empty(batch, h * w, c.in_channels, **m),
                    encoder_hidden_states=torch.empty(batch, text_len, c.context_in_dim, **m), timestep=t,
                    img_shapes=[[(1, h, w)]] * batch,
                    img_mask=torch.cat([torch.zeros(batch, text_len, dtype=torch.bool, device="meta"),
                                        torch.ones(batch, h * w // 4, dtype=torch.bool, device="meta")], dim=1))
    if fam == "wan":
        f = (frames - 1) // 4 + 1
        return dict(hidden_states=torch.empty(batch, c.in_channels, f, h, w, **m),
                    encoder_hidden_states=torch.empty(batch, text_len, c.text_dim, **m), timestep=t)
    if fam == "z_image":
        return dict(x=[torch.empty(c.in_channels, 1, h, w, **m) for _ in range(batch)], t=t,
                    cap_feats=[torch.empty(text_len, c.cap_feat_dim, **m) for _ in range(batch)])
    raise ValueError(f"no meta inputs for family {fam!r}")


class _FlashAttention(torch.autograd.Function):
    """What a flash-attention kernel keeps for its backward: q, k, v, the output and the row-wise
    log-sum-exp (float32), never the T x T attention matrix. Shapes only (meta tensors)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the forward is measured only
        raise NotImplementedError


def _flash_sdpa(query, key, value, *args, **kwargs):
    return _FlashAttention.apply(query, key, value)


def saved_bytes(model, kwargs: dict) -> int:
    """Bytes autograd saves for the backward in one forward (meta tensors: nothing is computed), each
    tensor once and parameters not at all, with attention saving what a flash-attention kernel saves (the meta device's SDPA would save the T x T
    attention weights of the math kernel, which no GPU run at these sizes uses)."""
    total = [0]
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()

    def pack(t):
        base = t._base if t._base is not None else t
        # a weight saved by its layer is the parameter itself (no new memory); a tensor saved twice,
        # or through several views, is held once
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            total[0] += base.numel() * base.element_size()
        return t

    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**kwargs, return_dict=False)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return total[0]


def estimate(path: Path, gpus: int) -> dict:
    from flowalign.config import load_config

    cfg = load_config(str(path))
    spec = FAMILIES.get(cfg.model.path)
    row = {"config": str(path.relative_to(ROOT)), "model": cfg.model.path}
    if spec is None:
        row["skipped"] = "its transformer's architecture config is not transcribed here"
        return row
    dtype = getattr(torch, cfg.model.dtype)
    model = build_meta(spec, dtype)
    experts = spec.get("experts", 1)
    params = sum(p.numel() for p in model.parameters()) * experts
    trained_experts = experts if cfg.model.get("experts", "both") == "both" else 1
    if cfg.lora.enabled:
        from peft import LoraConfig

        targets = list(cfg.lora.target_modules or spec.get("lora", DEFAULT_LORA))
        model.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, target_modules=targets))
        trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) * trained_experts
    else:
        trainable = sum(p.numel() for p in model.parameters()) * trained_experts
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or not cfg.lora.enabled)
    size = torch.empty(0, dtype=dtype).element_size()
    a = cfg.algorithm
    cfg_batch = 1 if spec.get("embedded_guidance") or cfg.sampler.guidance <= 1 else 2
    batch = int(a.get("train_batch_size", 1)) * cfg_batch
    height, width = cfg.model.height or 1024, cfg.model.width or 1024
    text_len = cfg.model.max_sequence_length or 256
    kwargs = inputs(spec, model, batch, height, width, cfg.model.get("num_frames") or 81, text_len, dtype)
    try:
        full = saved_bytes(model, kwargs)  # no checkpointing
    except Exception as e:  # an op without a meta kernel (data-dependent shapes)
        full, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    from flowalign.sharding import block_lists

    blk = [b for blocks in block_lists(model) for b in blocks]  # the units FSDP2 shards
    per_block_inputs = 0
    if full is None:
        acts = 0
    elif cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
        ckpt = saved_bytes(model, kwargs)  # block inputs kept by checkpointing (and the non-block layers)
        acts = ckpt + full // max(1, len(blk))  # + one block recomputed in the backward
        per_block_inputs = ckpt
    else:
        acts = full
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blk), default=0) * size
    weights = params * size
    grads_adam = 3 * trainable * size
    reference = trainable * size if not cfg.lora.enabled and (a.get("kl_beta") or 0) > 0 else 0
    dp = weights + grads_adam + reference + acts
    # sharded: the trained transformer's weights and state over the GPUs (frozen experts stay whole)
    trained_weights = weights * trained_experts / experts
    fsdp = (weights - trained_weights) + (trained_weights + grads_adam + reference) / gpus + 2 * largest_block + acts
    row.update({
        "parameters_B": params / 1e9, "trainable_M": trainable / 1e6, "dtype": cfg.model.dtype,
        "train_forward_batch": batch, "resolution": f"{width}x{height}" + (
            f"x{cfg.model.num_frames}" if cfg.model.get("num_frames") else ""),
        "gradient_checkpointing": bool(cfg.model.gradient_checkpointing),
        "weights_gib": weights / GiB, "grads_adam_gib": grads_adam / GiB, "reference_gib": reference / GiB,
        "activations_gib": acts / GiB if full is not None else None,
        "activations_no_checkpointing_gib": full / GiB if full is not None else None,
        "checkpointed_inputs_gib": per_block_inputs / GiB,
        "peak_per_gpu_data_parallel_gib": dp / GiB, f"peak_per_gpu_fsdp2_{gpus}_gib": fsdp / GiB,
    })
    if full is None:
        row["activations_note"] = f"not measurable on the meta device ({why}); the peaks exclude activations"
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8, help="GPUs the FSDP2 column shards over")
    ap.add_argument("--out", default="benchmarks/results/memory.json")
    args = ap.parse_args(argv)
    rows = []
    for path in shipped_configs():
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            row = estimate(path, args.gpus)
        rows.append(row)
        if "skipped" in row:
            print(f"{row['config']}: skipped ({row['skipped']})")
            continue
        acts = "n/a" if row["activations_gib"] is None else f"{row['activations_gib']:.1f} GiB"
        print(f"{row['config']}: {row['parameters_B']:.2f} B parameters, {row['trainable_M']:.1f} M trainable, "
              f"activations {acts} (batch {row['train_forward_batch']}, "
              f"{row['resolution']}) | per GPU: data parallel {row['peak_per_gpu_data_parallel_gib']:.1f} GiB, "
              f"FSDP2 x{args.gpus} {row[f'peak_per_gpu_fsdp2_{args.gpus}_gib']:.1f} GiB")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"gpus": args.gpus, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
