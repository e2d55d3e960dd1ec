"""The Qwen-Image adapter on a tiny offline QwenImagePipeline (Qwen2.5-VL text encoder with an
offline byte-level tokenizer): reproduces the stock pipeline with true CFG, trains with Flow-GRPO
and BranchGRPO."""


import pytest
import torch

from flowalign.policies import QwenImagePolicy, load_policy
from flowalign.policies.flux import pack
from flowalign.testing import save_tiny_qwen_image
from tests.flowalign.test_train import assert_one_iteration_trains


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen_image(tmp_path_factory.mktemp("qwen") / "pipe")


def test_adapter_reproduces_the_stock_pipeline_with_true_cfg(qwen_dir):
    from diffusers import QwenImagePipeline

    pol = load_policy(qwen_dir)
    assert isinstance(pol, QwenImagePolicy) and pol.latent_shape() == (4, 8, 8)
    prompts = ["a red circle", "two blue squares left of a circle"]  # different token counts: padded + masked
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    ours = pol.generate(prompts, noise=noise, num_steps=3, guidance=4.0)
    pipe = QwenImagePipeline.from_pretrained(qwen_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompts, negative_prompt=[" ", " "], true_cfg_scale=4.0, height=32, width=32, num_inference_steps=3,
               latents=pack(noise), max_sequence_length=64, output_type="pt").images
    diff = (ours - ref).abs().max().item()
    print(f"Qwen-Image adapter vs QwenImagePipeline: max abs difference {diff:.2e}")
    assert ours.shape == ref.shape == (2, 3, 32, 32) and diff < 1e-5


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(qwen_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(qwen_dir, str(tmp_path / "run"), prompts_file, algo, **{
        "sampler.guidance": 4.0, "model.max_sequence_length": 64,
        "lora.target_modules": "[to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out]"})
