"""GPU smoke test of the SD3 path: a randomly initialised SD3 pipeline (no download) saved and
reloaded in bf16, SDE rollouts timed under each attention backend with the velocity compared to the
math kernel, then two Flow-GRPO iterations of `flowalign train` on the device in that dtype with
its first ratio (must be 1: same dtype, noise and code path) and NFE, then FSDP2 (`run.sharding`)
on the device: a float32 step equal to the unsharded one, bf16 mixed precision within tolerance.

    python -m benchmarks.speed.gpu_smoke [--device cuda] [--dtype bfloat16]
        [--backends sdpa,flash,efficient,math] [--out benchmarks/results/gpu_smoke.json]

A GPU-only script; `--device cpu --dtype float32 --backends sdpa,math --small` runs it on a CPU (as
the tests do). Prints one line per check and exits 1 if a check fails."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import samplers
from flowalign.config import load_config
from flowalign.policies import SD3Policy
from flowalign.report import write_json
from flowalign.testing import save_tiny_sd3
from flowalign.trainer import Trainer

SIZES = {  # SD3-like proportions at a size any GPU holds; --small for CPU runs
    "default": {"sample_size": 256, "vae_channels": (32, 64, 64, 64), "latent_channels": 16, "num_layers": 6,
                "num_attention_heads": 8, "attention_head_dim": 64, "t5_dim": 256},
    "small": {"sample_size": 32, "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rollouts(path: str, backend: str, args, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Median seconds of an SDE rollout (batch x steps, CFG) under `backend`, peak memory, and the
    velocity on a fixed input (for comparing kernels)."""
    policy = SD3Policy.from_pretrained(path, dtype=args.dtype, device=str(device), attention_backend=backend,
                                       max_sequence_length=32)
    prompts = [f"a photo of {i} red circles" for i in range(args.batch)]
    noise = policy.initial_noise(args.batch, generator=torch.Generator().manual_seed(0))
    sigmas = policy.sigmas(args.steps)
    cond = policy.encode(prompts)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        v = policy.velocity(noise, torch.full((args.batch,), 0.7, device=device), cond, guidance=4.5).float().cpu()
        for i in range(args.repeats + 1):  # the first is a warm-up
            sync(device)
            t0 = time.perf_counter()
            samplers.rollout(policy.velocity_fn(cond, guidance=4.5), noise, sigmas, "flow_sde",
                             generator=torch.Generator(device=device).manual_seed(i))
            sync(device)
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    times = sorted(times[1:])
    return {"rollout_s": times[len(times) // 2], "peak_gib": peak}, v


def train_two_iterations(path: str, backend: str, args, out: str) -> dict:
    prompts = os.path.join(out, "prompts.txt")
    with open(prompts, "w") as f:
        f.write("a red circle\na blue square\ntwo green triangles\na yellow circle above a square\n")
    cfg = load_config(None, [
        f"model.path={path}", f"model.dtype={args.dtype}", f"model.attention_backend={backend}",
        "model.max_sequence_length=32", f"run.device={args.device}", "reward.name=jpeg_compressibility",
        "sampler.num_steps=6", "sampler.guidance=4.5", "algorithm.group_size=4", "algorithm.prompts_per_iteration=2",
        "algorithm.train_batch_size=8", "lora.rank=8", "lora.alpha=16", f"data.train_prompts={prompts}",
        f"run.output_dir={os.path.join(out, 'run')}", "run.max_iterations=2", "run.checkpoint_every=2",
        "run.sample_every=0", "run.progress=false"])
    Trainer(cfg).train()
    with open(os.path.join(out, "run", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {k: rows[0][k] for k in ("first_ratio", "iteration_time", "nfe_rollout", "nfe_train", "loss", "kl")}


def fsdp2_check(path: str, device: torch.device) -> dict:
    """FSDP2 on this device (one process; NCCL on a GPU): the SD3-proportioned transformer sharded
    as `run.sharding=fsdp2` shards it. In float32 one AdamW step of a velocity loss equals the
    unsharded model's; with bf16 mixed precision (float32 master weights) the velocity stays within
    bf16 tolerance of float32; the gathered state dict has every full weight."""
    import copy

    import torch.distributed as dist
    from diffusers import SD3Transformer2DModel

    from flowalign.sharding import full_state_dict, is_dtensor, shard_fsdp2

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        base = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer").to(device).float()
        cfg = base.config
        g = torch.Generator().manual_seed(0)
        side = cfg.sample_size
        inputs = {"hidden_states": torch.randn(2, cfg.in_channels, side, side, generator=g).to(device),
                  "encoder_hidden_states": torch.randn(2, 8, cfg.joint_attention_dim, generator=g).to(device),
                  "pooled_projections": torch.randn(2, cfg.pooled_projection_dim, generator=g).to(device),
                  "timestep": torch.tensor([700.0, 300.0], device=device)}

        def step(model):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-4)
            model(**inputs, return_dict=False)[0].float().pow(2).mean().backward()
            opt.step()

        plain, fp32, bf16 = base, copy.deepcopy(base), copy.deepcopy(base)
        shard_fsdp2([fp32], device)
        shard_fsdp2([bf16], device, "bf16")
        with torch.no_grad():
            v_ref = plain(**inputs, return_dict=False)[0].float()
            v_bf16 = bf16(**inputs, return_dict=False)[0].float()
        bf16_err = ((v_bf16 - v_ref).abs().max() / v_ref.abs().max()).item()
        sharded = all(is_dtensor(p) for p in fp32.parameters())
        step(plain)
        step(fp32)
        full = full_state_dict(fp32)
        ref = plain.state_dict()
        step_err = max((full[k].to(device).float() - ref[k].float()).abs().max().item() for k in ref)
        shapes = all(tuple(full[k].shape) == tuple(ref[k].shape) for k in ref)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finally:
        dist.destroy_process_group()
    return {"sharded": sharded, "fp32_step_max_abs_diff": step_err, "bf16_velocity_rel_err": bf16_err,
            "full_shapes": shapes, "peak_gib": peak}


def memory_check(path: str, device: torch.device, batch: int) -> dict | None:
    """The memory table's activation count (`benchmarks.memory`: bytes autograd saves, counted on the
    meta device with flash attention's saved tensors) against the memory a real bf16 training
    forward of the same transformer keeps allocated on the GPU. None off CUDA."""
    if device.type != "cuda":
        return None
    from diffusers import SD3Transformer2DModel

    from benchmarks.memory import saved_bytes

    model = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch.bfloat16).to(device)
    model.requires_grad_(True)
    cfg = model.config
    with torch.device("meta"):
        meta = SD3Transformer2DModel.from_config(cfg).to(torch.bfloat16)

    def kwargs(dev):
        side = cfg.sample_size
        return dict(hidden_states=torch.zeros(batch, cfg.in_channels, side, side, device=dev, dtype=torch.bfloat16),
                    encoder_hidden_states=torch.zeros(batch, 32, cfg.joint_attention_dim, device=dev,
                                                      dtype=torch.bfloat16),
                    pooled_projections=torch.zeros(batch, cfg.pooled_projection_dim, device=dev, dtype=torch.bfloat16),
                    timestep=torch.full((batch,), 500.0, device=dev))

    estimated = saved_bytes(meta, kwargs("meta"))
    inputs = kwargs(device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        out = model(**inputs, return_dict=False)[0]
    torch.cuda.synchronize(device)
    measured = torch.cuda.memory_allocated(device) - before - out.numel() * out.element_size()
    return {"batch": batch, "estimated_gib": estimated / 2**30, "measured_gib": measured / 2**30,
            "ratio_estimated_over_measured": estimated / max(measured, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--backends", default="sdpa,flash,efficient,math")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="a tiny model (CPU runs)")
    ap.add_argument("--out", default="benchmarks/results/gpu_smoke.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; run on a GPU machine or pass --device cpu --small.")
    backends = args.backends.split(",")
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "dtype": args.dtype, "batch": args.batch, "steps": args.steps,
           "backends": {}, "checks": {}}
    ok = True
    with tempfile.TemporaryDirectory() as d:
        path = save_tiny_sd3(os.path.join(d, "pipe"), **SIZES["small" if args.small else "default"])
        velocities = {}
        for b in backends:
            res["backends"][b], velocities[b] = time_rollouts(path, b, args, device)
            print(f"{b}: rollout {res['backends'][b]['rollout_s'] * 1e3:.1f} ms, peak "
                  f"{res['backends'][b]['peak_gib']} GiB", flush=True)
        ref = velocities.get("math", velocities[backends[0]])
        tol = 5e-2 if args.dtype in ("bfloat16", "float16") else 1e-4
        for b, v in velocities.items():
            err = (v - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
            res["backends"][b]["velocity_rel_err_vs_math"] = err
            good = err <= tol
            ok &= good
            print(f"{'OK  ' if good else 'FAIL'} {b}: velocity max rel. difference to math {err:.2e} (tol {tol})")
        train = train_two_iterations(path, backends[0], args, d)
        res["train"] = train
        good = abs(train["first_ratio"] - 1) < 1e-5
        ok &= good
        print(f"{'OK  ' if good else 'FAIL'} flowalign train ({backends[0]}, {args.dtype}): first ratio "
              f"{train['first_ratio']:.8f}, {train['iteration_time']:.2f} s/iteration, NFE rollout "
              f"{train['nfe_rollout']} train {train['nfe_train']}")
        fs = fsdp2_check(path, device)
        res["fsdp2"] = fs
        good = fs["sharded"] and fs["full_shapes"] and fs["fp32_step_max_abs_diff"] < 1e-5 \
            and fs["bf16_velocity_rel_err"] < 5e-2
        ok &= good
        print(f"{'OK  ' if good else 'FAIL'} FSDP2 (one process, {'NCCL' if device.type == 'cuda' else 'gloo'}): "
              f"float32 step vs unsharded max abs diff {fs['fp32_step_max_abs_diff']:.2e} (tol 1e-5), bf16 mixed "
              f"precision velocity rel. err {fs['bf16_velocity_rel_err']:.2e} (tol 5e-2), gathered shapes "
              f"{'full' if fs['full_shapes'] else 'WRONG'}")
        mem = memory_check(path, device, args.batch)
        if mem is not None:  # a measurement to report, not a pass/fail check
            res["memory"] = mem
            print(f"INFO activations of one bf16 training forward (batch {mem['batch']}): memory table's count "
                  f"{mem['estimated_gib']:.3f} GiB, allocated on the GPU {mem['measured_gib']:.3f} GiB "
                  f"(ratio {mem['ratio_estimated_over_measured']:.2f})")
    res["ok"] = ok
    write_json(args.out, res)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
