"""The Wan2.1 text-to-video adapter on a tiny offline WanPipeline: reproduces the stock pipeline,
trains over video latents with Flow-GRPO and BranchGRPO, and `flowalign train` writes a video sample."""

import json
import os

import pytest
import torch

from flowalign.config import load_config
from flowalign.policies import WanPolicy, load_policy
from flowalign.testing import save_tiny_wan
from tests.flowalign.test_train import overrides


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("wan") / "pipe")


def test_adapter_reproduces_the_stock_wan_pipeline(wan_dir):
    from diffusers import WanPipeline

    pol = load_policy(wan_dir)
    assert isinstance(pol, WanPolicy) and pol.latent_shape() == (16, 3, 2, 2)
    noise = pol.initial_noise(1, generator=torch.Generator().manual_seed(0))
    ours = pol.generate(["a red circle moving"], noise=noise, num_steps=3, guidance=3.0)
    pipe = WanPipeline.from_pretrained(wan_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red circle moving", height=16, width=16, num_frames=9, num_inference_steps=3, guidance_scale=3.0,
               latents=noise, max_sequence_length=16, output_type="pt").frames
    ref = torch.as_tensor(ref).float()
    diff = (ours - ref).abs().max().item()
    print(f"Wan adapter vs WanPipeline: max abs difference {diff:.2e}")
    assert ours.shape == (1, 9, 3, 16, 16) and ref.shape == ours.shape and diff < 1e-4


def _cfg(wan_dir, tmp_path, prompts_file, **extra):
    base = {"model.height": 16, "model.width": 16, "model.max_sequence_length": 16, "sampler.guidance": 3.0,
            "reward.name": "video_segmental", "reward.args": "{image_reward: jpeg_compressibility, segments: 3}",
            "run.max_iterations": 1, "run.sample_every": 1, "lora.target_modules": "[to_q,to_k,to_v,to_out.0]"}
    base.update(extra)
    return load_config(None, overrides(wan_dir, str(tmp_path / "run"), prompts_file, **base))


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_training_iteration_over_video_latents(wan_dir, tmp_path, prompts_file, algo):
    from flowalign.trainer import Trainer

    extra = {} if algo == "flow_grpo" else {"algorithm.name": "branch_grpo", "algorithm.split_steps": "[1,2]",
                                             "algorithm.group_size": 4}
    cfg = _cfg(wan_dir, tmp_path, prompts_file, **extra)
    t = Trainer(cfg)
    before = [p.detach().clone() for p in t.params]
    t.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.params))
    m = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert abs(m["first_ratio"] - 1) < 1e-5
    assert os.path.isfile(os.path.join(cfg.run.output_dir, "samples", "iter_000001.gif"))


def test_flowalign_train_cli_writes_a_video_sample(wan_dir, tmp_path, prompts_file):
    from PIL import Image

    from flowalign.cli import main

    cfg = _cfg(wan_dir, tmp_path, prompts_file)
    args = [f"{k}={v}" for k, v in [
        ("model.path", wan_dir), ("model.height", 16), ("model.width", 16), ("model.max_sequence_length", 16),
        ("sampler.num_steps", 2), ("sampler.guidance", 3.0), ("reward.name", "video_segmental"),
        ("reward.args", "{image_reward: jpeg_compressibility}"), ("algorithm.group_size", 2),
        ("algorithm.prompts_per_iteration", 1), ("data.train_prompts", cfg.data.train_prompts),
        ("run.output_dir", str(tmp_path / "cli")), ("run.max_iterations", 1), ("run.sample_every", 1),
        ("run.progress", False), ("run.device", "cpu"), ("data.sample_prompts", "[a red circle]")]]
    assert main(["train", "-", *args]) == 0
    gif = Image.open(tmp_path / "cli" / "samples" / "iter_000001.gif")
    assert gif.n_frames == 9
