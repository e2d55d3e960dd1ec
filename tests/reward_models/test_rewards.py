import numpy as np
import pytest
import torch

from benchmarks.shapes import prompts, render
from reward_models import REWARDS, Reward, build_reward


def _img(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float().unsqueeze(0) / 255


def test_registry_builds_every_reward_and_rejects_unknown():
    for name in REWARDS:
        assert isinstance(build_reward(name), Reward)
    with pytest.raises(ValueError, match="reward 'clip' is unknown"):
        build_reward("clip")


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
