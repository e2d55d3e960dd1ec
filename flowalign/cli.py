"""The `flowalign` command line.

    flowalign sample --model PATH --prompt "a red circle" --steps 28 --guidance 7 --out grid.png
"""

from __future__ import annotations

import argparse
import os
import sys


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="diffusers pipeline directory or hub id" + ("" if required else " (default: the shapes model)"))
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (transformer and VAE)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--attention-backend", default="sdpa",
                   help="sdpa (default) | math | flash | efficient | cudnn | xformers")
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 tokens per prompt (default: the checkpoint's flowalign.json, else 256)")


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .images import save_grid
    from .policies import load_policy

    prompts = [p for p in args.prompt for _ in range(args.images_per_prompt)]
    policy = load_policy(args.model, dtype=args.dtype, device=_device(args.device),
                         attention_backend=args.attention_backend, max_sequence_length=args.max_sequence_length)
    with torch.no_grad():
        images = policy.generate(prompts, num_steps=args.steps, guidance=args.guidance, height=args.height,
                                 width=args.width, seed=args.seed)
    path = save_grid(images, args.out, nrow=args.images_per_prompt if len(args.prompt) > 1 else None)
    print(f"wrote {len(prompts)} image(s) to {path}")
    return 0


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    import json

    from benchmarks.shapes.evaluate import DEFAULT_MODEL, evaluate_policy, first_per_task, load_prompts

    from .policies import load_policy

    metas = first_per_task(load_prompts(args.prompts), args.per_task)
    policy = load_policy(args.model or DEFAULT_MODEL, dtype=args.dtype, device=_device(args.device),
                         attention_backend=args.attention_backend, max_sequence_length=args.max_sequence_length)
    summary = evaluate_policy(policy, metas, images_per_prompt=args.images_per_prompt, num_steps=args.steps,
                              guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, out=args.out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/summary.json, results.jsonl and grid.png")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import TrainingError, train

    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    try:
        out = train(cfg)
    except TrainingError as e:
        print(f"flowalign: training stopped: {e}", file=sys.stderr)
        return 1
    if out:
        print(f"done: final weights in {out}; metrics, samples and checkpoints in {cfg.run.output_dir}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .algorithms.dense_grpo import calibrate
    from .config import load_config

    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    path = calibrate(cfg)
    print(f"wrote {path}; train with sampler.psi={path}")
    return 0


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd_demo(args: argparse.Namespace) -> int:
    """Flow-GRPO on the committed shapes model (the README's demo), from any working directory."""
    args.config = os.path.join(REPO, "configs", "shapes", "flow_grpo.yaml")
    args.overrides = ["run.output_dir=runs/demo", f"model.path={os.path.join(REPO, 'benchmarks', 'shapes', 'model')}",
                      f"data.train_prompts={os.path.join(REPO, 'benchmarks', 'shapes', 'prompts', 'train.jsonl')}",
                      *args.overrides]
    return cmd_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate images with a pipeline and write a PNG grid")
    _add_model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="ODE steps (default: the checkpoint's, else 28)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the checkpoint's, else 7)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="output PNG grid")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a model on a benchmark")
    bench = p.add_subparsers(dest="benchmark", required=True)
    p = bench.add_parser("shapes", help="GenEval rules on the shapes world with the procedural detector")
    _add_model_args(p, required=False)
    p.add_argument("--prompts", default="held-out", help="held-out | train | a GenEval-format JSONL file")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--per-task", type=int, default=None, help="evaluate only the first N prompts of each task")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_eval_shapes)

    p = sub.add_parser("train", help="fine-tune with an RL algorithm: flowalign train CONFIG [key=value ...]")
    p.add_argument("config", help="YAML config (see configs/), or - for the defaults")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.max_iterations=10")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="DenseGRPO's exploration calibration: write psi(t) to "
                                         "run.output_dir/psi.json (flowalign calibrate CONFIG [key=value ...])")
    p.add_argument("config", help="a dense_grpo YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.calib_rounds=5")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="the README's demo: Flow-GRPO on the shapes testbed (runs/demo)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/shapes/flow_grpo.yaml")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one sentence, no traceback
        print(f"flowalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
