"""Training configuration: one dataclass per concern, merged with a YAML file and `key=value`
overrides through omegaconf. Unknown keys and invalid combinations fail at start with one sentence
that names the key and the fix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from reward_models import reward_names
from samplers import STEP_KINDS

from . import shapes
from .algorithms import FlowGRPOConfig, registered


@dataclass
class ModelConfig:
    path: str = shapes.MODEL_DIR  # diffusers pipeline directory or hub id (default: the shapes model)
    dtype: str = "float32"  # transformer/VAE dtype: float32 | bfloat16 | float16
    attention_backend: str = "sdpa"  # sdpa | math | flash | efficient | cudnn | xformers
    max_sequence_length: int | None = None  # T5 tokens (default: checkpoint's flowalign.json, else 256)
    gradient_checkpointing: bool = False
    height: int | None = None  # image size (default: checkpoint's)
    width: int | None = None
    num_frames: int | None = None  # video models: frames per video (default: checkpoint's)
    experts: str = "both"  # Wan2.2 A14B: the experts training changes: both | high | low (noise)


@dataclass
class LoRAConfig:
    enabled: bool = True  # false: full fine-tuning of the transformer
    rank: int = 32
    alpha: float = 64.0
    target_modules: list[str] = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"])
    # passes without gradient (rollouts, completions, evaluation) run on W + scale B A, merged once per
    # pass, at the base model's speed; false: through the adapter layers (the same numbers up to rounding)
    merge_for_sampling: bool = True


@dataclass
class SamplerConfig:
    num_steps: int = 10  # denoising steps of a training rollout
    guidance: float = 4.5  # classifier-free guidance during rollouts and training (1 = off)
    guidance_2: float | None = None  # Wan2.2 A14B: the low-noise expert's guidance (None: `guidance`)
    kind: str = "flow_sde"  # SDE step kind on trained steps: flow_sde | dance_sde | cps
    noise_level: float = 0.7  # a of Flow-GRPO's SDE (eta for dance_sde)
    sde_window: list[int] | None = None  # [start, end): SDE (and training) only there, ODE elsewhere
    # Flow-GRPO-Fast: a window of sde_window_size steps placed at random in sde_window_range = [lo, hi]
    # on every rollout (start uniform in lo..hi - size, as in the reference)
    sde_window_size: int | None = None
    sde_window_range: list[int] | None = None
    shift: float | None = None  # a static shift of the linear sigma grid (DanceGRPO/BranchGRPO); None: the model's grid
    psi: Any = None  # DenseGRPO's calibrated std per step: a list of num_steps floats or a psi.json path (flow_sde)
    eval_num_steps: int | None = None  # steps of sample grids / evaluation (default: num_steps)


@dataclass
class RewardConfig:
    name: str = "shapes_geneval"  # a name of reward_models.REWARDS
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of that reward
    device: str | None = None  # the reward model's device (e.g. cuda:1), passed as its `device` argument


def build_train_reward(cfg):
    """The training reward of a config: reward.name with reward.args, on reward.device if set."""
    from reward_models import build_reward

    args = OmegaConf.to_container(cfg.reward.args, resolve=True)
    dev = cfg.reward.get("device")
    if dev is not None:
        if args.get("device") not in (None, dev):
            raise ValueError(f"reward.device={dev!r} and reward.args.device={args['device']!r} disagree; set one.")
        args["device"] = dev
    try:
        return build_reward(cfg.reward.name, **args)
    except ValueError as e:
        if dev is not None and "takes no argument 'device'" in str(e):
            raise ValueError(f"reward.device={dev!r}: reward {cfg.reward.name!r} takes no device (it runs where its "
                             "images are); drop reward.device, or serve it elsewhere with `flowalign serve-reward`.") \
                from None
        raise


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_iterations: int = 0  # linear learning-rate warm-up
    ema_decay: float | None = None  # EMA of the trainable weights (e.g. 0.9); None: off
    ema_warmup: bool = True  # the references' decay warm-up min((1 + n) / (10 + n), ema_decay) at step n
    ema_update_every: int = 1  # advance the EMA when (step + 1) is a multiple (flow_grpo's scripts: 8)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class DataConfig:
    train_prompts: str = shapes.TRAIN_PROMPTS  # GenEval-format JSONL or a .txt (one prompt a line)
    sample_prompts: list[str] = field(default_factory=lambda: [
        "a photo of a red circle", "a photo of three triangles", "a photo of a square left of a circle",
        "a photo of a blue triangle and a yellow square"])  # fixed prompts of the sample grids


@dataclass
class RunConfig:
    output_dir: str = "runs/shapes_flow_grpo"
    max_iterations: int = 100
    seed: int = 0
    resume: Any = False  # false | true (latest checkpoint of output_dir) | a checkpoint path
    checkpoint_every: int = 10  # iterations; the final iteration is always checkpointed
    keep_checkpoints: int = 2
    sample_every: int = 10  # iterations between sample grids (0: never)
    device: str | None = None  # default: accelerate's choice
    progress: bool = True
    sharding: str = "none"  # none (data parallel) | fsdp2 (the transformer sharded over the processes)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # + wandb, ... (flowalign/trackers.py)
    tracker_project: str = "flowalign"  # the wandb (comet, ...) project
    max_weight_abs: float | None = 1.0e4  # a trainable weight beyond this is divergence: stop before checkpointing it


@dataclass
class EvalConfig:
    """Held-out evaluation during training, with the same sampling and scoring code as `flowalign eval`."""

    every: int = 0  # iterations between evaluations (0: never); iteration 0 is evaluated when a run starts
    prompts: str = shapes.HELDOUT_PROMPTS  # GenEval-format JSONL (tags give per-task scores)
    images_per_prompt: int = 2
    reward: str = "shapes_geneval"  # a name of reward_models.REWARDS; a 0/1 correctness gives GenEval's accuracies
    reward_args: dict[str, Any] = field(default_factory=dict)  # shapes_geneval / geneval: mode defaults to strict
    num_steps: int | None = None  # ODE steps (default: sampler.eval_num_steps, else sampler.num_steps)
    seed: int = 4321  # the evaluation's noise: the same at every evaluation
    batch_size: int = 32  # images per generation batch, per process


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: Any = field(default_factory=FlowGRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_device(device: str | None, key: str = "--device") -> None:
    """A device string that exists here: cpu, mps, or cuda[:N] with a visible GPU."""
    if device is None or device in ("cpu", "auto"):
        return
    import torch

    if str(device).startswith("cuda"):
        n = torch.cuda.device_count()
        idx = str(device).split(":", 1)[1] if ":" in str(device) else "0"
        if n == 0 or not idx.isdigit() or int(idx) >= n:
            raise ValueError(f"{key}={device!r}: this machine has {n} visible CUDA GPU(s); use {key}=cpu"
                             + (f" or cuda:0..{n - 1}." if n else "."))
        return
    if device == "mps" and torch.backends.mps.is_available():
        return
    raise ValueError(f"{key}={device!r} is not a device here; use cpu or cuda[:N].")


def _read_yaml(path: str):
    """A config file as a mapping, with one sentence for a missing file, bad YAML or a non-mapping."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist; pass a YAML file such as "
                                "configs/shapes/flow_grpo.yaml.")
    try:
        user = OmegaConf.load(path)
    except UnicodeDecodeError:
        raise ValueError(f"config file {path!r} is not UTF-8 text; pass a YAML file.") from None
    except Exception as e:  # yaml's scanner/parser errors and omegaconf's
        where = str(e).replace("\n", " ").strip()
        raise ValueError(f"config file {path!r} is not valid YAML ({where[:160]}); fix it, or start from "
                         "configs/shapes/flow_grpo.yaml.") from None
    if not OmegaConf.is_dict(user):
        raise ValueError(f"config file {path!r} holds a {type(user).__name__}, not a mapping of sections "
                         "(model:, sampler:, algorithm:, ...); see docs/configuration.md.")
    for key, value in user.items():
        if value is None or (not OmegaConf.is_dict(value) and key in ("algorithm", "reward", "model", "sampler",
                                                                      "optim", "run", "data", "eval", "lora")):
            raise ValueError(f"config file {path!r}: section {key}: is {value!r}, not a mapping of keys; "
                             "see docs/configuration.md.")
    return user


def _schema(algorithm: str):
    base = OmegaConf.structured(TrainConfig)
    base.algorithm = OmegaConf.structured(registered(algorithm).schema)
    return base


def load_config(path: str | None = None, overrides: list[str] | None = None):
    """YAML file + `key=value` overrides -> validated DictConfig with the TrainConfig schema."""
    overrides = list(overrides or [])
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not key=value; write e.g. run.max_iterations=10.")
    user = _read_yaml(path) if path else OmegaConf.create()
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as e:  # omegaconf's grammar errors, e.g. an unbalanced bracket
        raise ValueError(f"overrides {overrides} cannot be parsed ({str(e).splitlines()[0]}); write key=value, "
                         "quoting lists: 'sampler.sde_window=[0,4]'.") from None
    for key in ("algorithm", "reward", "model", "sampler", "optim", "run", "data", "eval", "lora"):
        if key in cli and not isinstance(cli[key], dict) and not OmegaConf.is_dict(cli[key]):
            raise ValueError(f"override {key}={cli[key]!r} replaces a whole section; set one of its keys, e.g. "
                             f"{key}.name=... (docs/configuration.md).")
    name = OmegaConf.select(cli, "algorithm.name") or OmegaConf.select(user, "algorithm.name") or "flow_grpo"
    for name_key, args_key in (("reward.name", "reward.args"), ("eval.reward", "eval.reward_args")):
        new_reward = OmegaConf.select(cli, name_key)
        if new_reward is not None and new_reward != OmegaConf.select(user, name_key) \
                and OmegaConf.select(user, args_key) is not None:
            OmegaConf.update(user, args_key, {}, merge=False)  # the file's arguments belong to the replaced reward
    try:
        cfg = OmegaConf.merge(_schema(name), user, cli)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = getattr(e, "full_key", None) or str(e).split("\n")[0]
        raise ValueError(f"unknown config key {key!r}; check its spelling against docs/configuration.md.") from None
    except ValidationError as e:
        key = getattr(e, "full_key", "?")
        raise ValueError(f"config key {key!r} has an invalid value ({str(e).splitlines()[0]}); "
                         "give a value of the documented type.") from None
    validate(cfg)
    return cfg


def _validate_random_window(s, algorithm: str) -> None:
    if (s.sde_window_size is None) != (s.sde_window_range is None):
        raise ValueError("sampler.sde_window_size and sampler.sde_window_range go together (Flow-GRPO-Fast's random "
                         "window); set both, or neither.")
    if s.sde_window_size is None:
        return
    rng = list(s.sde_window_range)
    if s.sde_window is not None:
        raise ValueError(f"sampler.sde_window={list(s.sde_window)} and sampler.sde_window_range={rng} both place the "
                         "SDE window; keep one (fixed or random).")
    if len(rng) != 2 or not 0 <= rng[0] <= rng[1] <= s.num_steps or not 1 <= s.sde_window_size <= rng[1] - rng[0]:
        raise ValueError(f"sampler.sde_window_range={rng} with sde_window_size={s.sde_window_size} must satisfy "
                         f"0 <= lo, lo + size <= hi <= sampler.num_steps={s.num_steps}.")
    if algorithm not in ("flow_grpo", "adv_grpo"):
        raise ValueError(f"sampler.sde_window_range (a random window per rollout) is Flow-GRPO-Fast's; "
                         f"algorithm.name={algorithm!r} needs a fixed sampler.sde_window.")


def validate(cfg) -> None:
    """Cross-field checks, each failing with one sentence naming the key and the fix."""
    a, s, r, o = cfg.algorithm, cfg.sampler, cfg.run, cfg.optim
    if s.kind not in STEP_KINDS or s.kind == "ode":
        raise ValueError(f"sampler.kind={s.kind!r} must be an SDE kind: flow_sde, dance_sde or cps.")
    if s.num_steps < 1:
        raise ValueError(f"sampler.num_steps={s.num_steps} must be at least 1.")
    if s.sde_window is not None:
        w = list(s.sde_window)
        if len(w) != 2 or not 0 <= w[0] < w[1] <= s.num_steps:
            raise ValueError(f"sampler.sde_window={w} must be [start, end) with 0 <= start < end <= "
                             f"sampler.num_steps={s.num_steps}.")
    _validate_random_window(s, a.name)
    if s.shift is not None and s.shift <= 0:
        raise ValueError(f"sampler.shift={s.shift} must be > 0 (1 is the unshifted linear grid), or null for the "
                         "model's own grid.")
    if s.psi is not None and s.kind != "flow_sde":
        raise ValueError(f"sampler.psi is set but sampler.kind={s.kind!r}; calibrated psi drives the flow_sde step, "
                         "so set sampler.kind=flow_sde or sampler.psi=null.")
    check_device(r.device, "run.device")
    check_device(cfg.reward.get("device"), "reward.device")
    if r.sharding not in ("none", "fsdp2"):
        raise ValueError(f"run.sharding={r.sharding!r} is unknown; use none (data parallel) or fsdp2.")
    if r.sharding == "fsdp2" and o.mixed_precision == "fp16":
        raise ValueError("run.sharding=fsdp2 computes in bf16 or float32; set optim.mixed_precision=bf16 (or no): "
                         "fp16 needs a loss scaler that FSDP2 training here does not run.")
    from .trackers import check_trackers

    check_trackers(list(r.trackers))
    if r.max_weight_abs is not None and not r.max_weight_abs > 0:
        raise ValueError(f"run.max_weight_abs={r.max_weight_abs} must be > 0, or null to turn the check off.")
    registered(a.name).schema.validate(cfg)
    _validate_prompt_files(cfg)
    if o.ema_decay is not None and not 0 < o.ema_decay < 1:
        raise ValueError(f"optim.ema_decay={o.ema_decay} must be in (0, 1), or null to turn EMA off.")
    if o.ema_update_every < 1:
        raise ValueError(f"optim.ema_update_every={o.ema_update_every} must be at least 1 (1: every optimiser step).")
    for key in ("max_iterations", "checkpoint_every"):
        if r[key] < 1:
            raise ValueError(f"run.{key}={r[key]} must be at least 1.")
    if r.keep_checkpoints < 1:
        raise ValueError(f"run.keep_checkpoints={r.keep_checkpoints} must be at least 1 (the checkpoints kept; the "
                         "latest is always among them).")
    if cfg.model.experts not in ("both", "high", "low"):
        raise ValueError(f"model.experts={cfg.model.experts!r} is unknown; use both, high or low (the Wan2.2 "
                         "experts training changes).")
    if s.guidance_2 is not None and not s.guidance_2 >= 1:
        raise ValueError(f"sampler.guidance_2={s.guidance_2} must be at least 1, or null for sampler.guidance.")
    if not s.guidance >= 1:
        raise ValueError(f"sampler.guidance={s.guidance} must be at least 1 (1 turns classifier-free guidance off).")
    for key, value in (("model.height", cfg.model.height), ("model.width", cfg.model.width),
                       ("model.num_frames", cfg.model.num_frames), ("sampler.eval_num_steps", s.eval_num_steps),
                       ("eval.num_steps", cfg.eval.num_steps), ("model.max_sequence_length",
                                                               cfg.model.max_sequence_length)):
        if value is not None and value < 1:
            raise ValueError(f"{key}={value} must be at least 1, or null for the checkpoint's default.")
    if cfg.lora.enabled and cfg.lora.rank < 1:
        raise ValueError(f"lora.rank={cfg.lora.rank} must be at least 1 (or set lora.enabled=false).")
    if cfg.eval.every < 0 or cfg.eval.images_per_prompt < 1 or cfg.eval.batch_size < 1:
        raise ValueError("eval.every must be >= 0 (0 = off), eval.images_per_prompt and eval.batch_size >= 1.")
    if not isinstance(r.resume, (bool, str)):
        raise ValueError(f"run.resume={r.resume!r} must be true, false or a checkpoint path.")


GENEVAL_REWARDS = ("shapes_geneval", "geneval")  # rewards that read GenEval clauses from the prompt rows


def _validate_prompt_files(cfg) -> None:
    """A GenEval reward scores a prompt's clauses; a .txt prompt file has none (every image would
    score 1), so it needs a GenEval-format .jsonl file."""
    checks = [("data.train_prompts", cfg.data.train_prompts, "reward.name", reward_names(cfg.reward.name,
                                                                                           cfg.reward.args))]
    if cfg.eval.every:
        checks.append(("eval.prompts", cfg.eval.prompts, "eval.reward", reward_names(cfg.eval.reward,
                                                                                       cfg.eval.reward_args)))
    for key, path, reward_key, names in checks:
        hit = [n for n in names if n in GENEVAL_REWARDS]
        if hit and not str(path).endswith(".jsonl"):
            raise ValueError(f"{key}={path!r} is not a GenEval-format .jsonl file, but {reward_key} uses {hit[0]}, "
                             "which scores each prompt's GenEval clauses; give a .jsonl prompt file or another reward.")
