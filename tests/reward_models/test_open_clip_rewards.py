"""HPSv2.1, the LAION aesthetic predictor and CLIPScore through open_clip, on a tiny random open_clip
model saved in open_clip's hub layout and reloaded: shape, dtype, determinism, batch-size
invariance, gradients to the image, hand computations, missing checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from reward_models import build_reward


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory):
    from flowalign.testing import save_tiny_open_clip

    return save_tiny_open_clip(tmp_path_factory.mktemp("oc") / "tiny")


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    from reward_models.aesthetic import AestheticMLP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("aes") / "head.pth"
    torch.save(AestheticMLP([32, 64, 16, 8, 4, 1]).state_dict(), path)  # the released layout, smaller
    return str(path)


def rewards(oc_dir, head_file):
    return {"hps": dict(model=oc_dir), "clip": dict(model=oc_dir, backend="open_clip", clip=False),
            "aesthetic": dict(head=head_file, clip=oc_dir)}


@pytest.mark.parametrize("name", ["hps", "clip", "aesthetic"])
def test_shape_determinism_batch_invariance_gradients(oc_dir, head_file, name):
    r = build_reward(name, device="cpu", batch_size=2, **rewards(oc_dir, head_file)[name])
    images = torch.rand(5, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square", "two triangles", "a green circle", "a square"]
    a = r(images, prompts)
    assert a.shape == (5,) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, r(images, prompts))
    assert torch.allclose(a, torch.cat([r(images[i:i + 1], prompts[i:i + 1]) for i in range(5)]), atol=1e-5)
    x = images.clone().requires_grad_(True)
    r(x, prompts).sum().backward()
    assert r.differentiable and x.grad is not None and x.grad.abs().sum() > 0


def _by_hand(r_model, images, prompts):
    import open_clip

    cfg = r_model.visual.preprocess_cfg
    pix = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    ie = F.normalize(r_model.encode_image(pix), dim=-1)  # 32x32 input: no resize or crop
    te = F.normalize(r_model.encode_text(open_clip.tokenize(prompts)), dim=-1)
    return ie, te


def test_hps_is_the_cosine_and_aesthetic_the_head_on_the_normalised_embedding(oc_dir, head_file):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a blue square"]
    hps = build_reward("hps", model=oc_dir, device="cpu")
    ie, te = _by_hand(hps.model, images, prompts)
    assert torch.allclose(hps(images, prompts), (ie * te).sum(-1), atol=1e-5)
    clip = build_reward("clip", model=oc_dir, backend="open_clip", device="cpu")
    ie, te = _by_hand(clip.sim.model, images, prompts)  # the QuickGELU build (OpenAI's CLIP)
    assert torch.allclose(clip(images, prompts), (2.5 * (ie * te).sum(-1)).clamp(min=0), atol=1e-5)
    aes = build_reward("aesthetic", head=head_file, clip=oc_dir, device="cpu")
    sd = torch.load(head_file, weights_only=True)
    h, _ = _by_hand(aes.model, images, prompts)
    for k in ("0", "2", "4", "6", "7"):  # Linear layers only: dropout is the identity in eval
        h = h @ sd[f"layers.{k}.weight"].T + sd[f"layers.{k}.bias"]
    assert torch.allclose(aes(images, prompts), h.squeeze(-1), atol=1e-5)


def test_missing_checkpoints(tmp_path, oc_dir):
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt"):
        build_reward("hps", model="ViT-H-14", pretrained=str(tmp_path / "HPS_v2.1_compressed.pt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("hps", model=str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="aesthetic head"):
        build_reward("aesthetic", head=str(tmp_path / "head.pth"), clip=oc_dir)
    with pytest.raises(ValueError, match="backend"):
        build_reward("clip", model=oc_dir, backend="jax")


def test_rewards_on_openai_clip_build_quick_gelu(oc_dir, head_file):
    """OpenAI's CLIP weights were trained with QuickGELU, which open_clip >= 2.29 no longer builds for
    'ViT-L-14' + 'openai': GenEval's colour classifier (evaluate_images.py: ViT-L-14, pretrained='openai'),
    the LAION aesthetic predictor and CLIPScore must build it; HPSv2.1 (a laion2b ViT-H-14) must not."""
    from open_clip.transformer import QuickGELU

    from reward_models.geneval import ColorClassifier
    from reward_models.open_clip_common import load_open_clip

    def act(model):
        return type(model.visual.transformer.resblocks[0].mlp.gelu)

    assert act(load_open_clip(oc_dir)[0]) is torch.nn.GELU  # the saved architecture's own choice
    assert act(load_open_clip(oc_dir, quick_gelu=True)[0]) is QuickGELU
    assert act(build_reward("clip", model=oc_dir, backend="open_clip").sim.model) is QuickGELU
    assert act(build_reward("aesthetic", head=head_file, clip=oc_dir).model) is QuickGELU
    assert act(ColorClassifier(oc_dir).model) is QuickGELU
    assert act(build_reward("hps", model=oc_dir).model) is torch.nn.GELU


def test_clipscore_reference_prefix(oc_dir):
    """Hessel et al. score 'A photo depicts ' + caption: `prefix` gives that setting."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = build_reward("clip", model=oc_dir, backend="open_clip", clip=False)
    ref = build_reward("clip", model=oc_dir, backend="open_clip", clip=False, prefix="A photo depicts ")
    assert torch.allclose(ref(images, ["a red circle", "a cat"]), plain(images, ["A photo depicts a red circle",
                                                                                  "A photo depicts a cat"]))
    assert not torch.allclose(ref(images, ["a red circle", "a cat"]), plain(images, ["a red circle", "a cat"]))


def ref_resize_max_size(img, max_size, fill=0):
    """tgxs002/HPSv2 hpsv2/src/open_clip/transform.py, ResizeMaxSize.forward on a tensor image
    (img_score.py builds preprocess_val with light_augmentation=True -> resize_longest_max)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    height, width = img.shape[1:]
    scale = max_size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = TF.resize(img, new_size, InterpolationMode.BICUBIC)
        pad_h = max_size - new_size[0]
        pad_w = max_size - new_size[1]
        img = TF.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=fill)
    return img


@pytest.mark.parametrize("hw", [(48, 80), (80, 48), (33, 70), (64, 64)])
def test_hps_pads_non_square_images_like_hpsv2(oc_dir, hw):
    from reward_models.clip_common import CLIPPreprocess

    hps = build_reward("hps", model=oc_dir, device="cpu")
    assert hps.preprocess.resize == "pad"
    pre = hps.preprocess
    images = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, std = pre.mean.view(3, 1, 1), pre.std.view(3, 1, 1)
    want = torch.stack([(ref_resize_max_size(im, pre.size) - mean) / std for im in images])
    got = pre(images)
    assert got.shape == want.shape == (2, 3, pre.size, pre.size)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    crop = CLIPPreprocess(pre.size, pre.mean.flatten().tolist(), pre.std.flatten().tolist(), "crop")
    if hw[0] != hw[1]:
        assert not torch.allclose(crop(images), want)  # the shortest-side crop sees a different view
    with pytest.raises(ValueError, match="resize 'stretch'"):
        CLIPPreprocess(32, [0.5] * 3, [0.5] * 3, "stretch")
