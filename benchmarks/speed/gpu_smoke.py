"""GPU smoke test of the SD3 path: a randomly initialised SD3 pipeline (no download) saved and
reloaded in bf16, SDE rollouts timed under each attention backend with the velocity compared to the
math kernel, then two Flow-GRPO iterations of `flowalign train` on the device in that dtype with
its first ratio (must be 1: same dtype, noise and code path) and NFE.

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
    res["ok"] = ok
    write_json(args.out, res)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
