import math

import pytest
import torch

from reward_models import build_reward
from reward_models.video import attenuation_weights, segment_frames


def test_segment_frames_middle_and_random():
    # 10 frames, 4 segments: [0,2) [2,5) [5,7) [7,10) -> middles 0, 3, 5, 8
    assert segment_frames(10, 4).tolist() == [0, 3, 5, 8]
    assert segment_frames(8, 8).tolist() == list(range(8))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = segment_frames(10, 4, sampling="random", generator=g).tolist()
        assert 0 <= idx[0] < 2 and 2 <= idx[1] < 5 and 5 <= idx[2] < 7 and 7 <= idx[3] < 10
    with pytest.raises(ValueError, match="segments=5"):
        segment_frames(4, 5)


def test_attenuation_weights():
    w = attenuation_weights(torch.tensor([0, 3, 5, 8]), 10, 0.5)
    expected = [math.exp(-0.5 * abs(i - 5)) for i in (0, 3, 5, 8)]
    assert torch.allclose(w, torch.tensor(expected))
    assert float(w[2]) == 1.0  # the middle frame has full weight


def test_segmental_reward_combines_frame_scores():
    # the image reward: JPEG size (negated); build a video whose frames differ in content
    r = build_reward("video_segmental", image_reward="jpeg_compressibility", segments=2, lam=1.0)
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, 4, 3, 16, 16, generator=g)
    videos[:, 0] = 0.5  # frame 0 (the middle of segment [0, 2)) is flat
    out = r(videos, ["a", "b"])
    inner = build_reward("jpeg_compressibility")
    f1, f2 = inner(videos[:, 0], ["a", "b"]), inner(videos[:, 2], ["a", "b"])
    w1, w2 = math.exp(-2.0), 1.0  # frames 0 and 2 of 4 frames; F // 2 = 2
    assert torch.allclose(out, (w1 * f1 + w2 * f2) / (w1 + w2), atol=1e-6)
    mean = build_reward("video_segmental", image_reward="jpeg_compressibility", frame_mean=True)
    assert torch.allclose(mean(videos, ["a", "b"]), torch.stack([inner(videos[:, f], ["a", "b"]) for f in range(4)]).mean(0))
    with pytest.raises(ValueError, match="expected \\[B, F, 3, H, W\\]"):
        r(videos[:, 0], ["a", "b"])


def test_segmental_reward_passes_gradients_and_metadata():
    meta = {"prompt": "a red circle", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    r = build_reward("video_segmental", image_reward="shapes_soft", segments=3)
    assert r.differentiable
    v = torch.rand(1, 6, 3, 8, 8, requires_grad=True)
    r(v, [meta["prompt"]], metadata=[meta]).sum().backward()
    used = v.grad.abs().flatten(2).sum(-1)[0]
    assert (used > 0).tolist() == [True, False, True, False, True, False]  # middles of [0,2) [2,4) [4,6)
