"""The `flowalign` command line.

    flowalign sample --model PATH --prompt "a red circle" --steps 28 --guidance 7 --out grid.png
"""

from __future__ import annotations

import argparse
import os
import sys

from . import shapes


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 would silently mean 'the default')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def guidance_scale(text: str) -> float:
    """argparse type: a CFG scale >= 1 (1 turns classifier-free guidance off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1 (1 turns classifier-free guidance off)")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (`flowalign sample: error: ...`), like
    every other flowalign error; `--help` still prints the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="diffusers pipeline directory or hub id" + ("" if required else " (default: the shapes model)"))
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (transformer and VAE)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--attention-backend", default="sdpa",
                   help="sdpa (default) | math | flash | efficient | cudnn | xformers")
    p.add_argument("--max-sequence-length", type=positive_int, default=None,
                   help="T5 tokens per prompt (default: the checkpoint's flowalign.json, else 256)")


def check_out_file(path: str, flag: str, extensions: tuple[str, ...]) -> None:
    """An output file path that can be written: not a folder, a known image extension, its folder not a file."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; pass a file path such as {os.path.join(path, 'grid.png')!r}.")
    if not path.lower().endswith(extensions):
        raise ValueError(f"{flag} {path!r} has no image extension; end it with one of {', '.join(extensions)}.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r} lies under {parent!r}, which is a file; pass a path in a folder.")


def check_out_dir(path: str, flag: str = "--out") -> None:
    """An output folder path: not an existing file, and no file on the way to it."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        raise ValueError(f"{flag} {path!r} is (or lies under) the file {p!r}; pass a folder path.")


def _device(name: str | None) -> str:
    from reward_models.base import default_device

    from .config import check_device

    check_device(name)
    return str(default_device(name))


def _load_policy(args: argparse.Namespace, path: str, lora: str | None = None):
    """The policy of pipeline `path` with the model arguments of `args`, plus a LoRA folder if given."""
    from .policies import load_policy

    policy = load_policy(path, dtype=args.dtype, device=_device(args.device),
                         attention_backend=getattr(args, "attention_backend", "sdpa"),
                         max_sequence_length=args.max_sequence_length)
    if lora:
        if not any(os.path.isfile(os.path.join(lora, f)) for f in policy.lora_files):
            raise FileNotFoundError(f"--lora {lora!r} has no {' or '.join(policy.lora_files)}; pass the lora/ "
                                    "folder of a training run.")
        try:
            policy.load_lora(lora)
        except Exception as e:  # noqa: BLE001 - safetensors, peft and diffusers each raise their own
            raise ValueError(f"--lora {lora!r}: its weights cannot be loaded ({(str(e).splitlines() or [''])[0][:160]}); "
                             "pass the lora/ folder a training run wrote.") from None
    return policy


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .images import save_grid

    prompts = [p for p in args.prompt for _ in range(args.images_per_prompt)]
    check_out_file(args.out, "--out", (".png", ".jpg", ".jpeg", ".webp"))
    policy = _load_policy(args, args.model)
    with torch.no_grad():
        images = policy.generate(prompts, num_steps=args.steps, guidance=args.guidance, height=args.height,
                                 width=args.width, seed=args.seed)
    path = save_grid(images, args.out, nrow=args.images_per_prompt if len(args.prompt) > 1 else None)
    print(f"wrote {len(prompts)} image(s) to {path}")
    return 0


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    import json

    from flowalign.evaluation.shapes import evaluate_policy, first_per_task, load_prompts
    from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL

    metas = first_per_task(load_prompts(args.prompts), args.per_task)
    check_out_dir(args.out)
    policy = _load_policy(args, args.model or DEFAULT_MODEL, args.lora)
    summary = evaluate_policy(policy, metas, images_per_prompt=args.images_per_prompt, num_steps=args.steps,
                              guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, out=args.out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/summary.json, results.jsonl and grid.png")
    return 0


def cmd_eval_geneval(args: argparse.Namespace) -> int:
    import json

    from flowalign.evaluation.geneval import (
        METADATA_FILE,
        ShapesEvaluator,
        check_generation_settings,
        generate_layout,
        read_metadata,
        record_generation_settings,
        score_layout,
    )

    if args.detector != "shapes" and not args.clip:
        raise ValueError("--clip is missing: GenEval's colour classifier needs an open_clip model (a local folder, "
                         "or an architecture name with --clip-pretrained FILE); or use --detector shapes.")
    out = args.score_only or args.out
    if not out:
        raise ValueError("pass --out DIR (generate and score) or --score-only DIR (score existing images).")
    if not args.score_only:
        if not args.model:
            raise ValueError("--model is missing: pass a diffusers pipeline directory, or --score-only DIR.")
        metas = read_metadata(args.metadata or METADATA_FILE)[: args.limit]
        settings = {
            "model": os.path.abspath(args.model) if os.path.exists(args.model) else args.model,
            "lora": os.path.abspath(args.lora) if args.lora else None, "dtype": args.dtype, "steps": args.steps,
            "guidance": args.guidance, "seed": args.seed, "height": args.height, "width": args.width,
            "images_per_prompt": args.images_per_prompt, "metadata": os.path.abspath(args.metadata or METADATA_FILE)}
        check_generation_settings(out, settings)
        policy = _load_policy(args, args.model, args.lora)
        record_generation_settings(out, settings)  # after the model loads: a typo in --model records nothing
        n = generate_layout(policy, metas, out, images_per_prompt=args.images_per_prompt, num_steps=args.steps,
                            guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, height=args.height,
                            width=args.width)
        print(f"generated {n} prompt(s) ({len(metas) - n} already done) into {out}")
        del policy
    if args.detector == "shapes":
        evaluator = ShapesEvaluator()
    else:
        from reward_models.geneval import GenEvalEvaluator

        evaluator = GenEvalEvaluator(args.detector, args.clip, args.clip_pretrained, device=_device(args.device))
    summary = score_layout(out, evaluator)
    print(json.dumps(summary, indent=2))
    print(f"GenEval overall {summary['overall']:.4f}; wrote {out}/results.jsonl, summary.json and report.html")
    return 0


def cmd_eval_densealign(args: argparse.Namespace) -> int:
    import json

    from flowalign.evaluation.densealign import compare, dense_captions
    from flowalign.evaluation.shapes import load_prompts
    from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL

    judge = None
    if args.judge != "shapes":
        from flowalign.evaluation.vlm_judge import DEFAULT_QUESTION, VLMJudge

        judge = VLMJudge(args.judge, question=args.judge_question or DEFAULT_QUESTION, device=_device(args.device))
    metas = dense_captions(args.num_prompts, args.seed) if args.prompts == "shapes" else load_prompts(args.prompts)

    summary = compare(_load_policy(args, args.model or DEFAULT_MODEL, args.lora),
                      _load_policy(args, args.baseline or DEFAULT_MODEL, args.baseline_lora), metas,
                      images_per_prompt=args.images_per_prompt, seed=args.seed, num_steps=args.steps,
                      guidance=args.guidance, out=args.out, judge=judge)
    print(json.dumps(summary, indent=2))
    print(f"net win rate {summary['net_win_rate']:+.3f} (95% CI {summary['ci'][0]:+.3f} .. {summary['ci'][1]:+.3f}); "
          f"wrote {args.out}/summary.json and results.jsonl")
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


RENO_KEYS = ("model", "prompt", "prompts", "reward", "reward_args", "iters", "lr", "optimizer", "momentum", "adam_eps",
             "nesterov", "grad_clip", "reg_weight", "steps", "guidance", "height", "width", "seed", "out",
             "dtype", "device", "attention_backend", "max_sequence_length", "gradient_checkpointing")


def cmd_reno(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from omegaconf import OmegaConf

    from flowalign.evaluation.shapes import load_prompts

    from .noise_opt import RenoSettings, build_rewards, optimize_noise, parse_reward_weights, write_result
    from .policies import load_policy

    settings = {f.name for f in dataclasses.fields(RenoSettings)} - {"weights"}
    conf = {**{k: v for k, v in dataclasses.asdict(RenoSettings()).items() if k in settings},
            "seed": 0, "out": "runs/reno", "dtype": "float32", "attention_backend": "sdpa", "reward_args": {}}
    if args.config:
        user = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
        unknown = sorted(set(user) - set(RENO_KEYS))
        if unknown:
            raise ValueError(f"unknown reno config key {unknown[0]!r} in {args.config}; known keys: {list(RENO_KEYS)}.")
        conf.update(user)
    for k in RENO_KEYS:  # flags given on the command line win over the file
        v = getattr(args, k, None)
        if v is not None:
            conf[k] = v
    if not conf.get("model"):
        raise ValueError("no model: pass --model PATH or set model: in the config.")
    if bool(conf.get("prompt")) == bool(conf.get("prompts")):
        raise ValueError("pass exactly one of --prompt TEXT or --prompts FILE (GenEval JSONL or .txt).")
    items = [{"prompt": conf["prompt"]}] if conf.get("prompt") else load_prompts(str(conf["prompts"]), key="prompts")
    weights = parse_reward_weights(conf.get("reward") or "")
    rewards = build_rewards(weights, conf.get("reward_args"))
    policy = load_policy(conf["model"], dtype=conf["dtype"], device=_device(conf.get("device")),
                         attention_backend=conf["attention_backend"], max_sequence_length=conf.get("max_sequence_length"))
    policy.transformer.requires_grad_(False)
    policy.pipe.vae.requires_grad_(False)
    st = RenoSettings(**{k: conf.get(k) for k in settings}, weights=weights)
    summary = []
    for i, item in enumerate(items):
        res = optimize_noise(policy, item["prompt"], rewards, st, seed=int(conf["seed"]) + i,
                             metadata=item if "include" in item else None, progress=True)
        folder = os.path.join(conf["out"], f"{i:05d}")
        write_result(res, folder)
        row = {k: res[k] for k in ("prompt", "initial_reward", "best_reward", "best_iteration", "nfe",
                                   "seconds_per_iteration")}
        summary.append(row)
        print(f"[{i}] {item['prompt']!r}: reward {res['initial_reward']:.4f} -> {res['best_reward']:.4f} "
              f"(best at iteration {res['best_iteration']}); {folder}/initial_final.png")
    with open(os.path.join(conf["out"], "summary.json"), "w") as f:
        json.dump({"settings": {k: conf[k] for k in conf if k not in ("reward_args",)}, "prompts": summary}, f,
                  indent=2, default=str)
    print(f"wrote {conf['out']}/summary.json")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate
    from .config import load_config

    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    path = calibrate(cfg)
    print(f"wrote {path}; train with sampler.psi={path}")
    return 0


def cmd_convert_detector(args: argparse.Namespace) -> int:
    from reward_models.geneval_convert import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}; score with flowalign eval geneval --detector {out}")
    return 0


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd_serve_reward(args: argparse.Namespace) -> int:
    """Serve a registry reward over HTTP until interrupted (reward_models/server.py)."""
    import yaml

    from reward_models.server import serve

    kwargs = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg {item!r} is not key=value; write e.g. --arg mode=strict.")
        kwargs[key] = yaml.safe_load(value)
    serve(args.name, kwargs, host=args.host, port=args.port, batch_size=args.batch_size)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Flow-GRPO on the committed shapes model (the README's demo), from any working directory."""
    args.config = os.path.join(REPO, "configs", "shapes", "flow_grpo.yaml")
    from .trainer import run_dir_in_use

    out, n = "runs/demo", 2
    while run_dir_in_use(out):
        out, n = f"runs/demo_{n}", n + 1  # a run folder belongs to one run: the next free one
    args.overrides = [f"run.output_dir={out}", f"model.path={shapes.MODEL_DIR}",
                      f"data.train_prompts={shapes.TRAIN_PROMPTS}", f"eval.prompts={shapes.HELDOUT_PROMPTS}",
                      *args.overrides]
    return cmd_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="flowalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate images with a pipeline and write a PNG grid")
    _add_model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--images-per-prompt", type=positive_int, default=1)
    p.add_argument("--steps", type=positive_int, default=None, help="ODE steps (default: the checkpoint's, else 28)")
    p.add_argument("--guidance", type=guidance_scale, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the checkpoint's, else 7)")
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="output PNG grid")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a model on a benchmark")
    bench = p.add_subparsers(dest="benchmark", required=True)
    p = bench.add_parser("shapes", help="GenEval rules on the shapes world with the procedural detector")
    _add_model_args(p, required=False)
    p.add_argument("--lora", default=None, help="a LoRA folder (pytorch_lora_weights.safetensors) for --model")
    p.add_argument("--prompts", default="held-out", help="held-out | train | a GenEval-format JSONL file")
    p.add_argument("--images-per-prompt", type=positive_int, default=4)
    p.add_argument("--per-task", type=positive_int, default=None, help="evaluate only the first N prompts of each task")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--guidance", type=guidance_scale, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_eval_shapes)

    p = bench.add_parser("geneval", help="GenEval: generate in GenEval's layout, score with Mask2Former + CLIP colours")
    _add_model_args(p, required=False)
    p.add_argument("--lora", default=None, help="a LoRA folder (pytorch_lora_weights.safetensors) for --model")
    p.add_argument("--metadata", default=None, help="GenEval's evaluation_metadata.jsonl (default: the packaged copy)")
    p.add_argument("--out", default=None, help="output folder: NNNNN/metadata.jsonl + samples/, then the scores")
    p.add_argument("--score-only", default=None, metavar="DIR", help="score the images already in DIR; no generation")
    p.add_argument("--detector", default=None, required=True,
                   help="a local Mask2Former COCO-instance checkpoint folder, or 'shapes' (the testbed's detector)")
    p.add_argument("--clip", default=None, help="open_clip model for colours: a folder with open_clip_config.json, "
                                               "hf-hub:ID, or an architecture name with --clip-pretrained")
    p.add_argument("--clip-pretrained", default=None, help="checkpoint file or tag for --clip (e.g. ViT-L-14 weights)")
    p.add_argument("--images-per-prompt", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--guidance", type=guidance_scale, default=4.5)
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per generation batch")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts of the metadata file")
    p.set_defaults(func=cmd_eval_geneval)

    p = bench.add_parser("densealign", help="DenseAlignBench-style net win rate of --model over --baseline")
    p.add_argument("--model", default=None, help="pipeline directory (default: the shapes model)")
    p.add_argument("--lora", default=None, help="a LoRA folder (pytorch_lora_weights.safetensors) for --model")
    p.add_argument("--baseline", default=None, help="pipeline directory (default: the shapes model)")
    p.add_argument("--baseline-lora", default=None)
    p.add_argument("--prompts", default="shapes", help="'shapes' (generated dense captions) or a GenEval JSONL")
    p.add_argument("--num-prompts", type=positive_int, default=48)
    p.add_argument("--judge", default="shapes",
                   help="shapes (the procedural clause judge) or a VLM folder/hub id (image-text-to-text model)")
    p.add_argument("--judge-question", default=None,
                   help="the judge's question with {caption} (default: which image matches the caption better)")
    p.add_argument("--images-per-prompt", type=positive_int, default=2)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--guidance", type=guidance_scale, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--max-sequence-length", type=positive_int, default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_eval_densealign)

    p = sub.add_parser("train", help="fine-tune with an RL algorithm: flowalign train CONFIG [key=value ...]")
    p.add_argument("config", help="YAML config (see configs/), or - for the defaults")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.max_iterations=10")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reno", help="ReNO: optimise the initial noise of a generation against "
                                    "differentiable rewards")
    p.add_argument("--config", default=None, help="YAML with the keys below (flags override it)")
    p.add_argument("--model", default=None, help="diffusers pipeline directory or hub id")
    p.add_argument("--prompt", default=None, help="one prompt")
    p.add_argument("--prompts", default=None, help="a prompt file: GenEval JSONL (gives metadata), .txt, or held-out")
    p.add_argument("--reward", default=None, help="weighted rewards, e.g. hps=5,pickscore=0.05 or shapes_soft=1")
    p.add_argument("--iters", type=positive_int, default=None, help="optimisation steps (default 50)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 5)")
    p.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="sgd (Nesterov momentum 0.9) or adam")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--grad-clip", dest="grad_clip", type=float, default=None, help="noise gradient-norm clip (0.1)")
    p.add_argument("--reg-weight", dest="reg_weight", type=float, default=None, help="chi regulariser weight (0.01)")
    p.add_argument("--steps", type=positive_int, default=None, help="Euler steps of the differentiable sampler (1)")
    p.add_argument("--guidance", type=guidance_scale, default=None, help="CFG scale (1 = off)")
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (default runs/reno)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--max-sequence-length", dest="max_sequence_length", type=positive_int, default=None)
    p.set_defaults(func=cmd_reno)

    p = sub.add_parser("calibrate", help="DenseGRPO's exploration calibration: write psi(t) to "
                                         "run.output_dir/psi.json (flowalign calibrate CONFIG [key=value ...])")
    p.add_argument("config", help="a dense_grpo YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.calib_rounds=5")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("convert-detector", help="convert GenEval's mmdetection Mask2Former checkpoint (.pth) into a "
                                                "transformers folder for --detector")
    p.add_argument("checkpoint", help="mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_*.pth (mmdetection 2.x)")
    p.add_argument("out", help="output folder")
    p.set_defaults(func=cmd_convert_detector)

    p = sub.add_parser("serve-reward", help="serve a reward over HTTP for reward.name=remote "
                                            "(flowalign serve-reward NAME [--arg key=value ...])")
    p.add_argument("name", help="a reward of the registry (reward_models.REWARDS)")
    p.add_argument("--arg", action="append", default=[], help="a keyword argument of the reward, key=value (repeat)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; the URL is printed)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="samples per reward call")
    p.set_defaults(func=cmd_serve_reward)

    p = sub.add_parser("demo", help="the README's demo: Flow-GRPO on the shapes testbed (runs/demo)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/shapes/flow_grpo.yaml")
    p.set_defaults(func=cmd_demo)
    return parser


def user_error(e: BaseException) -> str | None:
    """One line for an error caused by the user's input or machine (bad files, folders, devices, disk),
    or None for a bug (which keeps its traceback)."""
    import errno

    first = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, (ValueError, FileNotFoundError)):
        return first or type(e).__name__
    if isinstance(e, OSError):
        what = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        if e.errno == errno.ENOSPC:
            return f"no space left on the device writing{what}; free space or write elsewhere (--out / run.output_dir)."
        if isinstance(e, (IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)):
            return f"cannot use{what}: {e.strerror or first}; pass a writable file or folder path."
        return first or f"{type(e).__name__}{what}"
    name = type(e).__name__
    if name == "RewardServerError":
        return first
    if name in ("SafetensorError", "HeaderTooLarge", "MetadataIncompleteBuffer", "UnpicklingError"):
        return f"a weights file is damaged or not a safetensors file ({first}); re-download or re-save it."
    if name.endswith(("YAMLError", "ScannerError", "ParserError")) or type(e).__module__.startswith("omegaconf"):
        return f"the configuration cannot be read ({first})."
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # noqa: BLE001 - user errors: one sentence, no traceback
        msg = user_error(e)
        if msg is None:
            raise
        print(f"flowalign: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
