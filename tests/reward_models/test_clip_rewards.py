"""PickScore and CLIPScore with a tiny random CLIPModel saved and reloaded offline."""

import pytest
import torch

from reward_models import build_reward


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from flowalign.testing import clip_tokenizer

    tok = clip_tokenizer(77, num_merges=2000)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 30, "patch_size": 6},
        projection_dim=16)
    path = tmp_path_factory.mktemp("clip") / "tiny"
    CLIPModel(cfg).save_pretrained(path)
    ip = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", ["pickscore", "clip"])
def test_clip_rewards_shape_determinism_batch_invariance_gradients(tiny_clip_dir, name):
    extra = {"clip": False} if name == "clip" else {}  # the random tiny model's cosines may be < 0 (clamped)
    r = build_reward(name, model=tiny_clip_dir, processor=tiny_clip_dir, device="cpu", batch_size=3, **extra)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 40, generator=g)
    prompts = ["a red circle", "a blue square", "two triangles", "a green circle", "a square"]
    a = r(images, prompts)
    assert a.shape == (5,) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, r(images, prompts))
    one = torch.cat([r(images[i:i + 1], prompts[i:i + 1]) for i in range(5)])
    assert torch.allclose(a, one, atol=1e-5)
    x = images.clone().requires_grad_(True)
    r(x, prompts).sum().backward()
    assert r.differentiable and x.grad is not None and x.grad.abs().sum() > 0


def test_pickscore_is_the_scaled_cosine(tiny_clip_dir):
    from reward_models.clip_common import features

    r = build_reward("pickscore", model=tiny_clip_dir, processor=tiny_clip_dir, device="cpu")
    images = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a blue square"]
    m, tok = r.model, r.processor.tokenizer
    mean, std = torch.tensor(r.processor.image_processor.image_mean), torch.tensor(r.processor.image_processor.image_std)
    pix = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # already 30x30: no resize, no crop
    ie = features(m.get_image_features(pixel_values=pix))
    te = features(m.get_text_features(**tok(prompts, padding=True, return_tensors="pt")))
    cos = torch.nn.functional.cosine_similarity(ie, te, dim=-1)
    assert torch.allclose(r(images, prompts), m.logit_scale.exp() * cos, atol=1e-5)


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("pickscore", model=str(tmp_path / "nope"), processor=str(tmp_path / "nope"))
