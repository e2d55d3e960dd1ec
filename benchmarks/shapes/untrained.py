"""Untrained baselines of the shapes model, for comparison with the committed one.

    python -m benchmarks.shapes.untrained --out runs/untrained_transformer            # trained VAE, fresh transformer
    python -m benchmarks.shapes.untrained --out runs/untrained_all --everything       # nothing trained

Then `flowalign eval shapes --model OUT --out ...` scores them like any model."""

from __future__ import annotations

import argparse
import json
import os

import torch

from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL
from flowalign.testing import TinySD3Config, tiny_sd3_pipeline

from .pretrain import MODEL_CONFIG


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--everything", action="store_true", help="also a random VAE (nothing trained at all)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    fresh = tiny_sd3_pipeline(TinySD3Config(**MODEL_CONFIG))
    if args.everything:
        fresh.save_pretrained(args.out)
    else:
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(args.model, torch_dtype=torch.float32)
        pipe.transformer = fresh.transformer
        pipe.register_modules(transformer=fresh.transformer)
        pipe.save_pretrained(args.out)
    with open(os.path.join(args.model, "flowalign.json")) as f:
        info = json.load(f)
    info.pop("pretrain", None)
    with open(os.path.join(args.out, "flowalign.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
