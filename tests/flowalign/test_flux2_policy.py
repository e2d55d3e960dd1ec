"""The FLUX.2 [dev] adapter on a tiny offline Flux2Pipeline (a 30-layer Mistral3 text encoder, a
guidance embedding): it reproduces the stock pipeline's sampling at two guidance values, trains
with Flow-GRPO and BranchGRPO, and its LoRA loads into the stock pipeline."""

import pytest
import torch

from flowalign.policies import Flux2Policy, load_policy
from flowalign.testing import save_tiny
from tests.flowalign.test_train import assert_one_iteration_trains


@pytest.fixture(scope="module")
def f2_dir(tmp_path_factory):
    return save_tiny("flux2", tmp_path_factory.mktemp("flux2dev") / "pipe")


def test_adapter_ode_rollout_reproduces_the_stock_pipeline(f2_dir):
    from diffusers import Flux2Pipeline

    pol = load_policy(f2_dir)
    assert isinstance(pol, Flux2Policy) and pol.latent_shape() == (16, 8, 8)
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares above a triangle"]
    pipe = Flux2Pipeline.from_pretrained(f2_dir)
    pipe.set_progress_bar_config(disable=True)
    outs = []
    for guidance in (1.0, 4.0):
        ours = pol.generate(prompts, noise=noise, num_steps=4, guidance=guidance)
        ref = pipe(prompt=prompts, height=32, width=32, num_inference_steps=4, guidance_scale=guidance,
                   latents=noise, max_sequence_length=16, output_type="pt").images
        diff = (ours - ref).abs().max().item()
        print(f"FLUX.2 [dev] adapter vs Flux2Pipeline (guidance {guidance}): max abs difference {diff:.2e}")
        assert ours.shape == ref.shape == (2, 3, 32, 32) and diff < 1e-4
        outs.append(ours)
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)  # the embedded guidance acts
    assert pol.nfe == 2 * 4 * 2  # one pass per image and step: no CFG branch


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(f2_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(f2_dir, str(tmp_path / "run"), prompts_file, algo,
                                **{"model.max_sequence_length": 16, "sampler.guidance": 4.0})


def test_saved_lora_loads_into_the_stock_pipeline(f2_dir, tmp_path, prompts_file):
    from diffusers import Flux2Pipeline

    from tests.helpers import assert_lora_changes_stock_output

    assert_one_iteration_trains(f2_dir, str(tmp_path / "run"), prompts_file, "flow_grpo",
                                **{"model.max_sequence_length": 16, "optim.lr": 0.05, "sampler.guidance": 4.0})
    assert_lora_changes_stock_output(Flux2Pipeline, f2_dir, tmp_path / "run" / "lora", prompt="a red circle",
                                     height=32, width=32, num_inference_steps=2, guidance_scale=4.0,
                                     max_sequence_length=16, output_type="pt")
