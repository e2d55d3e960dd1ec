"""The FLUX.2 [klein] adapter on a tiny offline Flux2KleinPipeline (non-trivial VAE batch-norm
statistics): it reproduces the stock pipeline's sampling (with and without CFG, and a distilled
checkpoint that ignores CFG), trains with Flow-GRPO and BranchGRPO, and its LoRA loads into the
stock pipeline."""

import pytest
import torch

from flowalign.policies import Flux2KleinPolicy, load_policy
from flowalign.testing import save_tiny_flux2_klein
from tests.flowalign.test_train import assert_one_iteration_trains


@pytest.fixture(scope="module")
def f2_dir(tmp_path_factory):
    return save_tiny_flux2_klein(tmp_path_factory.mktemp("flux2") / "pipe")


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_adapter_ode_rollout_reproduces_the_stock_pipeline(f2_dir, guidance):
    from diffusers import Flux2KleinPipeline

    pol = load_policy(f2_dir)
    assert isinstance(pol, Flux2KleinPolicy) and pol.latent_shape() == (16, 8, 8)
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares above a triangle"]  # different token counts
    ours = pol.generate(prompts, noise=noise, num_steps=4, guidance=guidance)
    pipe = Flux2KleinPipeline.from_pretrained(f2_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=prompts, height=32, width=32, num_inference_steps=4, guidance_scale=guidance, latents=noise,
               max_sequence_length=16, output_type="pt").images
    diff = (ours - ref).abs().max().item()
    print(f"FLUX.2 klein adapter vs Flux2KleinPipeline (guidance {guidance}): max abs difference {diff:.2e}")
    assert ours.shape == ref.shape == (2, 3, 32, 32) and diff < 1e-4
    if guidance > 1:  # CFG acts: the comparison is not between two unguided runs
        assert not torch.allclose(ours, pol.generate(prompts, noise=noise, num_steps=4, guidance=1.0), atol=1e-4)


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(f2_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(f2_dir, str(tmp_path / "run"), prompts_file, algo,
                                **{"model.max_sequence_length": 16})


def test_saved_lora_loads_into_the_stock_pipeline(f2_dir, tmp_path, prompts_file):
    from diffusers import Flux2KleinPipeline

    from tests.helpers import assert_lora_changes_stock_output

    assert_one_iteration_trains(f2_dir, str(tmp_path / "run"), prompts_file, "flow_grpo",
                                **{"model.max_sequence_length": 16, "optim.lr": 0.05})
    assert_lora_changes_stock_output(Flux2KleinPipeline, f2_dir, tmp_path / "run" / "lora", prompt="a red circle", height=32,
                                     width=32, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16,
                                     output_type="pt")


def test_a_distilled_checkpoint_ignores_cfg_like_the_pipeline(tmp_path):
    from diffusers import Flux2KleinPipeline

    from flowalign.testing import save_tiny_flux2_klein

    path = save_tiny_flux2_klein(tmp_path / "distilled", distilled=True)
    pol = load_policy(path)
    noise = pol.initial_noise(1, generator=torch.Generator().manual_seed(1))
    ours = pol.generate(["a red circle"], noise=noise, num_steps=3, guidance=4.0)
    assert torch.equal(ours, pol.generate(["a red circle"], noise=noise, num_steps=3, guidance=1.0))
    pipe = Flux2KleinPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=["a red circle"], height=32, width=32, num_inference_steps=3, guidance_scale=4.0, latents=noise,
               max_sequence_length=16, output_type="pt").images
    assert (ours - ref).abs().max().item() < 1e-4
