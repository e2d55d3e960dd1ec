import numpy as np
import pytest
import torch

from reward_models import REWARDS, Reward, build_reward
from reward_models.shapes import prompts, render


def _img(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float().unsqueeze(0) / 255


def test_registry_builds_every_reward_and_rejects_unknown():
    no_checkpoint = {"shapes_geneval", "shapes_soft", "jpeg_compressibility", "video_segmental"}
    for name in REWARDS:
        if name in no_checkpoint:
            assert isinstance(build_reward(name), Reward)
        elif name == "adversarial_pickscore":  # its references are checked before any checkpoint loads
            with pytest.raises(ValueError, match="needs reward.args.reference_dir and reward.args.reference_map"):
                build_reward(name)
        else:  # the others need checkpoints or arguments: without them, a clear error (offline here)
            with pytest.raises((FileNotFoundError, TypeError)):
                build_reward(name)
    with pytest.raises(ValueError, match="reward 'nope' is unknown"):
        build_reward("nope")
    with pytest.raises(ValueError, match="takes no argument 'mode'"):
        build_reward("jpeg_compressibility", mode="partial")


def test_shapes_geneval_strict_and_partial():
    meta = prompts.color_attr("red", "circle", "blue", "square")
    good, _ = render.render_prompt(meta, seed=1)
    wrong_color = prompts.color_attr("red", "circle", "green", "square")
    bad, _ = render.render_prompt(wrong_color, seed=1)  # green square instead of blue
    images = torch.cat([_img(good), _img(bad)])
    strict = build_reward("shapes_geneval", mode="strict")(images, [meta["prompt"]] * 2, metadata=[meta, meta])
    partial = build_reward("shapes_geneval", mode="partial")(images, [meta["prompt"]] * 2, metadata=[meta, meta])
    assert strict.tolist() == [1.0, 0.0]
    # 4 clauses (2 counts, 2 colours); the bad image fails only the blue colour -> 3/4
    assert partial.tolist() == [1.0, 0.75]
    with pytest.raises(ValueError, match="needs GenEval metadata"):
        build_reward("shapes_geneval")(images, ["x", "y"])


def test_jpeg_compressibility_prefers_flat_images():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = build_reward("jpeg_compressibility")(torch.cat([flat, noise]), ["a", "b"])
    assert r[0] > r[1] and r.dtype == torch.float32
    inc = build_reward("jpeg_compressibility", incompressible=True)(torch.cat([flat, noise]), ["a", "b"])
    assert torch.equal(inc, -r)


def test_weighted_reward_sums_parts_with_their_batch_sizes():
    meta = prompts.color_attr("red", "circle", "blue", "square")
    img, _ = render.render_prompt(meta, seed=3)
    images = torch.cat([_img(img)] * 3)
    metas = [meta] * 3
    w = build_reward("weighted", weights={"shapes_soft": 2.0, "shapes_geneval": 0.5},
                     args={"shapes_geneval": {"mode": "strict"}}, batch_sizes={"shapes_soft": 2})
    soft = build_reward("shapes_soft")(images, [meta["prompt"]] * 3, metadata=metas)
    strict = build_reward("shapes_geneval", mode="strict")(images, [meta["prompt"]] * 3, metadata=metas)
    assert torch.allclose(w(images, [meta["prompt"]] * 3, metadata=metas), 2.0 * soft + 0.5 * strict, atol=1e-6)
    assert not w.differentiable and set(w.last_parts) == {"shapes_soft", "shapes_geneval"}
    with pytest.raises(ValueError, match="weights is empty"):
        build_reward("weighted", weights={})


def test_shapes_soft_prefers_matching_renders_and_has_gradients():
    metas = prompts.prompt_set("heldout", 2, seed=1)
    good, bad = [], []
    r = build_reward("shapes_soft")
    for i, m in enumerate(metas):
        img = _img(render.render_prompt(m, seed=i)[0])
        good.append(float(r(img, [m["prompt"]], metadata=[m])))
        other = metas[(i + 5) % len(metas)]
        bad.append(float(r(img, [other["prompt"]], metadata=[other])))
    assert sum(good) / len(good) > sum(bad) / len(bad) + 0.2
    x = _img(render.render_prompt(metas[0], seed=0)[0]).requires_grad_(True)
    r(x, [metas[0]["prompt"]], metadata=[metas[0]]).sum().backward()
    assert r.differentiable and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs GenEval metadata"):
        r(x, ["a red circle"])
