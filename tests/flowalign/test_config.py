from pathlib import Path

import pytest

from flowalign.config import load_config

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
               if p.parent.name not in ("reno", "accelerate"))  # training configs
RENO_YAMLS = sorted((ROOT / "configs" / "reno").glob("*.yaml"))
LAUNCH_YAMLS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in YAMLS}
    assert {"shapes/flow_grpo.yaml", "flow_grpo/sd3.5-medium_geneval.yaml", "flow_grpo/sd3.5-medium_pickscore.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_validates(path):
    cfg = load_config(str(path))
    assert cfg.run.max_iterations >= 1 and cfg.algorithm.name


@pytest.mark.parametrize("path", RENO_YAMLS, ids=lambda p: p.name)
def test_reno_configs_use_known_keys(path):
    from omegaconf import OmegaConf

    from flowalign.cli import RENO_KEYS

    conf = OmegaConf.to_container(OmegaConf.load(path))
    assert set(conf) <= set(RENO_KEYS) and conf["model"] and conf["reward"]


def test_launch_configs_are_accelerate_configs():
    """The shipped launch configs parse as accelerate configs: one GPU, 8-GPU DDP, 8-GPU FSDP2 (flowalign
    shards; accelerate launches), several nodes."""
    from accelerate.commands.config.config_args import ClusterConfig

    got = {p.name: ClusterConfig.from_yaml_file(str(p)) for p in LAUNCH_YAMLS}
    assert set(got) == {"single_gpu.yaml", "ddp_8gpu.yaml", "fsdp2_8gpu.yaml", "multi_node.yaml"}
    assert got["single_gpu.yaml"].num_processes == 1 and got["ddp_8gpu.yaml"].num_processes == 8
    assert got["fsdp2_8gpu.yaml"].fsdp_config == {}  # accelerate's FSDP stays off: run.sharding=fsdp2 shards
    node = got["multi_node.yaml"]
    assert node.num_machines == 2 and node.num_processes == 16 and node.main_process_ip


def test_new_algorithm_configs_are_shipped():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in YAMLS}
    for n in ("shapes/dense_grpo.yaml", "shapes/branch_grpo.yaml", "shapes/branch_grpo_mix.yaml",
              "flux/flux.1-dev_branch_grpo.yaml", "wan/wan2.1-t2v-1.3b_flow_grpo.yaml"):
        assert n in names
    assert load_config(str(ROOT / "configs/shapes/branch_grpo_mix.yaml")).algorithm.mix
    early = load_config(str(ROOT / "configs/shapes/branch_grpo_early.yaml"))
    assert early.algorithm.mix and list(early.algorithm.split_steps) == [0, 1, 2] and early.optim.lr == 3e-4


@pytest.mark.parametrize("config, result", [
    ("branch_grpo_early_pruned.yaml", "learn_branch_grpo_splits024_depth_pruned_hard_40min.json"),
    ("adv_grpo_pickscore.yaml", "learn_adv_grpo_pickscore_hard_40min.json"),
    ("prompt_echo_grpo_color_attr.yaml", "learn_prompt_echo_grpo_color_attr_40min.json")])
def test_a_shapes_config_is_the_measured_run(config, result):
    """The shapes configs that cite a 40-minute run reproduce it: every model, sampler, reward, algorithm,
    optimiser and data key that run resolved to (keys added to the schema since then aside)."""
    import json

    from omegaconf import OmegaConf

    ran = json.loads((ROOT / "benchmarks/results" / result).read_text())["resolved_config"]
    shipped = OmegaConf.to_container(load_config(str(ROOT / "configs/shapes" / config)))
    for section in ("model", "lora", "sampler", "reward", "algorithm", "optim", "data"):
        assert {k: shipped[section][k] for k in ran[section]} == ran[section], section
    if config == "branch_grpo_early_pruned.yaml":
        assert not shipped["algorithm"]["mix"] and shipped["algorithm"]["depth_pruning"] == [6, 7, 8, 9, 10]
    elif config == "adv_grpo_pickscore.yaml":
        assert shipped["reward"]["name"] == "adversarial_pickscore" and shipped["algorithm"]["name"] == "adv_grpo"
    else:
        assert shipped["reward"]["name"] == "prompt_echo" and shipped["data"]["train_prompts"].endswith("color_attr.jsonl")


def test_sd35_configs_carry_the_anchor_defaults():
    cfg = load_config(str(ROOT / "configs/flow_grpo/sd3.5-medium_geneval.yaml"))
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.optim.lr) == (32, 64, 3e-4)
    assert (cfg.sampler.num_steps, cfg.sampler.noise_level, cfg.algorithm.clip_range) == (10, 0.7, 1e-4)
    # Flow-GRPO's config/grpo.py geneval_sd3: beta 0.04, global_std, timestep_fraction 0.99 (the first 9 steps)
    a = cfg.algorithm
    assert (a.group_size, a.prompts_per_iteration, a.kl_beta, a.std_scope) == (24, 48, 0.04, "batch")
    assert (a.timestep_fraction, a.timestep_selection, a.kl_form, a.drop_zero_advantage) == (0.99, "first", "flow_grpo",
                                                                                             True)
    assert load_config(str(ROOT / "configs/flow_grpo/sd3.5-medium_pickscore.yaml")).algorithm.kl_beta == 0.01


def test_overriding_the_reward_drops_the_files_reward_args():
    path = str(ROOT / "configs/shapes/flow_grpo.yaml")
    assert load_config(path).reward.args == {"mode": "partial"}
    cfg = load_config(path, ["reward.name=jpeg_compressibility", "reward.args.incompressible=true"])
    assert cfg.reward.args == {"incompressible": True}
    assert load_config(path, ["reward.name=shapes_geneval"]).reward.args == {"mode": "partial"}  # same reward: kept
    assert load_config(path, ["reward.args.mode=strict"]).reward.args == {"mode": "strict"}


def test_overriding_the_eval_reward_drops_the_files_eval_reward_args(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  reward: shapes_geneval\n  reward_args: {mode: partial}\n")
    assert load_config(str(path)).eval.reward_args == {"mode": "partial"}
    cfg = load_config(str(path), ["eval.reward=jpeg_compressibility", "eval.reward_args.quality=80"])
    assert cfg.eval.reward == "jpeg_compressibility" and cfg.eval.reward_args == {"quality": 80}
    assert load_config(str(path), ["eval.reward=shapes_geneval"]).eval.reward_args == {"mode": "partial"}


def test_overrides_apply():
    cfg = load_config(str(ROOT / "configs/shapes/flow_grpo.yaml"), ["run.max_iterations=3", "algorithm.group_size=4"])
    assert cfg.run.max_iterations == 3 and cfg.algorithm.group_size == 4


@pytest.mark.parametrize("override,message", [
    (["run.max_iteration=3"], "unknown config key 'run.max_iteration'"),
    (["algorithm.grup_size=3"], "unknown config key 'algorithm.grup_size'"),
    (["run.max_iterations=abc"], "config key 'run.max_iterations' has an invalid value"),
    (["algorithm.group_size=1"], "algorithm.group_size=1 must be at least 2"),
    (["sampler.kind=ode"], "sampler.kind='ode' must be an SDE kind"),
    (["sampler.sde_window=[3,20]"], r"sampler.sde_window=\[3, 20\] must be \[start, end\)"),
    (["algorithm.timestep_fraction=0"], "algorithm.timestep_fraction=0.0 must be in"),
    (["optim.ema_decay=1.5"], "optim.ema_decay=1.5 must be in"),
    (["optim.ema_decay=0.9", "optim.ema_update_every=0"], "optim.ema_update_every=0 must be at least 1"),
    (["algorithm.name=ppo"], "algorithm.name='ppo' is unknown"),
    (["algorithm.name=branch_grpo", "algorithm.split_steps=[1,3,5]", "algorithm.shared_noise=true"],
     "algorithm.shared_noise is for per-sample algorithms"),
    (["max_iterations"], "override 'max_iterations' is not key=value"),
])
def test_bad_configs_fail_with_one_sentence(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(str(ROOT / "configs/shapes/flow_grpo.yaml"), override)


def test_shipped_reward_args_match_the_reward_signatures():
    import importlib
    import inspect

    from omegaconf import OmegaConf

    from reward_models import REWARDS

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        for section, name_key, args_key in (("reward", "name", "args"), ("eval", "reward", "reward_args")):
            sec = raw.get(section)
            if not isinstance(sec, dict):
                continue
            if name_key not in sec:
                continue
            module, cls = REWARDS[sec[name_key]].split(":")
            params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                continue
            assert set(sec.get(args_key) or {}) <= set(params), f"{path}: {section}"
