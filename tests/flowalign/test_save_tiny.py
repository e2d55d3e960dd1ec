"""flowalign.testing.save_tiny: every family's tiny pipeline loads with stock diffusers and with the
adapter of its family."""

import pytest

from flowalign.testing import TINY_FAMILIES, save_tiny

ADAPTER = {"sd3": "SD3Policy", "flux": "FluxPolicy", "flux_schnell": "FluxPolicy", "qwen_image": "QwenImagePolicy", "qwen_image21": "QwenImage21Policy",
           "wan": "WanPolicy", "wan22": "WanPolicy", "z_image": "ZImagePolicy",
           "flux2_klein": "Flux2KleinPolicy", "flux2": "Flux2Policy"}


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_save_tiny_loads_in_stock_diffusers_and_flowalign(family, tmp_path):
    from diffusers import DiffusionPipeline

    from flowalign.policies import load_policy

    path = save_tiny(family, tmp_path / family)
    pipe = DiffusionPipeline.from_pretrained(path)
    assert type(pipe).__name__ in ("StableDiffusion3Pipeline", "FluxPipeline", "QwenImagePipeline", "WanPipeline",
                                   "ZImagePipeline", "Flux2KleinPipeline", "Flux2Pipeline", "QwenImage21Pipeline")
    assert type(load_policy(path)).__name__ == ADAPTER[family]


def test_save_tiny_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="family 'sdxl' has no tiny pipeline"):
        save_tiny("sdxl", tmp_path)
