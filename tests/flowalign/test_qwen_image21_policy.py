"""The Qwen-Image 2.1 adapter on a tiny offline QwenImage21Pipeline (Qwen3-VL text encoder, 16x RGBA
VAE with non-trivial latent statistics, single-stream transformer on unpatched latents): it
reproduces the stock pipeline's sampling (prompts of different lengths, with and without true CFG,
the stock run using its text KV cache), trains with Flow-GRPO and BranchGRPO, and its LoRA loads
into the stock pipeline."""

import pytest
import torch

from flowalign.policies import QwenImage21Policy, load_policy
from flowalign.testing import save_tiny
from tests.flowalign.test_train import assert_one_iteration_trains
from tests.helpers import stock_pipeline

PROMPTS = ["a red circle", "two blue squares above a triangle"]  # different token counts: padding and mask


@pytest.fixture(scope="module")
def q21_dir(tmp_path_factory):
    return save_tiny("qwen_image21", tmp_path_factory.mktemp("qwen21") / "pipe")


def _stock(path):
    pipe = stock_pipeline(path)
    assert type(pipe).__name__ == "QwenImage21Pipeline"
    return pipe


def test_adapter_ode_rollout_reproduces_the_stock_pipeline(q21_dir):
    pol = load_policy(q21_dir)
    assert isinstance(pol, QwenImage21Policy) and pol.latent_shape() == (4, 4, 4)
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    B, C, h, w = noise.shape
    pipe = _stock(q21_dir)
    outs = []
    for guidance in (1.0, 3.0):
        ours = pol.generate(PROMPTS, noise=noise, num_steps=4, guidance=guidance)
        ref = pipe(prompt=PROMPTS, negative_prompt=[""] * 2 if guidance > 1 else None, true_cfg_scale=guidance,
                   height=64, width=64, num_inference_steps=4, latents=noise.reshape(B, C, h * w).transpose(1, 2),
                   output_type="pt").images
        assert ref.shape == (2, 4, 64, 64)  # RGBA: the policy gives the RGB channels
        diff = (ours - ref[:, :3]).abs().max().item()
        print(f"Qwen-Image 2.1 adapter vs QwenImage21Pipeline (guidance {guidance}): max abs difference {diff:.2e}")
        assert ours.shape == (2, 3, 64, 64) and diff < 1e-4
        outs.append(ours)
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)  # CFG acts


def test_a_checkpoint_with_its_own_sigmas_asks_for_its_step_count(q21_dir):
    pol = load_policy(q21_dir)
    pol.pipe.register_to_config(sample_sigmas=[1.0, 0.7, 0.3])
    with pytest.raises(ValueError, match="set sampler.num_steps=3"):
        pol.sigmas(4)
    assert pol.sigmas(3).shape == (4,)


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(q21_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(q21_dir, str(tmp_path / "run"), prompts_file, algo,
                                **{"model.height": 64, "model.width": 64, "sampler.guidance": 1.0})


def test_saved_lora_loads_into_the_stock_pipeline(q21_dir, tmp_path, prompts_file):
    from diffusers import QwenImage21Pipeline

    from tests.helpers import assert_lora_changes_stock_output

    assert_one_iteration_trains(q21_dir, str(tmp_path / "run"), prompts_file, "flow_grpo",
                                **{"model.height": 64, "model.width": 64, "sampler.guidance": 1.0, "optim.lr": 0.05})
    assert_lora_changes_stock_output(QwenImage21Pipeline, q21_dir, tmp_path / "run" / "lora", prompt="a red circle",
                                     height=64, width=64, num_inference_steps=2, output_type="pt")
