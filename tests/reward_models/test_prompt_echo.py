"""PromptEcho on a tiny LLaVA saved and reloaded offline: the reward equals a hand computation of the
masked cross-entropy, per sample and unpadded; shape, dtype, determinism, batch-size invariance,
reductions and errors."""

import pytest
import torch
import torch.nn.functional as F

from reward_models import build_reward
from reward_models.base import to_uint8_hwc


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from flowalign.testing import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("vlm") / "llava")


def hand_reward(vlm_dir, image, prompt, reduction="mean"):
    """One sample, no padding: teacher-force `prompt</s>` after the chat prefix and add up
    -log softmax of each answer token by hand."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).eval()
    proc = AutoProcessor.from_pretrained(vlm_dir)
    prefix = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                    {"type": "text", "text": "Describe the image."}]}],
                                      add_generation_prompt=True, tokenize=False)
    arr = to_uint8_hwc(image[None])
    n_prefix = proc(images=list(arr), text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    inp = proc(images=list(arr), text=[f"{prefix} {prompt}</s>"], return_tensors="pt")
    with torch.no_grad():
        logp = F.log_softmax(model(**inp).logits[0].double(), -1)
    ids = inp["input_ids"][0]
    terms = [-logp[t - 1, ids[t]] for t in range(n_prefix, len(ids))]
    assert len(terms) == len(prompt.split()) + 1  # the answer words and </s>
    total = sum(terms)
    return -(total / len(terms)) if reduction == "mean" else -total


def test_value_equals_hand_computed_masked_cross_entropy(vlm_dir):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    prompts = ["a photo of a red circle", "two squares"]  # different lengths: the batch is padded
    for reduction in ("mean", "sum"):
        r = build_reward("prompt_echo", model=vlm_dir, reduction=reduction, device="cpu")
        out = r(images, prompts)
        want = torch.tensor([float(hand_reward(vlm_dir, images[i], prompts[i], reduction)) for i in range(2)])
        assert out.shape == (2,) and out.dtype == torch.float32
        assert torch.allclose(out, want, atol=1e-5), (out, want)


def test_deterministic_and_batch_size_invariant(vlm_dir):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a photo of two blue squares", "a triangle", "three circles", "a green square"]
    a = build_reward("prompt_echo", model=vlm_dir, batch_size=5, device="cpu")(images, prompts)
    b = build_reward("prompt_echo", model=vlm_dir, batch_size=2, device="cpu")(images, prompts)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(a, build_reward("prompt_echo", model=vlm_dir, batch_size=5, device="cpu")(images, prompts))
    assert bool((a < 0).all())  # minus a cross-entropy


def test_frozen_in_eval_mode_and_errors(vlm_dir, tmp_path):
    r = build_reward("prompt_echo", model=vlm_dir, device="cpu")
    assert not r.model.training and not any(p.requires_grad for p in r.model.parameters())
    assert r.differentiable is False
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("prompt_echo", model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="reduction"):
        build_reward("prompt_echo", model=vlm_dir, reduction="max")
    with pytest.raises(ValueError, match="video_segmental"):
        r(torch.rand(1, 2, 3, 32, 32), ["x"])
