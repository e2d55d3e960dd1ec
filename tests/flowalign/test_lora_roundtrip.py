"""A saved LoRA is the trained LoRA: loaded back (flowalign's `--lora`, the stock pipeline's
`load_lora_weights`) it gives the trained policy's velocity, with its lora_alpha (alpha != rank
here, so a loader that assumed alpha = rank would act at half strength and fail)."""

import pytest
import torch

from flowalign.config import load_config
from flowalign.policies import load_policy
from flowalign.testing import save_tiny
from flowalign.trainer import Trainer
from tests.flowalign.test_train import overrides


def _trained(model_dir, out, prompts_file, **extra):
    cfg = load_config(None, overrides(model_dir, out, prompts_file, **{
        "run.max_iterations": 1, "run.sample_every": 0, "lora.rank": 4, "lora.alpha": 16, "optim.lr": 0.05, **extra}))
    t = Trainer(cfg)
    t.train()
    return t


def _velocity(policy, prompts, guidance):
    cond = policy.encode(prompts)
    x = policy.initial_noise(len(prompts), generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.9, 0.3, len(prompts))
    with torch.no_grad():
        return policy.velocity(x, sigma, cond, guidance=guidance)


@pytest.mark.parametrize("family", ["sd3", "wan22"])
def test_a_saved_lora_loads_back_at_full_strength(family, tiny_sd3_dir, tmp_path, prompts_file):
    from diffusers import DiffusionPipeline

    if family == "sd3":
        model, extra, prompts, g = tiny_sd3_dir, {}, ["a red circle", "a blue square"], 2.0
    else:
        model = save_tiny("wan22", tmp_path / "wan22")
        extra = {"model.height": 16, "model.width": 16, "model.max_sequence_length": 16, "sampler.num_steps": 4,
                 "algorithm.timestep_fraction": 1.0, "reward.name": "video_segmental",
                 "reward.args": "{image_reward: jpeg_compressibility, segments: 3}",
                 "lora.target_modules": "[to_q,to_k,to_v,to_out.0]"}
        prompts, g = ["a red circle", "a blue square"], 3.0  # sigmas 0.9 and 0.3: one row per expert
    t = _trained(model, str(tmp_path / "run"), prompts_file, **extra)
    trained = _velocity(t.policy, prompts, g)
    base = load_policy(model, max_sequence_length=t.policy.max_sequence_length)
    untrained = _velocity(base, prompts, g)
    base.load_lora(str(tmp_path / "run" / "lora"))
    loaded = _velocity(base, prompts, g)
    moved = (trained - untrained).abs().max().item()
    diff = (loaded - trained).abs().max().item()
    assert moved > 1e-3 and diff < 1e-5 * max(1.0, moved), (moved, diff)
    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(tmp_path / "run" / "lora"))
    assert pipe.transformer.peft_config["default_0"].lora_alpha == 16
