"""The package boundaries and interfaces docs/architecture.md describes, checked on the code:
samplers <- reward_models <- flowalign <- benchmarks (imports point one way), one algorithm
registry whose schemas validate themselves, the FlowPolicy protocol as the whole contract of every
adapter, and no state passed between algorithm calls behind the caller's back."""

import ast
import dataclasses
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
# what each package may import from this repository
ALLOWED = {"samplers": {"samplers"}, "reward_models": {"samplers", "reward_models"},
           "flowalign": {"samplers", "reward_models", "flowalign"}}
OURS = {"samplers", "reward_models", "flowalign", "benchmarks", "tests"}


def imported_packages(path: pathlib.Path) -> set[str]:
    """Top-level names of every absolute import in a file, at any depth (function-level too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    bad = {str(p.relative_to(ROOT)): sorted(imported_packages(p) - ALLOWED[package])
           for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_library_defaults_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from flowalign.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [])
    for path in (cfg.model.path, cfg.data.train_prompts, cfg.eval.prompts):
        assert pathlib.Path(path).is_absolute() and pathlib.Path(path).exists()


def test_one_registry_whose_schemas_validate_themselves():
    from flowalign.algorithms import ALGORITHMS
    from flowalign.config import load_config

    for name, reg in ALGORITHMS.items():
        assert dataclasses.is_dataclass(reg.schema) and callable(reg.schema.validate)
        assert reg.schema().name == name
    # the schema's own check runs through load_config: BranchGRPO's leaves, Adv-GRPO's reward
    with pytest.raises(ValueError, match="group_size=4 must equal branch_factor"):
        load_config(None, ["algorithm.name=branch_grpo", "algorithm.group_size=4"])
    with pytest.raises(ValueError, match="needs an adversarial reward"):
        load_config(None, ["algorithm.name=adv_grpo"])
    # ... which may also be a part of a weighted reward
    weighted = "reward.args={weights: {adversarial_dino: 1.0, jpeg_compressibility: 0.5}}"
    assert load_config(None, ["algorithm.name=adv_grpo", "reward.name=weighted", weighted]).algorithm.name == "adv_grpo"
    with pytest.raises(ValueError, match="algorithm.name='ppo' is unknown"):
        load_config(None, ["algorithm.name=ppo"])


def test_shipped_configs_load():
    from flowalign.algorithms import ALGORITHMS
    from flowalign.config import load_config

    paths = [p for p in sorted((ROOT / "configs").rglob("*.yaml"))
             if p.parent.name not in ("reno", "accelerate")]  # ReNO's configs; accelerate's launch configs
    # every algorithm's schema is reached (an empty or partial configs/ folder must not pass)
    assert {load_config(str(p)).algorithm.name for p in paths} == set(ALGORITHMS)


def test_every_adapter_is_a_diffusers_policy_and_no_family_subclasses_another():
    import inspect

    from flowalign.policies import ADAPTERS
    from flowalign.policies.diffusers_base import DiffusersPolicy

    # the base leaves exactly the family's parts to each adapter, which implements all of them
    assert inspect.isabstract(DiffusersPolicy)
    assert DiffusersPolicy.__abstractmethods__ == {"_encode_uncached", "encode", "velocity", "latent_shape", "family_sigmas"}
    for cls in ADAPTERS.values():
        assert cls.__mro__[1] is DiffusersPolicy and not inspect.isabstract(cls), cls


def test_a_loaded_policy_fulfils_the_whole_protocol(sd3_policy):
    from flowalign.policies import FlowPolicy

    members = [n for n in vars(FlowPolicy) if not n.startswith("_")] + list(FlowPolicy.__annotations__)
    assert {"transformer", "add_lora", "initial_noise", "generate", "nfe", "forward_module", "latent_shape"} <= \
        set(members)
    assert isinstance(sd3_policy, FlowPolicy)
    missing = [n for n in members if not hasattr(sd3_policy, n)]
    assert missing == []


def test_tree_advantages_leave_the_rollout_untouched(tiny_sd3_dir, tmp_path, prompts_file):
    """The edges in the loss come back in the Advantages; the rollout is not written to, and the
    iteration (which slides depth pruning) is an argument."""
    from flowalign.algorithms import LocalComm, build_algorithm
    from flowalign.config import load_config
    from flowalign.policies import load_policy
    from reward_models import build_reward

    cfg = load_config(None, [f"model.path={tiny_sd3_dir}", "sampler.num_steps=4", "algorithm.name=branch_grpo",
                             "reward.name=jpeg_compressibility",
                             "algorithm.split_steps=[0,1]", "algorithm.group_size=4", "algorithm.depth_pruning=[2]",
                             "algorithm.depth_pruning_slide=true", "algorithm.depth_pruning_stop=1",
                             f"data.train_prompts={prompts_file}", f"run.output_dir={tmp_path}"])
    algo = build_algorithm(cfg.algorithm, cfg.sampler)
    policy = load_policy(tiny_sd3_dir, max_sequence_length=8)
    ro = algo.rollout(policy, [{"prompt": "a red circle"}], torch.tensor([0]), torch.Generator().manual_seed(0),
                      32, 32)
    before = dict(vars(ro))
    r = algo.score(policy, ro, build_reward("jpeg_compressibility"))
    a0 = algo.advantages(ro, r, LocalComm, iteration=0)
    a1 = algo.advantages(ro, r, LocalComm, iteration=1)
    assert dict(vars(ro)).keys() == before.keys() and all(vars(ro)[k] is v for k, v in before.items())
    t = ro.tree
    assert not a0.train_mask[t.step == 2].any() and a0.train_mask[t.step == 1].any()  # edges into step 2 dropped
    assert not a1.train_mask[t.step == 1].any()  # one iteration later the window slid to step 1
    assert not hasattr(algo, "iteration") and not hasattr(algo, "seed")
