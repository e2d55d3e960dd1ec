"""Pretrain the shapes testbed's tiny StableDiffusion3Pipeline on rendered data, on CPU.

    python -m benchmarks.shapes.pretrain --out flowalign/shapes/model --minutes 34 --vae-fraction 0.2

Stage 1 trains the VAE (MSE + a small KL) on rendered scenes; its latent statistics set the VAE's
shift/scaling factors. Stage 2 trains the SD3 transformer with the rectified-flow loss
(v = eps - x0, logit-normal sigmas, 10 % caption dropout to "" so classifier-free guidance works)
on freshly rendered scenes of training prompts, with frozen tiny CLIP/T5 text encoders whose
embeddings are cached per prompt, and an EMA of the weights. The wall-clock budget is split
between the stages; a checkpoint is written atomically every `--checkpoint-every` seconds and a
rerun with the same --out resumes. The EMA weights are saved in fp16 as a standard pipeline
directory, with `flowalign.json` holding the sampling defaults."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from flowalign.testing import TinySD3Config, tiny_sd3_pipeline
from flowalign.trainer import load_state
from reward_models.shapes.prompts import prompt_set
from reward_models.shapes.render import render_prompt

SAMPLING_DEFAULTS = {"height": 32, "width": 32, "num_steps": 12, "guidance": 4.0, "max_sequence_length": 12}
MODEL_CONFIG = dict(sample_size=32, vae_channels=(32, 64, 64), latent_channels=4, patch_size=1, num_layers=6,
                    num_attention_heads=4, attention_head_dim=32, text_hidden=32, text_layers=2, text_projection=32,
                    t5_dim=64, clip_merges=2000, clip_max_length=24, shift=1.0, seed=0)


def batch_images(rows, rng: random.Random, n: int) -> torch.Tensor:
    """n rendered scenes of random training prompts -> [n, 3, 32, 32] in [-1, 1], and their prompts."""
    picks = [rng.choice(rows) for _ in range(n)]
    imgs = np.stack([render_prompt(r, rng.getrandbits(31))[0] for r in picks])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [r["prompt"] for r in picks]


def atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="flowalign/shapes/model")
    ap.add_argument("--work", default=None, help="checkpoint folder (default: OUT.work)")
    ap.add_argument("--minutes", type=float, default=34.0, help="total wall-clock budget")
    ap.add_argument("--vae-fraction", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-channels", default=",".join(map(str, MODEL_CONFIG["vae_channels"])),
                    help="comma list, one down-sampling per extra entry (32,64,64: 8x8x4 latents; 32,64: 16x16)")
    ap.add_argument("--latent-channels", type=int, default=MODEL_CONFIG["latent_channels"])
    ap.add_argument("--patch-size", type=int, default=MODEL_CONFIG["patch_size"])
    ap.add_argument("--clip-max-length", type=int, default=MODEL_CONFIG["clip_max_length"],
                    help="CLIP tokens (24: every prompt fits)")
    ap.add_argument("--t5-max-length", type=int, default=SAMPLING_DEFAULTS["max_sequence_length"],
                    help="T5 tokens (12: every prompt fits)")
    args = ap.parse_args(argv)
    model_config = dict(MODEL_CONFIG, vae_channels=tuple(int(c) for c in args.vae_channels.split(",")),
                        latent_channels=args.latent_channels, patch_size=args.patch_size,
                        clip_max_length=args.clip_max_length)
    sampling = dict(SAMPLING_DEFAULTS, max_sequence_length=args.t5_max_length)
    work = args.work or args.out.rstrip("/") + ".work"
    os.makedirs(work, exist_ok=True)
    ckpt_path = os.path.join(work, "pretrain.pt")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    rows = prompt_set("train", 100, seed=0)
    pipe = tiny_sd3_pipeline(TinySD3Config(**model_config))
    vae, tr = pipe.vae, pipe.transformer
    ema = copy.deepcopy(tr).requires_grad_(False)
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    opt = torch.optim.AdamW(tr.parameters(), lr=args.lr, weight_decay=0.0)
    state = {"stage": "vae", "vae_steps": 0, "steps": 0, "elapsed": 0.0, "losses": [], "model_config": model_config}
    if os.path.exists(ckpt_path):
        ck = load_state(ckpt_path)  # tensors and plain containers: never code
        saved = ck["state"].get("model_config")
        if saved is not None and saved != model_config:
            sys.exit(f"{ckpt_path} holds a run with model config {saved}, not {model_config}: rerun with the "
                     f"same architecture flags to resume it, or delete {work} (or pass another --work) to start afresh.")
        vae.load_state_dict(ck["vae"]), tr.load_state_dict(ck["transformer"]), ema.load_state_dict(ck["ema"])
        opt_vae.load_state_dict(ck["opt_vae"]), opt.load_state_dict(ck["opt"])
        state = ck["state"]
        rng.setstate(ck["py_rng"]), torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {ckpt_path}: stage {state['stage']}, {state['elapsed'] / 60:.1f} min done")

    def checkpoint():
        atomic_save({"vae": vae.state_dict(), "transformer": tr.state_dict(), "ema": ema.state_dict(),
                     "opt_vae": opt_vae.state_dict(), "opt": opt.state_dict(), "state": state,
                     "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, ckpt_path)

    budget = args.minutes * 60
    vae_budget = budget * args.vae_fraction
    last_ck = time.time()
    t_start = time.time() - state["elapsed"]

    def tick():
        nonlocal last_ck
        state["elapsed"] = time.time() - t_start
        if time.time() - last_ck > args.checkpoint_every:
            checkpoint()
            last_ck = time.time()

    # ---- stage 1: VAE ----------------------------------------------------------------------
    if state["stage"] == "vae":
        bar = tqdm(total=int(vae_budget), desc="vae (s)", unit="s")
        vae.train()
        while state["elapsed"] < vae_budget:
            x, _ = batch_images(rows, rng, args.batch)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            opt_vae.step()
            state["vae_steps"] += 1
            bar.n = int(min(state["elapsed"], vae_budget))
            bar.set_postfix(mse=f"{loss.item():.4f}", steps=state["vae_steps"])
            bar.refresh()
            tick()
        bar.close()
        vae.eval().requires_grad_(False)
        with torch.no_grad():  # latent statistics -> SD3's shift and scaling factors
            lat = torch.cat([vae.encode(batch_images(rows, rng, 256)[0]).latent_dist.mode() for _ in range(4)])
            x, _ = batch_images(rows, rng, 256)
            mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample, x).item()
        vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=float(1 / lat.std()))
        state.update(stage="transformer", vae_mse=mse, shift_factor=float(lat.mean()), scaling_factor=float(1 / lat.std()))
        print(f"VAE: {state['vae_steps']} steps, reconstruction MSE {mse:.5f} ([-1, 1] range)")
        checkpoint()
    vae.register_to_config(shift_factor=state["shift_factor"], scaling_factor=state["scaling_factor"])
    vae.eval().requires_grad_(False)

    # ---- stage 2: transformer ---------------------------------------------------------------
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def embed(prompts):
        todo = [p for p in dict.fromkeys(prompts) if p not in cache]
        if todo:
            e, _, q, _ = pipe.encode_prompt(prompt=todo, prompt_2=todo, prompt_3=todo, do_classifier_free_guidance=False,
                                            max_sequence_length=sampling["max_sequence_length"])
            cache.update({p: (e[i], q[i]) for i, p in enumerate(todo)})
        return torch.stack([cache[p][0] for p in prompts]), torch.stack([cache[p][1] for p in prompts])

    bar = tqdm(total=int(budget), initial=int(state["elapsed"]), desc="transformer (s)", unit="s")
    tr.train()
    while state["elapsed"] < budget:
        x, prompts = batch_images(rows, rng, args.batch)
        prompts = ["" if rng.random() < args.caption_dropout else p for p in prompts]
        with torch.no_grad():
            x0 = (vae.encode(x).latent_dist.mode() - state["shift_factor"]) * state["scaling_factor"]
        enc, pooled = embed(prompts)
        sigma = torch.sigmoid(torch.randn(x0.shape[0]))  # logit-normal(0, 1)
        eps = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        v = tr(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=enc, pooled_projections=pooled,
               return_dict=False)[0]
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + state["steps"]) / (10 + state["steps"]))
            for pe, p in zip(ema.parameters(), tr.parameters()):
                pe.lerp_(p, 1 - decay)
        state["steps"] += 1
        state["losses"].append(loss.item())
        bar.n = int(min(state["elapsed"], budget))
        bar.set_postfix(loss=f"{np.mean(state['losses'][-50:]):.4f}", steps=state["steps"])
        bar.refresh()
        tick()
    bar.close()
    checkpoint()

    # ---- save ---------------------------------------------------------------------------------
    pipe.transformer = ema
    pipe.register_modules(transformer=ema)
    pipe.to(torch.float16).save_pretrained(args.out)  # stored in half precision (small) ...
    for enc in ("text_encoder", "text_encoder_2", "text_encoder_3"):  # ... loaded in float32 by every library:
        path = os.path.join(args.out, enc, "config.json")  # transformers follows the config's dtype,
        with open(path) as f:  # diffusers upcasts its own models
            enc_cfg = json.load(f)
        enc_cfg["dtype"] = "float32"
        with open(path, "w") as f:
            json.dump(enc_cfg, f, indent=2, sort_keys=True)
    info = {**sampling, "pretrain": {"command": "python -m benchmarks.shapes.pretrain " + " ".join(sys.argv[1:] if argv is None else argv),
                                               "minutes": args.minutes, "vae_steps": state["vae_steps"],
                                               "transformer_steps": state["steps"], "vae_mse": state["vae_mse"],
                                               "final_loss": float(np.mean(state["losses"][-100:])),
                                               "model_config": {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in model_config.items()}}}
    with open(os.path.join(args.out, "flowalign.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"saved {args.out}: {state['steps']} transformer steps, loss {info['pretrain']['final_loss']:.4f}")


if __name__ == "__main__":
    main()
