"""The Z-Image adapter on a tiny offline ZImagePipeline: it reproduces the stock pipeline's sampling
(with and without CFG), trains with Flow-GRPO and BranchGRPO, and its LoRA loads into the stock
pipeline."""

import pytest
import torch

from flowalign.policies import ZImagePolicy, load_policy
from flowalign.testing import save_tiny_z_image
from tests.flowalign.test_train import assert_one_iteration_trains


@pytest.fixture(scope="module")
def zi_dir(tmp_path_factory):
    return save_tiny_z_image(tmp_path_factory.mktemp("zimage") / "pipe")


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_adapter_ode_rollout_reproduces_the_stock_pipeline(zi_dir, guidance):
    from diffusers import ZImagePipeline

    pol = load_policy(zi_dir)
    assert isinstance(pol, ZImagePolicy) and pol.latent_shape() == (4, 16, 16)
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares above a triangle"]  # different token counts
    ours = pol.generate(prompts, noise=noise, num_steps=4, guidance=guidance)
    pipe = ZImagePipeline.from_pretrained(zi_dir)
    pipe.set_progress_bar_config(disable=True)
    # flowalign's scale g is ZImagePipeline's guidance_scale g - 1 (cond + s (cond - uncond))
    ref = pipe(prompts, height=32, width=32, num_inference_steps=4, guidance_scale=guidance - 1.0, latents=noise,
               max_sequence_length=16, output_type="pt").images
    diff = (ours - ref).abs().max().item()
    print(f"Z-Image adapter vs ZImagePipeline (guidance {guidance}): max abs difference {diff:.2e}")
    assert ours.shape == ref.shape == (2, 3, 32, 32) and diff < 1e-4


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(zi_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(zi_dir, str(tmp_path / "run"), prompts_file, algo,
                                **{"model.max_sequence_length": 16})


def test_saved_lora_loads_into_the_stock_pipeline(zi_dir, tmp_path, prompts_file):
    from diffusers import ZImagePipeline

    from tests.helpers import assert_lora_changes_stock_output

    assert_one_iteration_trains(zi_dir, str(tmp_path / "run"), prompts_file, "flow_grpo",
                                **{"model.max_sequence_length": 16, "optim.lr": 0.05})
    assert_lora_changes_stock_output(ZImagePipeline, zi_dir, tmp_path / "run" / "lora", prompt="a red circle", height=32,
                                     width=32, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=16,
                                     output_type="pt")
