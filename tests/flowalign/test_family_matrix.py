"""Every family's tiny pipeline under the algorithms whose policy-side code differs from the
per-family files' Flow-GRPO and BranchGRPO runs: DenseGRPO (ODE completions from every SDE step)
and Adv-GRPO (a trained discriminator reward; image families, as the DINO reward scores images).
One iteration changes the LoRA weights with first ratio 1 and writes a diffusers LoRA file."""

import pytest
import torch

from flowalign.testing import TINY_FAMILIES, save_tiny
from tests.flowalign.test_train import assert_one_iteration_trains

VIDEO = {"model.height": 16, "model.width": 16, "reward.name": "video_segmental",
         "reward.args": "{image_reward: jpeg_compressibility, segments: 3}",
         "lora.target_modules": "[to_q,to_k,to_v,to_out.0]"}
RUN = {  # each tiny family's size, text length and guidance
    "sd3": {}, "flux": {"model.max_sequence_length": 16, "sampler.guidance": 3.5},
    "flux_schnell": {"model.max_sequence_length": 16, "sampler.guidance": 1.0},
    "qwen_image": {"model.max_sequence_length": 64, "sampler.guidance": 4.0},
    "qwen_image21": {"model.height": 64, "model.width": 64, "sampler.guidance": 1.0},
    "z_image": {"model.max_sequence_length": 16}, "flux2_klein": {"model.max_sequence_length": 16},
    "flux2": {"model.max_sequence_length": 16, "sampler.guidance": 4.0},
    "wan": {**VIDEO, "model.max_sequence_length": 16, "sampler.guidance": 3.0},
    "wan22": {**VIDEO, "model.max_sequence_length": 16, "sampler.guidance": 3.0, "sampler.num_steps": 4,
              "algorithm.timestep_fraction": 1.0},
}
IMAGE_FAMILIES = sorted(f for f in TINY_FAMILIES if not f.startswith("wan"))


def test_the_matrix_covers_every_tiny_family():
    assert set(RUN) == set(TINY_FAMILIES)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save_tiny(f, root / f) for f in TINY_FAMILIES}


@pytest.fixture(scope="module")
def adv_args(tmp_path_factory):
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("adv")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=37)).save_pretrained(root / "dino")
    (root / "ref").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 30 * i, 30)).save(root / "ref" / f"{i}.png")
    return (f"{{backbone: {root / 'dino'}, reference_dir: {root / 'ref'}, schedule: k_steps, k: 1, device: cpu, "
            "num_patches: 4}")


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_dense_grpo_trains_every_family(family, family_dirs, tmp_path, prompts_file):
    extra = {"algorithm.name": "dense_grpo", "sampler.sde_window": "[0,2]", **RUN[family]}
    assert_one_iteration_trains(family_dirs[family], str(tmp_path / "run"), prompts_file, "dense_grpo", **extra)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_adv_grpo_trains_every_image_family(family, family_dirs, adv_args, tmp_path, prompts_file):
    extra = {"algorithm.name": "adv_grpo", "reward.name": "adversarial_dino", "reward.args": adv_args, **RUN[family]}
    m = assert_one_iteration_trains(family_dirs[family], str(tmp_path / "run"), prompts_file, "adv_grpo", **extra)
    assert "disc_loss" in m
