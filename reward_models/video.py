"""Video rewards from image rewards.

`video_segmental` (InstructVideo's segmental video reward, ali-vilab/VGen `utils/reward/reward.py`
with the released InstructVideo config): split the F frames into S segments of span = F // S
frames (segment s covers [s span, (s + 1) span); frames past S span are never scored), take one
frame per segment, score the frames with any image reward and combine them with temporally
attenuated weights gamma = exp(-lambda |idx - F // 2|) (frames far from the middle count less):

    R(video) = (1 / S) sum_s gamma_s r_s                              (the reference's mean)

Reference defaults: `sampling: random` draws a uniform frame of each segment independently for
every video (TSN sampling), `lam: 1.0`, `normalize: false`. Options: `sampling: middle` scores
each segment's middle frame (deterministic, for evaluation); `normalize: true` divides by
sum_s gamma_s instead of S, which keeps the image reward's scale (the reference's mean shrinks it
by up to 1.5-9x depending on lambda and S); `frame_mean: true` scores every frame with equal
weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def segment_frames(num_frames: int, segments: int, *, sampling: str = "middle", batch: int = 1,
                   generator: torch.Generator | None = None) -> Tensor:
    """Frame indices [batch, S], one per segment: segment s covers [s span, (s + 1) span) with
    span = num_frames // segments; 'middle' takes (lo + hi - 1) // 2, 'random' a uniform frame of
    the segment drawn independently for every row."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"segments={segments} must be in [1, {num_frames}] for {num_frames} frames.")
    if sampling not in ("middle", "random"):
        raise ValueError(f"sampling {sampling!r} is unknown; use 'middle' or 'random'.")
    span = num_frames // segments
    start = torch.arange(segments) * span
    if sampling == "middle":
        return (start + (span - 1) // 2).expand(batch, segments).clone()
    return start + torch.randint(span, (batch, segments), generator=generator)


def attenuation_weights(frames: Tensor, num_frames: int, lam: float) -> Tensor:
    """gamma = exp(-lambda |idx - F // 2|), float32, the shape of `frames`."""
    return torch.exp(-lam * (frames.float() - num_frames // 2).abs())


class SegmentalVideoReward:
    def __init__(self, image_reward: str = "shapes_geneval", image_reward_args: dict | None = None,
                 segments: int = 4, lam: float = 1.0, sampling: str = "random", normalize: bool = False,
                 frame_mean: bool = False, seed: int = 0):
        from . import build_reward

        if lam < 0:
            raise ValueError(f"lam={lam} must be >= 0 (0 weights every segment equally).")
        self.inner = build_reward(image_reward, **(image_reward_args or {}))
        self.differentiable = bool(getattr(self.inner, "differentiable", False))
        self.name = f"video_{'frame_mean' if frame_mean else 'segmental'}_{getattr(self.inner, 'name', image_reward)}"
        self.segments, self.lam, self.sampling, self.normalize, self.frame_mean = segments, lam, sampling, normalize, frame_mean
        self.generator = torch.Generator().manual_seed(seed)

    def frames_and_weights(self, num_frames: int, batch: int = 1) -> tuple[Tensor, Tensor]:
        """-> (frame indices [batch, S], weights [batch, S])."""
        if self.frame_mean:
            return torch.arange(num_frames).expand(batch, num_frames), torch.ones(batch, num_frames)
        idx = segment_frames(num_frames, self.segments, sampling=self.sampling, batch=batch, generator=self.generator)
        return idx, attenuation_weights(idx, num_frames, self.lam)

    def __call__(self, videos: Tensor, prompts: Sequence[str], **context) -> Tensor:
        """videos [B, F, 3, H, W] in [0, 1] -> [B] (float32, or float64 for a float64 image reward)."""
        if videos.ndim != 5:
            raise ValueError(f"videos have shape {tuple(videos.shape)}; expected [B, F, 3, H, W].")
        B, F = videos.shape[:2]
        idx, w = self.frames_and_weights(F, B)
        S = idx.shape[1]
        rows = torch.arange(B, device=videos.device)[:, None]
        frames = videos[rows, idx.to(videos.device)].reshape(B * S, *videos.shape[2:])
        ctx = {k: [v for v in vals for _ in range(S)] if isinstance(vals, (list, tuple)) and len(vals) == B else vals
               for k, vals in context.items()}
        r = self.inner(frames, [p for p in prompts for _ in range(S)], **ctx).reshape(B, S)
        r = r.to(torch.promote_types(r.dtype, torch.float32))
        w = w.to(r.device, r.dtype)
        return (r * w).sum(1) / (w.sum(1) if (self.normalize or self.frame_mean) else S)
