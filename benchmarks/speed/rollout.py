"""Rollout speed: flowalign's SD3 adapter (SDE rollout with per-step log-probs and every latent
saved) against the stock StableDiffusion3Pipeline call, same tiny model, prompts, steps, guidance.

    python -m benchmarks.speed.rollout [--steps 10 --batch 8 --repeats 5 --out benchmarks/results/rollout.json]

Runs alternate (ours, theirs, ours, ...) so machine noise hits both; the ratio of medians is
reported (target <= 1.1). Then the same rollout by a LoRA policy, on merged weights
(lora.merge_for_sampling) and through the adapter layers, interleaved with the base model's
(target: merged <= 1.05x the base)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

import samplers
from flowalign.policies import SD3Policy
from flowalign.testing import save_tiny_sd3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--max-sequence-length", type=int, default=32)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    ap.add_argument("--out", default="benchmarks/results/rollout.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    def timed(fn, acc: list) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        acc.append(time.perf_counter() - t0)

    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as d:
        path = save_tiny_sd3(os.path.join(d, "pipe"), num_layers=args.layers, num_attention_heads=args.heads,
                             attention_head_dim=args.head_dim)
        policy = SD3Policy.from_pretrained(path, max_sequence_length=args.max_sequence_length,
                                           device=args.device, dtype=args.dtype)
        pipe = policy.pipe  # the same modules: only the sampling loop differs
        prompts = [f"a photo of {i} red circles" for i in range(args.batch)]
        noise = policy.initial_noise(args.batch, generator=torch.Generator().manual_seed(0))
        sigmas = policy.sigmas(args.steps)

        def ours():
            cond = policy.encode(prompts)
            traj = samplers.rollout(policy.velocity_fn(cond, guidance=args.guidance), noise, sigmas, "flow_sde",
                                    generator=gen(1))
            return traj.final

        def theirs():
            return pipe(prompt=prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                        latents=noise.clone(), max_sequence_length=args.max_sequence_length,
                        output_type="latent").images

        with torch.no_grad():
            ours(), theirs()  # warm-up (also fills the adapter's prompt cache, as in training)
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                for fn, acc in ((ours, t_ours), (theirs, t_theirs)):
                    timed(fn, acc)

        # the same rollout by a LoRA policy (a trained-looking adapter on the attention projections):
        # through the adapter layers, and on merged weights (lora.merge_for_sampling), against the base
        lora_policy = SD3Policy.from_pretrained(path, max_sequence_length=args.max_sequence_length,
                                           device=args.device, dtype=args.dtype)
        lora_policy.add_lora(rank=args.lora_rank, alpha=2 * args.lora_rank)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for n, p in lora_policy.transformer.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.01)

        def lora_rollout(merged: bool):
            def run():
                lora_policy.merge_lora = merged
                cond = lora_policy.encode(prompts)
                with lora_policy.sampling_weights():
                    traj = samplers.rollout(lora_policy.velocity_fn(cond, guidance=args.guidance), noise, sigmas,
                                            "flow_sde", generator=gen(1))
                return traj.final
            return run

        with torch.no_grad():
            lora_rollout(True)(), lora_rollout(False)()
            t_merged, t_adapter, t_base = [], [], []
            for _ in range(args.repeats):
                for fn, acc in ((lora_rollout(True), t_merged), (lora_rollout(False), t_adapter), (ours, t_base)):
                    timed(fn, acc)
    res = {
        "device": args.device, "dtype": args.dtype, "steps": args.steps, "batch": args.batch, "guidance": args.guidance, "repeats": args.repeats,
        "transformer_params": sum(p.numel() for p in policy.transformer.parameters()),
        "torch_threads": torch.get_num_threads(),
        "flowalign_rollout_s": statistics.median(t_ours), "diffusers_pipeline_s": statistics.median(t_theirs),
        "flowalign_all_s": t_ours, "diffusers_all_s": t_theirs,
    }
    res["ratio_flowalign_over_diffusers"] = res["flowalign_rollout_s"] / res["diffusers_pipeline_s"]
    res.update({"lora_rank": args.lora_rank, "lora_merged_rollout_s": statistics.median(t_merged),
                "lora_adapter_rollout_s": statistics.median(t_adapter), "base_rollout_s": statistics.median(t_base),
                "lora_merged_all_s": t_merged, "lora_adapter_all_s": t_adapter, "base_all_s": t_base})
    res["ratio_lora_merged_over_base"] = res["lora_merged_rollout_s"] / res["base_rollout_s"]
    res["ratio_lora_adapter_over_base"] = res["lora_adapter_rollout_s"] / res["base_rollout_s"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"flowalign SDE rollout (log-probs + latents): {res['flowalign_rollout_s'] * 1e3:.1f} ms | "
          f"diffusers pipeline: {res['diffusers_pipeline_s'] * 1e3:.1f} ms | "
          f"ratio {res['ratio_flowalign_over_diffusers']:.3f} (target <= 1.1)")
    print(f"LoRA policy rollout (rank {args.lora_rank}): merged weights {res['lora_merged_rollout_s'] * 1e3:.1f} ms, "
          f"through the adapter layers {res['lora_adapter_rollout_s'] * 1e3:.1f} ms, base model "
          f"{res['base_rollout_s'] * 1e3:.1f} ms | merged / base {res['ratio_lora_merged_over_base']:.3f} "
          f"(target <= 1.05), adapter / base {res['ratio_lora_adapter_over_base']:.3f} -> {args.out}")
    return res


if __name__ == "__main__":
    main()
