import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from benchmarks.shapes import pretrain


def test_pretrain_writes_a_loadable_pipeline_with_its_architecture(tmp_path):
    out = tmp_path / "model"
    pretrain.main(["--out", str(out), "--minutes", "0.04", "--batch", "4", "--vae-channels", "16,32",
                   "--patch-size", "2", "--clip-max-length", "20", "--t5-max-length", "10"])
    pipe = StableDiffusion3Pipeline.from_pretrained(out, torch_dtype=torch.float32)
    assert list(pipe.vae.config.block_out_channels) == [16, 32] and pipe.transformer.config.patch_size == 2
    assert pipe.transformer.config.sample_size == 16 and pipe.tokenizer.model_max_length == 20
    info = json.loads((out / "flowalign.json").read_text())
    assert info["max_sequence_length"] == 10
    assert info["pretrain"]["model_config"]["vae_channels"] == [16, 32]
    assert info["pretrain"]["transformer_steps"] >= 1 and info["pretrain"]["vae_steps"] >= 1
    image = pipe("a photo of a red circle", num_inference_steps=2, height=32, width=32, output_type="pt",
                 max_sequence_length=10).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_resuming_with_other_architecture_flags_fails_clearly(tmp_path):
    out = tmp_path / "model"
    pretrain.main(["--out", str(out), "--minutes", "0.02", "--batch", "4", "--vae-channels", "16,32", "--patch-size", "2"])
    with pytest.raises(SystemExit, match="rerun with the same architecture flags"):
        pretrain.main(["--out", str(out), "--minutes", "0.04", "--batch", "4", "--vae-channels", "16,32,32"])
