"""Training configuration: one dataclass per concern, merged with a YAML file and `key=value`
overrides through omegaconf. Unknown keys and invalid combinations fail at start with one sentence
that names the key and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from samplers import STEP_KINDS


@dataclass
class ModelConfig:
    path: str = "benchmarks/shapes/model"  # diffusers pipeline directory or hub id
    dtype: str = "float32"  # transformer/VAE dtype: float32 | bfloat16 | float16
    attention_backend: str = "sdpa"  # sdpa | math | flash | efficient | cudnn | xformers
    max_sequence_length: int | None = None  # T5 tokens (default: checkpoint's flowalign.json, else 256)
    gradient_checkpointing: bool = False
    height: int | None = None  # image size (default: checkpoint's)
    width: int | None = None
    num_frames: int | None = None  # video models: frames per video (default: checkpoint's)


@dataclass
class LoRAConfig:
    enabled: bool = True  # false: full fine-tuning of the transformer
    rank: int = 32
    alpha: float = 64.0
    target_modules: list[str] = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"])


@dataclass
class SamplerConfig:
    num_steps: int = 10  # denoising steps of a training rollout
    guidance: float = 4.5  # classifier-free guidance during rollouts and training (1 = off)
    kind: str = "flow_sde"  # SDE step kind on trained steps: flow_sde | dance_sde | cps
    noise_level: float = 0.7  # a of Flow-GRPO's SDE (eta for dance_sde)
    sde_window: list[int] | None = None  # [start, end): SDE (and training) only there, ODE elsewhere
    psi: Any = None  # DenseGRPO's calibrated std per step: a list of num_steps floats or a psi.json path (flow_sde)
    eval_num_steps: int | None = None  # steps of sample grids / evaluation (default: num_steps)


@dataclass
class RewardConfig:
    name: str = "shapes_geneval"  # a name of reward_models.REWARDS
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of that reward


@dataclass
class FlowGRPOConfig:
    name: str = "flow_grpo"
    group_size: int = 8  # images per prompt (G)
    prompts_per_iteration: int = 4  # distinct prompts per iteration, over all processes
    inner_epochs: int = 1  # policy updates per batch of rollouts
    train_batch_size: int = 8  # samples per optimiser minibatch, per process
    clip_range: float = 1e-4  # PPO ratio clip epsilon
    adv_clip_max: float = 5.0  # advantages are clipped to +- this
    std_scope: Literal["group", "batch"] = "group"  # normalise rewards by the group's or the batch's std
    kl_beta: float = 0.04  # weight of the KL to the reference model (0: no reference pass)
    timestep_fraction: float = 1.0  # fraction of the SDE steps trained per sample (random subset)
    shared_noise: bool = False  # a prompt's G samples start from one initial noise (DanceGRPO), so the group's
    # spread comes from the SDE steps only
    reward_aggregation: Literal["sum", "advantage"] = "sum"  # weighted rewards: advantage of the sum, or sum of
    # the per-reward group advantages (flow_grpo / adv_grpo with reward.name=weighted)


@dataclass
class DenseGRPOConfig(FlowGRPOConfig):
    name: str = "dense_grpo"
    completion_steps: int | None = None  # Euler steps of each latent's ODE completion; None: all remaining steps
    completion_batch_size: int = 128  # latents per model call of the completions (memory bound)
    # exploration calibration (`flowalign calibrate`), DenseGRPO's Algorithm 1
    calib_rounds: int = 10  # calibration rounds
    calib_trajectories: int = 32  # trajectories per round (over all processes)
    calib_eps1: float = 2.0  # |#(gain > 0) - #(gain < 0)| below this: the step explores too little -> raise psi
    calib_eps2: float = 0.01  # psi change per round
    calib_initial_psi: Any = None  # float or list; None: Flow-GRPO's std with sampler.noise_level


@dataclass
class BranchGRPOConfig(FlowGRPOConfig):
    name: str = "branch_grpo"
    group_size: int = 8  # leaves per tree: must equal branch_factor ** len(split_steps)
    split_steps: list[int] = field(default_factory=lambda: [2, 5, 8])  # steps at which every node branches
    branch_factor: int = 2  # children per split
    split_noise_scale: float = 1.0  # s of the split noise
    split_mode: Literal["correlated", "independent"] = "correlated"  # paper | released code
    reward_beta: float = 0.0  # reward fusion: node reward = sum_l softmax(beta log p_path)_l r_l; 0 = leaf mean
    mix: bool = False  # BranchGRPO-Mix: ODE on every step that is neither a split nor in sampler.sde_window
    width_pruning: Literal["none", "parent_top1", "extreme"] = "none"  # on the edges below the last split
    width_keep: int = 1  # extreme: keep the b best and b worst leaves' edges per tree
    depth_pruning: list[int] = field(default_factory=list)  # steps whose incoming edges leave the loss
    depth_pruning_slide: bool = False  # slide the pruned steps one earlier every depth_pruning_interval iterations
    depth_pruning_interval: int = 1
    depth_pruning_stop: int | None = None  # the slide stops here (default: the last split step)
    train_batch_size: int = 16  # tree nodes (parents) per forward pass in training


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_iterations: int = 0  # linear learning-rate warm-up
    ema_decay: float | None = None  # EMA of the trainable weights (e.g. 0.9); None: off
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class DataConfig:
    train_prompts: str = "benchmarks/shapes/prompts/train.jsonl"  # GenEval-format JSONL or a .txt (one prompt a line)
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


@dataclass
class EvalConfig:
    """Held-out evaluation during training, with the same sampling and scoring code as `flowalign eval`."""

    every: int = 0  # iterations between evaluations (0: never); iteration 0 is evaluated when a run starts
    prompts: str = "benchmarks/shapes/prompts/heldout.jsonl"  # GenEval-format JSONL (tags give per-task scores)
    images_per_prompt: int = 2
    reward: str = "shapes_geneval"  # a name of reward_models.REWARDS; a 0/1 correctness gives GenEval's accuracies
    reward_args: dict[str, Any] = field(default_factory=dict)  # shapes_geneval / geneval: mode defaults to strict
    num_steps: int | None = None  # ODE steps (default: sampler.eval_num_steps, else sampler.num_steps)
    seed: int = 4321  # the evaluation's noise: the same at every evaluation
    batch_size: int = 32  # images per generation batch, per process


@dataclass
class AdvGRPOConfig(FlowGRPOConfig):
    """Adv-GRPO: Flow-GRPO whose reward is (or contains) the adversarial DINO discriminator, trained
    by the engine after every batch."""

    name: str = "adv_grpo"


ALGORITHMS: dict[str, type] = {"flow_grpo": FlowGRPOConfig, "dense_grpo": DenseGRPOConfig,
                               "branch_grpo": BranchGRPOConfig, "adv_grpo": AdvGRPOConfig}


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


def _schema(algorithm: str):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm.name={algorithm!r} is unknown; use one of {sorted(ALGORITHMS)}.")
    base = OmegaConf.structured(TrainConfig)
    base.algorithm = OmegaConf.structured(ALGORITHMS[algorithm])
    return base


def load_config(path: str | None = None, overrides: list[str] | None = None):
    """YAML file + `key=value` overrides -> validated DictConfig with the TrainConfig schema."""
    overrides = list(overrides or [])
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not key=value; write e.g. run.max_iterations=10.")
    user = OmegaConf.load(path) if path else OmegaConf.create()
    cli = OmegaConf.from_dotlist(overrides)
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
        raise ValueError(f"unknown config key {key!r}; check its spelling against the README's config table.") from None
    except ValidationError as e:
        key = getattr(e, "full_key", "?")
        raise ValueError(f"config key {key!r} has an invalid value ({str(e).splitlines()[0]}); "
                         "give a value of the documented type.") from None
    validate(cfg)
    return cfg


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
    if a.group_size < 2:
        raise ValueError(f"algorithm.group_size={a.group_size} must be at least 2 for group-relative advantages.")
    if a.prompts_per_iteration < 1 or a.inner_epochs < 1 or a.train_batch_size < 1:
        raise ValueError("algorithm.prompts_per_iteration, inner_epochs and train_batch_size must be at least 1.")
    if not 0 < a.timestep_fraction <= 1:
        raise ValueError(f"algorithm.timestep_fraction={a.timestep_fraction} must be in (0, 1].")
    if a.clip_range <= 0 or a.kl_beta < 0:
        raise ValueError("algorithm.clip_range must be > 0 and algorithm.kl_beta >= 0.")
    if s.psi is not None and s.kind != "flow_sde":
        raise ValueError(f"sampler.psi is set but sampler.kind={s.kind!r}; calibrated psi drives the flow_sde step, "
                         "so set sampler.kind=flow_sde or sampler.psi=null.")
    if a.name == "dense_grpo":
        if a.completion_steps is not None and a.completion_steps < 1:
            raise ValueError(f"algorithm.completion_steps={a.completion_steps} must be at least 1, or null for "
                             "all remaining steps.")
        if a.calib_rounds < 1 or a.calib_trajectories < 2 or a.calib_eps2 <= 0:
            raise ValueError("algorithm.calib_rounds must be >= 1, calib_trajectories >= 2 and calib_eps2 > 0.")
    if a.name == "branch_grpo":
        _validate_branch(cfg)
    if a.name in ("dense_grpo", "branch_grpo") and a.reward_aggregation != "sum":
        raise ValueError(f"algorithm.reward_aggregation={a.reward_aggregation!r} is for flow_grpo and adv_grpo; "
                         f"{a.name} needs reward_aggregation=sum.")
    if a.reward_aggregation == "advantage" and cfg.reward.name != "weighted":
        raise ValueError("algorithm.reward_aggregation=advantage needs reward.name=weighted (several rewards); "
                         "set reward_aggregation=sum for a single reward.")
    if a.name == "adv_grpo":
        names = [cfg.reward.name] + (list((cfg.reward.args.get("weights") or {}).keys())
                                     if cfg.reward.name == "weighted" else [])
        if "adversarial_dino" not in names:
            raise ValueError(f"algorithm.name=adv_grpo needs the adversarial_dino reward (reward.name={cfg.reward.name!r}); "
                             "set reward.name=adversarial_dino or add it to reward.args.weights.")
    if o.ema_decay is not None and not 0 < o.ema_decay < 1:
        raise ValueError(f"optim.ema_decay={o.ema_decay} must be in (0, 1), or null to turn EMA off.")
    if r.max_iterations < 1 or r.checkpoint_every < 1:
        raise ValueError("run.max_iterations and run.checkpoint_every must be at least 1.")
    if cfg.lora.enabled and cfg.lora.rank < 1:
        raise ValueError(f"lora.rank={cfg.lora.rank} must be at least 1 (or set lora.enabled=false).")
    if cfg.eval.every < 0 or cfg.eval.images_per_prompt < 1 or cfg.eval.batch_size < 1:
        raise ValueError("eval.every must be >= 0 (0 = off), eval.images_per_prompt and eval.batch_size >= 1.")
    if not isinstance(r.resume, (bool, str)):
        raise ValueError(f"run.resume={r.resume!r} must be true, false or a checkpoint path.")


def _validate_branch(cfg) -> None:
    a, s = cfg.algorithm, cfg.sampler
    splits = list(a.split_steps)
    if not splits or any(not 0 <= k < s.num_steps for k in splits) or len(set(splits)) != len(splits):
        raise ValueError(f"algorithm.split_steps={splits} must be distinct steps in [0, sampler.num_steps="
                         f"{s.num_steps}).")
    if a.branch_factor < 2:
        raise ValueError(f"algorithm.branch_factor={a.branch_factor} must be at least 2.")
    leaves = a.branch_factor ** len(splits)
    if a.group_size != leaves:
        raise ValueError(f"algorithm.group_size={a.group_size} must equal branch_factor ** len(split_steps) = "
                         f"{leaves} (the leaves of one tree); set algorithm.group_size={leaves}.")
    if s.sde_window is not None and not a.mix:
        lo, hi = s.sde_window
        outside = [k for k in splits if not lo <= k < hi]
        if outside:
            raise ValueError(f"algorithm.split_steps {outside} lie outside sampler.sde_window={list(s.sde_window)}; "
                             "splits need SDE steps (or set algorithm.mix=true).")
    if a.shared_noise:
        raise ValueError("algorithm.shared_noise is for per-sample algorithms; a branch_grpo tree already starts "
                         "its group from one noise, so remove algorithm.shared_noise.")
    if a.width_keep < 1:
        raise ValueError(f"algorithm.width_keep={a.width_keep} must be at least 1.")
    if a.depth_pruning_interval < 1:
        raise ValueError(f"algorithm.depth_pruning_interval={a.depth_pruning_interval} must be at least 1.")
    bad = [k for k in a.depth_pruning if not 1 <= k <= s.num_steps]
    if bad:
        raise ValueError(f"algorithm.depth_pruning steps {bad} must lie in [1, sampler.num_steps={s.num_steps}] "
                         "(the step of an edge's child).")
