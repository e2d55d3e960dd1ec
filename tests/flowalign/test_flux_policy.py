"""The FLUX.1 adapter on tiny offline FluxPipelines (dev-like with guidance embedding, schnell-like
without): it reproduces the stock pipeline, trains with Flow-GRPO and BranchGRPO, and runs ReNO."""


import pytest
import torch

from flowalign.policies import FluxPolicy, load_policy
from flowalign.policies.flux import pack, unpack
from flowalign.testing import save_tiny_flux
from tests.flowalign.test_train import assert_one_iteration_trains


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def flux_dir(request, tmp_path_factory):
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "pipe", guidance_embeds=request.param)


def test_pack_unpack_round_trip():
    x = torch.randn(2, 3, 8, 6)
    assert pack(x).shape == (2, 12, 12)
    assert torch.equal(unpack(pack(x), 8, 6), x)


def test_adapter_ode_rollout_reproduces_the_stock_pipeline(flux_dir):
    from diffusers import FluxPipeline

    pol = load_policy(flux_dir)
    assert isinstance(pol, FluxPolicy) and pol.latent_shape() == (1, 16, 16)
    noise = pol.initial_noise(2, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares"]
    ours = pol.generate(prompts, noise=noise, num_steps=4, guidance=3.5)
    pipe = FluxPipeline.from_pretrained(flux_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompts, height=32, width=32, num_inference_steps=4, guidance_scale=3.5, latents=pack(noise),
               max_sequence_length=16, output_type="pt").images
    diff = (ours - ref).abs().max().item()
    print(f"FLUX adapter vs FluxPipeline: max abs difference {diff:.2e}")
    assert ours.shape == ref.shape == (2, 3, 32, 32) and diff < 1e-5


@pytest.mark.parametrize("algo", ["flow_grpo", "branch_grpo"])
def test_one_training_iteration_changes_the_lora(flux_dir, tmp_path, prompts_file, algo):
    assert_one_iteration_trains(flux_dir, str(tmp_path / "run"), prompts_file, algo,
                                **{"sampler.guidance": 3.5, "model.max_sequence_length": 16})


def test_reno_step_runs_on_flux(flux_dir):
    from flowalign.noise_opt import RenoSettings, build_rewards, optimize_noise

    pol = load_policy(flux_dir)
    pol.transformer.requires_grad_(False)
    pol.pipe.vae.requires_grad_(False)
    meta = {"prompt": "a red circle", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    st = RenoSettings(iters=3, steps=1, guidance=3.5, weights={"shapes_soft": 1.0})  # 3 evaluations, 2 updates
    res = optimize_noise(pol, meta["prompt"], build_rewards(st.weights), st, metadata=meta, progress=False)
    assert len(res["trace"]) == 3 and res["trace"][0]["grad_norm"] > 0
    assert res["best_image"].shape == (1, 3, 32, 32)
