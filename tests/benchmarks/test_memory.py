"""The memory table's method: bytes autograd saves, counted on the meta device, equal the bytes saved
by the same forward on real tensors; every shipped real-checkpoint config gets a row."""

import pytest
import torch

from benchmarks.memory import FAMILIES, estimate, saved_bytes, shipped_configs


def test_meta_saved_bytes_equal_a_real_forward():
    from diffusers import SD3Transformer2DModel

    cfg = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
               joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
               pos_embed_max_size=8)
    torch.manual_seed(0)
    real = SD3Transformer2DModel(**cfg)
    with torch.device("meta"):
        meta = SD3Transformer2DModel(**cfg)

    def kwargs(device):
        g = torch.Generator().manual_seed(1)
        return dict(hidden_states=torch.randn(3, 4, 8, 8, generator=g).to(device),
                    encoder_hidden_states=torch.randn(3, 5, 16, generator=g).to(device),
                    pooled_projections=torch.randn(3, 8, generator=g).to(device),
                    timestep=torch.tensor([1.0, 2.0, 3.0]).to(device))

    on_meta, on_cpu = saved_bytes(meta, kwargs("meta")), saved_bytes(real, kwargs("cpu"))
    assert on_meta == on_cpu > 0
    real.enable_gradient_checkpointing()
    assert 0 < saved_bytes(real, kwargs("cpu")) < on_cpu  # checkpointing keeps less


def test_rows_of_a_lora_config_and_an_unmeasurable_forward():
    by_name = {p.name: p for p in shipped_configs()}
    sd3 = estimate(by_name["sd3.5-medium_pickscore.yaml"], 8)
    assert sd3["peak_per_gpu_fsdp2_8_gib"] < sd3["peak_per_gpu_data_parallel_gib"]
    assert 0 < sd3["activations_gib"] < sd3["activations_no_checkpointing_gib"]
    assert sd3["trainable_M"] < sd3["parameters_B"] * 1e3 / 10  # LoRA
    qwen21 = estimate(by_name["qwen-image-2.1_flow_grpo.yaml"], 8)  # a data-dependent op without a meta kernel
    assert qwen21["activations_gib"] is None and "not measurable on the meta device" in qwen21["activations_note"]


@pytest.mark.slow
def test_every_shipped_config_has_a_row():
    rows = [estimate(p, 8) for p in shipped_configs()]
    done = [r for r in rows if "skipped" not in r]
    assert {r["model"] for r in done} == set(FAMILIES)
