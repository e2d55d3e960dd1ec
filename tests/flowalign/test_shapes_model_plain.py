"""The committed shapes model is a plain diffusers pipeline: `StableDiffusion3Pipeline.from_pretrained`
without dtype arguments generates with it on the CPU (every component is saved in float32)."""

import numpy as np
import torch


def test_shapes_model_generates_with_a_plain_diffusers_call():
    from diffusers import StableDiffusion3Pipeline

    from flowalign.shapes import MODEL_DIR

    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL_DIR)
    assert {m.dtype for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2,
                              pipe.text_encoder_3)} == {torch.float32}
    out = pipe("a photo of a red circle", num_inference_steps=2, guidance_scale=4.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.ndim == 4 and out.shape[0] == 1 and out.shape[-1] == 3 and np.isfinite(out).all()
