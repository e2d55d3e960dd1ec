"""Wan2.2 A14B's two experts on a tiny offline WanPipeline (transformer_2, boundary_ratio 0.875):
sampling equals the stock pipeline's (each step's expert and guidance chosen by its timestep),
a batch mixing noise levels routes each row to its expert, each algorithm trains LoRA on both or
either expert, and the saved LoRA files load into the stock pipeline."""

import os

import pytest
import torch

from flowalign.policies import WanPolicy, load_policy
from flowalign.testing import save_tiny
from tests.flowalign.test_train import assert_one_iteration_trains
from tests.helpers import stock_pipeline

VIDEO = {"model.height": 16, "model.width": 16, "model.max_sequence_length": 16, "sampler.guidance": 3.0,
         "sampler.num_steps": 4, "algorithm.timestep_fraction": 1.0, "reward.name": "video_segmental",
         "reward.args": "{image_reward: jpeg_compressibility, segments: 3}",
         "lora.target_modules": "[to_q,to_k,to_v,to_out.0]"}


@pytest.fixture(scope="module")
def wan22_dir(tmp_path_factory):
    return save_tiny("wan22", tmp_path_factory.mktemp("wan22") / "pipe")


def _stock(path):
    pipe = stock_pipeline(path)
    assert type(pipe).__name__ == "WanPipeline"
    return pipe


def _stock_video(pipe, noise, guidance, guidance_2):
    out = pipe("a red circle moving", height=16, width=16, num_frames=9, num_inference_steps=4, guidance_scale=guidance,
               guidance_scale_2=guidance_2, latents=noise, max_sequence_length=16, output_type="pt").frames
    return torch.as_tensor(out).float()


@pytest.mark.parametrize("guidance,guidance_2", [(3.0, 2.0), (3.0, None), (1.0, None)])
def test_sampling_reproduces_the_stock_two_expert_pipeline(wan22_dir, guidance, guidance_2):
    pol = load_policy(wan22_dir)
    assert isinstance(pol, WanPolicy) and pol.experts is not None and pol.experts.boundary == 875.0
    pol.guidance_2 = guidance_2
    noise = pol.initial_noise(1, generator=torch.Generator().manual_seed(0))
    ours = pol.generate(["a red circle moving"], noise=noise, num_steps=4, guidance=guidance)
    pipe = _stock(wan22_dir)
    ref = _stock_video(pipe, noise, guidance, guidance_2)
    diff = (ours - ref).abs().max().item()
    print(f"Wan2.2 adapter vs WanPipeline (guidance {guidance}/{guidance_2}): max abs difference {diff:.2e}")
    assert ours.shape == (1, 9, 3, 16, 16) == ref.shape and diff < 1e-4
    # both experts act: with the low-noise expert swapped for the high-noise one the video changes
    pipe.transformer_2 = pipe.transformer
    assert (_stock_video(pipe, noise, guidance, guidance_2) - ref).abs().max().item() > 1e-3


def test_a_batch_mixing_noise_levels_routes_each_row_to_its_expert(wan22_dir):
    pol = load_policy(wan22_dir)
    pol.guidance_2 = 2.0
    cond = pol.encode(["a red circle", "a blue square", "a red circle"])
    x = pol.initial_noise(3, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.95, 0.5, 0.875])  # high, low, and exactly at the boundary (high, as t >= boundary)
    both = pol.velocity(x, sigma, cond, guidance=3.0)
    for i, g in enumerate([3.0, 2.0, 3.0]):
        alone = pol.velocity(x[i:i + 1], sigma[i:i + 1], cond.select(torch.tensor([i])), guidance=g)
        assert torch.allclose(both[i:i + 1], alone, atol=1e-5), i
    # the rows really run different experts
    with torch.no_grad():
        t = torch.tensor([500.0])
        e = cond.embeds[1:2]
        hi = pol.experts.high(hidden_states=x[1:2], timestep=t, encoder_hidden_states=e, return_dict=False)[0]
        lo = pol.experts.low(hidden_states=x[1:2], timestep=t, encoder_hidden_states=e, return_dict=False)[0]
    assert not torch.allclose(hi, lo, atol=1e-3)


@pytest.mark.parametrize("algo,experts", [("flow_grpo", "both"), ("branch_grpo", "both"), ("flow_grpo", "low"),
                                          ("flow_grpo", "high")])
def test_one_iteration_trains_the_chosen_experts(wan22_dir, tmp_path, prompts_file, algo, experts):
    from safetensors.torch import load_file

    extra = {**VIDEO, "model.experts": experts, "sampler.guidance_2": 2.0}
    if algo == "branch_grpo":
        extra["algorithm.split_steps"] = "[1,2]"
    out = tmp_path / "run"
    assert_one_iteration_trains(wan22_dir, str(out), prompts_file, algo, **extra)
    files = sorted(os.listdir(out / "lora"))
    want = {"both": ["pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors"],
            "high": ["pytorch_lora_weights.safetensors"], "low": ["pytorch_lora_weights_transformer_2.safetensors"]}
    assert files == want[experts]
    for f in files:
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in load_file(out / "lora" / f).items())


def test_saved_lora_of_both_experts_loads_into_the_stock_pipeline(wan22_dir, tmp_path, prompts_file):
    from flowalign.trainer import Trainer  # noqa: F401 - the run below

    out = tmp_path / "run"
    assert_one_iteration_trains(wan22_dir, str(out), prompts_file, "flow_grpo",
                                **{**VIDEO, "optim.lr": 0.05, "sampler.guidance_2": 2.0})
    pipe = _stock(wan22_dir)
    noise = load_policy(wan22_dir).initial_noise(1, generator=torch.Generator().manual_seed(0))
    before = _stock_video(pipe, noise, 3.0, 2.0)
    pipe.load_lora_weights(str(out / "lora"), weight_name="pytorch_lora_weights.safetensors")
    pipe.load_lora_weights(str(out / "lora"), weight_name="pytorch_lora_weights_transformer_2.safetensors",
                           load_into_transformer_2=True)
    assert pipe.transformer.peft_config and pipe.transformer_2.peft_config
    after = _stock_video(pipe, noise, 3.0, 2.0)
    assert not torch.equal(before, after)
    # flowalign's own loader reads the same folder into both experts and generates the same video
    pol = load_policy(wan22_dir)
    pol.guidance_2 = 2.0
    pol.load_lora(str(out / "lora"))
    ours = pol.generate(["a red circle moving"], noise=noise, num_steps=4, guidance=3.0)
    assert (ours - after).abs().max().item() < 1e-4


def test_expert_choice_on_a_one_transformer_model_is_refused(tmp_path, prompts_file):
    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    path = save_tiny("wan", tmp_path / "wan21")
    for key, value, match in (("model.experts", "low", "needs a two-expert Wan2.2"),
                              ("sampler.guidance_2", 2.0, "has one transformer")):
        cfg = load_config(None, overrides(path, str(tmp_path / key), prompts_file, **{**VIDEO, key: value}))
        with pytest.raises(ValueError, match=match):
            Trainer(cfg)
    # an image family too
    sd3 = save_tiny("sd3", tmp_path / "sd3")
    cfg = load_config(None, overrides(sd3, str(tmp_path / "sd3run"), prompts_file, **{"model.experts": "high"}))
    with pytest.raises(ValueError, match="needs a two-expert Wan2.2"):
        Trainer(cfg)


def test_two_process_run_trains_both_experts(wan22_dir, tmp_path):
    """Each training forward runs at one timestep, so one expert sits out of every DDP step; the run
    finishes on 2 processes and both experts' LoRA weights move."""
    from safetensors.torch import load_file

    from tests.flowalign.test_distributed import _torchrun
    from tests.flowalign.test_train import overrides

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "run"
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(wan22_dir, str(out), str(prompts), **{
        **VIDEO, "run.max_iterations": 1, "run.sample_every": 0, "sampler.guidance_2": 2.0}))
    for f in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors"):
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in load_file(out / "lora" / f).items())
