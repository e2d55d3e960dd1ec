"""Video rewards from image rewards.

`video_segmental` (InstructVideo's segmental video reward): split the F frames into S equal
segments, take one frame per segment (TSN sampling: the segment's middle frame, or a random frame
of it during training), score the frames with any image reward and combine them with temporally
attenuated weights gamma_s = exp(-lambda |idx_s - F // 2|) (frames far from the middle count less).
The combination is the weighted mean sum_s gamma_s r_s / sum_s gamma_s (normalize=True, the
default, which keeps the image reward's scale) or the plain mean (1/S) sum_s gamma_s r_s.
`frame_mean=True` scores every frame with equal weight instead."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def segment_frames(num_frames: int, segments: int, *, sampling: str = "middle",
                   generator: torch.Generator | None = None) -> Tensor:
    """One frame index per segment [S]: segment s covers frames [floor(s F / S), floor((s + 1) F / S));
    'middle' takes its middle frame ((lo + hi - 1) // 2), 'random' a uniform frame of it."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"segments={segments} must be in [1, {num_frames}] for {num_frames} frames.")
    if sampling not in ("middle", "random"):
        raise ValueError(f"sampling {sampling!r} is unknown; use 'middle' or 'random'.")
    idx = []
    for s in range(segments):
        lo, hi = s * num_frames // segments, (s + 1) * num_frames // segments
        if sampling == "middle":
            idx.append((lo + hi - 1) // 2)
        else:
            idx.append(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
    return torch.tensor(idx, dtype=torch.long)


def attenuation_weights(frames: Tensor, num_frames: int, lam: float) -> Tensor:
    """gamma_s = exp(-lambda |idx_s - F // 2|), [S] float32."""
    return torch.exp(-lam * (frames.float() - num_frames // 2).abs())


class SegmentalVideoReward:
    def __init__(self, image_reward: str = "shapes_geneval", image_reward_args: dict | None = None,
                 segments: int = 4, lam: float = 0.1, sampling: str = "middle", normalize: bool = True,
                 frame_mean: bool = False, seed: int = 0):
        from . import build_reward

        self.inner = build_reward(image_reward, **(image_reward_args or {}))
        self.differentiable = bool(getattr(self.inner, "differentiable", False))
        self.name = f"video_{'frame_mean' if frame_mean else 'segmental'}_{getattr(self.inner, 'name', image_reward)}"
        self.segments, self.lam, self.sampling, self.normalize, self.frame_mean = segments, lam, sampling, normalize, frame_mean
        self.generator = torch.Generator().manual_seed(seed)

    def frames_and_weights(self, num_frames: int) -> tuple[Tensor, Tensor]:
        if self.frame_mean:
            return torch.arange(num_frames), torch.ones(num_frames)
        idx = segment_frames(num_frames, self.segments, sampling=self.sampling, generator=self.generator)
        return idx, attenuation_weights(idx, num_frames, self.lam)

    def __call__(self, videos: Tensor, prompts: Sequence[str], **context) -> Tensor:
        """videos [B, F, 3, H, W] in [0, 1] -> [B] float32."""
        if videos.ndim != 5:
            raise ValueError(f"videos have shape {tuple(videos.shape)}; expected [B, F, 3, H, W].")
        B, F = videos.shape[:2]
        idx, w = self.frames_and_weights(F)
        S = idx.numel()
        frames = videos[:, idx.to(videos.device)].reshape(B * S, *videos.shape[2:])
        ctx = {k: [v for v in vals for _ in range(S)] if isinstance(vals, (list, tuple)) and len(vals) == B else vals
               for k, vals in context.items()}
        r = self.inner(frames, [p for p in prompts for _ in range(S)], **ctx).reshape(B, S).float()
        w = w.to(r.device)
        return (r * w).sum(1) / (w.sum() if (self.normalize or self.frame_mean) else S)
