"""Every coefficient of the learned and inference-time objectives against a hand computation: the
adversarial reward's hinge losses and score mix, the weighted reward, and ReNO's loss (its reward
offsets, its regulariser's weight and direction). Asked for by the mutation audit (issue 26)."""

import math

import pytest
import torch
from torch import nn

from reward_models.adversarial import (
    adversarial_scores,
    normalized_hinge_loss,
    pick_patches,
    reference_hinge_loss,
    unit,
)
from reward_models.weighted import weighted_sum


def linear_head(w):
    head = nn.Linear(len(w), 1, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([w], dtype=torch.float64))
    return lambda f: head(f).squeeze(-1)


def relu(x):
    return max(x, 0.0)


def test_reference_hinge_loss_by_hand_with_its_default_patch_weight():
    h = linear_head([1.0, -2.0])
    real = (torch.tensor([[0.3, 0.1], [2.0, 0.0]], dtype=torch.float64),
            torch.tensor([[[0.5, 0.5], [1.5, 0.0]], [[0.0, -1.0], [0.2, 0.2]]], dtype=torch.float64))
    fake = (torch.tensor([[0.1, 0.6], [-0.5, 0.0]], dtype=torch.float64),
            torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[-3.0, 0.0], [0.4, 0.1]]], dtype=torch.float64))
    hv = lambda f: f[0] - 2 * f[1]  # noqa: E731
    img = 0.5 * (sum(relu(1 - hv(f)) for f in real[0].tolist()) / 2 + sum(relu(1 + hv(f)) for f in fake[0].tolist()) / 2)
    rp = [f for b in real[1].tolist() for f in b]
    fp = [f for b in fake[1].tolist() for f in b]
    patch = 0.5 * (sum(relu(1 - hv(f)) for f in rp) / 4 + sum(relu(1 + hv(f)) for f in fp) / 4)
    assert reference_hinge_loss(h, real, fake).item() == pytest.approx(img + 0.3 * patch, rel=1e-12)
    assert reference_hinge_loss(h, real, fake, 0.8).item() == pytest.approx(img + 0.8 * patch, rel=1e-12)
    assert 0 < img and 0 < patch  # both parts are live, so both weights are checked


def test_normalized_hinge_loss_by_hand_with_its_default_global_weight():
    h = linear_head([3.0, -6.0])  # logits up to +-6.7: some hinges are active, some are not
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 4, 2, generator=g, dtype=torch.float64))
    fake = (torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 4, 2, generator=g, dtype=torch.float64))

    def hu(f):
        n = math.hypot(*f) + 1e-6
        return 3 * f[0] / n - 6 * f[1] / n

    def part(r, f):
        return sum(relu(1 - a) for a in r) / len(r) + sum(relu(1 + b) for b in f) / len(f)

    glob = part([hu(f) for f in real[0].tolist()], [hu(f) for f in fake[0].tolist()])
    loc = part([sum(hu(p) for p in b) / 4 for b in real[1].tolist()], [sum(hu(p) for p in b) / 4 for b in fake[1].tolist()])
    assert normalized_hinge_loss(h, real, fake).item() == pytest.approx(0.7 * glob + 0.3 * loc, rel=1e-12)
    assert normalized_hinge_loss(h, real, fake, 0.2).item() == pytest.approx(0.2 * glob + 0.8 * loc, rel=1e-12)


def test_scores_pick_each_images_own_patches_of_unit_features():
    h = linear_head([1.0, 3.0])
    cls = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    patches = torch.arange(12, dtype=torch.float64).view(2, 3, 2) + 1
    idx = torch.tensor([[0, 2], [1, 1]])
    assert torch.equal(pick_patches(patches, idx), torch.stack([patches[0, [0, 2]], patches[1, [1, 1]]]))
    assert torch.allclose(unit(cls), cls / (cls.norm(dim=-1, keepdim=True) + 1e-6), rtol=0, atol=0)
    g, loc = adversarial_scores(h, cls, patches, idx)
    hu = lambda f: (f[0] + 3 * f[1]) / (math.hypot(*f) + 1e-6)  # noqa: E731
    assert g.tolist() == pytest.approx([hu([3, 4]), hu([0, 2])], rel=1e-12)
    want = [(hu(patches[0, 0].tolist()) + hu(patches[0, 2].tolist())) / 2, hu(patches[1, 1].tolist())]
    assert loc.tolist() == pytest.approx(want, rel=1e-12)


class Brightness:
    """A real, differentiable reward: the mean pixel value (times a factor), per image."""

    differentiable = True

    def __init__(self, factor=1.0):
        self.factor = factor

    def __call__(self, images, prompts, **context):
        assert len(prompts) == images.shape[0]
        return self.factor * images.flatten(1).mean(1)


def test_weighted_sum_and_renos_loss_by_hand():
    from flowalign.noise_opt import RENO_OFFSETS, weighted_reward

    images = torch.stack([torch.full((3, 2, 2), 0.25), torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 1.0)])
    rewards = {"hps": Brightness(1.0), "pickscore": Brightness(10.0)}
    weights = {"hps": 5.0, "pickscore": 0.05}
    total, parts = weighted_sum(rewards, weights, images, ["a", "b", "c"], batch_sizes={"hps": 2})
    assert total.tolist() == pytest.approx([5 * b + 0.05 * 10 * b for b in (0.25, 0.5, 1.0)])
    assert parts["pickscore"].tolist() == pytest.approx([2.5, 5.0, 10.0])
    r, loss, _ = weighted_reward(rewards, weights, images, ["a", "b", "c"], None)
    offset = 5.0 * RENO_OFFSETS["hps"] + 0.05 * RENO_OFFSETS["pickscore"]
    assert (RENO_OFFSETS["hps"], RENO_OFFSETS["pickscore"]) == (1.0, 30.0)  # ReNO's main.py
    assert loss.tolist() == pytest.approx([offset - x for x in r.tolist()])


def test_weighted_sum_scores_a_part_without_a_batch_size_in_one_call():
    """No batch size for a part: the whole batch in one call (5 images of 3 channels: not 3 at a time)."""
    sizes = []

    def part(images, prompts, **context):
        sizes.append((images.shape[0], len(prompts), len(context["metadata"])))
        return images.flatten(1).mean(1)

    images = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    total, _ = weighted_sum({"p": part}, {"p": 2.0}, images, list("abcde"), metadata=[{}] * 5)
    assert sizes == [(5, 5, 5)]
    assert total.tolist() == pytest.approx((2 * images.flatten(1).mean(1)).tolist())


def test_reno_minimises_the_reward_loss_plus_the_weighted_regulariser(sd3_policy):
    """The trace's loss is (offset - R) + reg_weight * chi(eps); its gradient step lowers that loss
    (a plain SGD step with no clipping moves eps by -lr * grad of exactly that sum)."""
    from flowalign.noise_opt import RenoSettings, chi_regulariser, optimize_noise

    sd3_policy.transformer.requires_grad_(False)
    sd3_policy.pipe.vae.requires_grad_(False)
    seen = []
    orig = sd3_policy.velocity

    def spy(x, *a, **k):
        seen.append(x.detach().clone())
        return orig(x, *a, **k)

    st = RenoSettings(iters=2, steps=1, lr=1e-3, momentum=0.0, grad_clip=1e9, reg_weight=0.25,
                      weights={"shapes_soft": 2.0})
    from flowalign.noise_opt import build_rewards

    sd3_policy.velocity = spy
    try:
        res = optimize_noise(sd3_policy, "a red circle", build_rewards(st.weights), st, progress=False,
                             metadata={"prompt": "a red circle", "tag": "single_object",
                                       "include": [{"class": "circle", "count": 1}]})
    finally:
        del sd3_policy.velocity
    eps0, eps1 = seen[0], seen[-1]
    row = res["trace"][0]
    assert row["regulariser"] == pytest.approx(float(chi_regulariser(eps0)[0]), rel=1e-5)
    assert row["loss"] == pytest.approx(2.0 * 1.0 - 2.0 * row["reward_shapes_soft"] + 0.25 * row["regulariser"],
                                        rel=1e-5)
    assert row["reward"] == pytest.approx(2.0 * row["reward_shapes_soft"], rel=1e-6)
    # the step is -lr times the gradient of (offset - R) + reg_weight * chi, recomputed here piece by piece
    from flowalign.noise_opt import differentiable_sample, weighted_reward

    eps = eps0.clone().requires_grad_(True)
    images = differentiable_sample(sd3_policy, eps, sd3_policy.encode(["a red circle"]),
                                   sd3_policy.sigmas(st.steps, st.height, st.width), guidance=st.guidance,
                                   gradient_checkpointing=False)
    _, loss_r, _ = weighted_reward(build_rewards(st.weights), st.weights, images, ["a red circle"],
                                   [{"prompt": "a red circle", "tag": "single_object",
                                     "include": [{"class": "circle", "count": 1}]}])
    loss_r.sum().backward()
    d = eps0.numel()
    reg_grad = eps0 - (d - 1) * eps0 / float(eps0.flatten().norm() ** 2)  # d chi / d eps
    want = eps0 - st.lr * (eps.grad + 0.25 * reg_grad)
    assert torch.allclose(eps1, want, rtol=0, atol=1e-6 * float(eps0.abs().max()))
    assert not torch.allclose(eps1, eps0 - st.lr * (eps.grad - 0.25 * reg_grad), rtol=0, atol=1e-6)


def test_load_image_reads_rgb_in_unit_range_and_resizes_bilinear_to_height_width(tmp_path):
    import numpy as np
    from PIL import Image

    from reward_models.adversarial import load_image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)  # a grayscale file, 5 high and 7 wide
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    img = load_image(str(tmp_path / "g.png"))
    assert img.shape == (3, 5, 7) and torch.equal(img[1], torch.from_numpy(arr).float() / 255)
    assert torch.equal(load_image(str(tmp_path / "g.png"), (5, 7)), img)  # its own size: unchanged
    small = load_image(str(tmp_path / "g.png"), (3, 4))
    want = np.array(Image.fromarray(arr, mode="L").convert("RGB").resize((4, 3), Image.BILINEAR))
    assert small.shape == (3, 3, 4) and torch.equal(small, torch.from_numpy(want).permute(2, 0, 1).float() / 255)


def test_reference_map_accepts_one_file_name_or_a_list(tmp_path):
    import json

    from reward_models.adversarial import load_reference_map

    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "map.json").write_text(json.dumps({"a cat": "a.png", "two cats": ["b.png", "c.png"]}))
    assert load_reference_map(str(tmp_path / "map.json"), str(tmp_path)) == {"a cat": ["a.png"],
                                                                              "two cats": ["b.png", "c.png"]}


def test_weighted_reward_scores_each_part_in_chunks_of_its_batch_size():
    """reward.args.batch_sizes bounds each part's batch (its memory): 5 images in chunks of 2."""
    from reward_models.weighted import WeightedReward

    w = WeightedReward({"jpeg_compressibility": 1.0}, batch_sizes={"jpeg_compressibility": 2})
    part, sizes = w.parts["jpeg_compressibility"], []

    def recording(images, prompts, **context):
        sizes.append(images.shape[0])
        return part(images, prompts, **context)

    w.parts["jpeg_compressibility"] = recording
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = w(images, ["p"] * 5)
    assert sizes == [2, 2, 1] and torch.allclose(out, part(images, ["p"] * 5).float(), atol=1e-6)
