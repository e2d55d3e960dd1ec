import math

import pytest
import torch

from reward_models import build_reward
from reward_models.video import attenuation_weights, segment_frames


def test_segment_frames_middle_and_random():
    # 10 frames, 4 segments: span 10 // 4 = 2, segments [0,2) [2,4) [4,6) [6,8); frames 8, 9 never scored
    assert segment_frames(10, 4).tolist() == [[0, 2, 4, 6]]
    assert segment_frames(9, 3, batch=2).tolist() == [[1, 4, 7]] * 2
    assert segment_frames(8, 8).tolist() == [list(range(8))]
    g = torch.Generator().manual_seed(0)
    idx = segment_frames(10, 4, sampling="random", batch=500, generator=g)
    lo = torch.arange(4) * 2
    assert ((idx >= lo) & (idx < lo + 2)).all()
    assert len({tuple(r) for r in idx.tolist()}) > 1  # drawn per video, not once per batch
    with pytest.raises(ValueError, match="segments=5"):
        segment_frames(4, 5)


def test_attenuation_weights():
    w = attenuation_weights(torch.tensor([0, 3, 5, 8]), 10, 0.5)
    expected = [math.exp(-0.5 * abs(i - 5)) for i in (0, 3, 5, 8)]
    assert torch.allclose(w, torch.tensor(expected))
    assert float(w[2]) == 1.0  # the middle frame has full weight


def reference_segmental(frame_scores, num_frames, segments, lam, generator):
    """Transcribed from ali-vilab/VGen utils/reward/reward.py (DiffRewardModel, selection_method 'TSN',
    exponential_TSN): local = randint(span, (B, S)); global = local + arange(S) * span;
    coef = exp(-|global - F // 2| * lambda_TAR); reward = mean over segments of coef * score."""
    B = frame_scores.shape[0]
    span = num_frames // segments
    local_index = torch.randint(span, (B, segments), generator=generator)
    global_index = local_index + torch.tensor(range(segments))[None] * span
    coef = torch.exp(-torch.abs(global_index - num_frames // 2) * lam).double()
    diag = frame_scores[torch.arange(B)[:, None], global_index]
    return torch.mean(coef * diag, dim=1)


def test_defaults_match_instructvideo_reference_float64():
    r = build_reward("video_segmental", image_reward="jpeg_compressibility", segments=4, seed=3)
    assert (r.lam, r.sampling, r.normalize) == (1.0, "random", False)  # the released InstructVideo config
    B, F = 6, 17
    scores = torch.randn(B, F, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    videos = torch.arange(B * F, dtype=torch.float64).reshape(B, F, 1, 1, 1).expand(B, F, 3, 2, 2)
    # a float64 image reward that reads the frame's identity from its pixels
    r.inner = lambda frames, prompts, **ctx: scores.flatten()[frames[:, 0, 0, 0].long()]
    for _ in range(5):
        state = r.generator.get_state()
        ref = reference_segmental(scores, F, 4, 1.0, torch.Generator().set_state(state))
        out = r(videos, ["p"] * B)
        assert out.dtype == torch.float64
        assert torch.allclose(out, ref, rtol=0, atol=1e-10)


def test_segmental_reward_combines_frame_scores():
    # the image reward: JPEG size (negated); build a video whose frames differ in content
    r = build_reward("video_segmental", image_reward="jpeg_compressibility", segments=2, lam=1.0,
                     sampling="middle", normalize=True)
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, 4, 3, 16, 16, generator=g)
    videos[:, 0] = 0.5  # frame 0 (the middle of segment [0, 2)) is flat
    out = r(videos, ["a", "b"])
    inner = build_reward("jpeg_compressibility")
    f1, f2 = inner(videos[:, 0], ["a", "b"]), inner(videos[:, 2], ["a", "b"])
    w1, w2 = math.exp(-2.0), 1.0  # frames 0 and 2 of 4 frames; F // 2 = 2
    assert torch.allclose(out, (w1 * f1 + w2 * f2) / (w1 + w2), atol=1e-6)
    plain = build_reward("video_segmental", image_reward="jpeg_compressibility", segments=2, sampling="middle")
    assert torch.allclose(plain(videos, ["a", "b"]), (w1 * f1 + w2 * f2) / 2, atol=1e-6)  # the reference's mean
    mean = build_reward("video_segmental", image_reward="jpeg_compressibility", frame_mean=True)
    assert torch.allclose(mean(videos, ["a", "b"]), torch.stack([inner(videos[:, f], ["a", "b"]) for f in range(4)]).mean(0))
    with pytest.raises(ValueError, match="expected \\[B, F, 3, H, W\\]"):
        r(videos[:, 0], ["a", "b"])
    with pytest.raises(ValueError, match="lam=-1"):
        build_reward("video_segmental", image_reward="jpeg_compressibility", lam=-1)


def test_segmental_reward_passes_gradients_and_metadata():
    meta = {"prompt": "a red circle", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    r = build_reward("video_segmental", image_reward="shapes_soft", segments=3, sampling="middle")
    assert r.differentiable
    v = torch.rand(1, 6, 3, 8, 8, requires_grad=True)
    r(v, [meta["prompt"]], metadata=[meta]).sum().backward()
    used = v.grad.abs().flatten(2).sum(-1)[0]
    assert (used > 0).tolist() == [True, False, True, False, True, False]  # middles of [0,2) [2,4) [4,6)
