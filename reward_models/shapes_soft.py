"""A differentiable stand-in for the shapes GenEval reward (for ReNO on the testbed).

Each pixel is softly assigned to the world's palette (six colours + the #999 background) with a
softmax over negative squared RGB distances / temperature. From these soft masks:
- every included object with a colour: its colour's pixel mass should match count x the class's
  expected area (a Gaussian score of the relative error);
- the total foreground mass (1 - background) should match the sum of all included objects' areas,
  a soft object count;
- a position clause between two coloured objects: sigmoid(sharpness x the centroid offset along
  the asked direction), in units of the image side.
The reward is the mean of these scores, in [0, 1]. It sees colour, amount and layout, not shape
class: it is a proxy that correlates with GenEval-shapes correctness, not a replacement."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reward_models.shapes import render
from reward_models.shapes.world import BACKGROUND, COLORS


def expected_areas(min_obj: float = 0.22, max_obj: float = 0.36) -> dict[str, float]:
    """Mean area (fraction of the image) of each class for sizes u ~ U(min_obj, max_obj) of the side,
    as render.sample_scene draws them: square u^2, circle pi/4 u^2, triangle u^2 / 2."""
    mean_u2 = (max_obj**3 - min_obj**3) / (3 * (max_obj - min_obj))
    return {"square": mean_u2, "circle": torch.pi / 4 * mean_u2, "triangle": mean_u2 / 2}


class ShapesSoftReward:
    differentiable = True

    def __init__(self, temperature: float = 0.01, tolerance: float = 0.5, sharpness: float = 20.0):
        self.name = "shapes_soft"
        self.temperature, self.tolerance, self.sharpness = temperature, tolerance, sharpness
        names = list(COLORS)
        self.color_index = {c: i for i, c in enumerate(names)}
        self.palette = torch.tensor([COLORS[c] for c in names] + [BACKGROUND], dtype=torch.float32) / 255.0
        defaults = render.sample_scene.__defaults__  # (size, min_obj, max_obj, tries)
        self.areas = expected_areas(defaults[1], defaults[2])

    def soft_masks(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> soft assignment [B, 7, H, W] (six colours, then background)."""
        pal = self.palette.to(images.device, images.dtype)
        d2 = ((images.unsqueeze(1) - pal[None, :, :, None, None]) ** 2).sum(dim=2)
        return torch.softmax(-d2 / self.temperature, dim=1)

    def _match(self, mass: Tensor, target: float) -> Tensor:
        return torch.exp(-(((mass - target) / (self.tolerance * target)) ** 2))

    def __call__(self, images: Tensor, prompts: Sequence[str], *, metadata: Sequence[dict] | None = None,
                 **context) -> Tensor:
        if metadata is None or len(metadata) != len(images) or any("include" not in m for m in metadata):
            raise ValueError("the shapes_soft reward needs GenEval metadata (one row with 'include' per image); "
                             "pass a GenEval-format JSONL prompt file.")
        masks = self.soft_masks(images.float())  # [B, 7, H, W]
        B, _, H, W = masks.shape
        mass = masks.mean(dim=(2, 3))  # [B, 7]
        ys = (torch.arange(H, dtype=masks.dtype, device=masks.device) + 0.5) / H
        xs = (torch.arange(W, dtype=masks.dtype, device=masks.device) + 0.5) / W
        out = []
        for b, meta in enumerate(metadata):
            scores = []
            total = 0.0
            for obj in meta["include"]:
                area = obj["count"] * self.areas[obj["class"]]
                total += area
                if obj.get("color"):
                    scores.append(self._match(mass[b, self.color_index[obj["color"]]], area))
            scores.append(self._match(1 - mass[b, -1], total))
            for obj in meta["include"]:
                pos = obj.get("position")
                if pos is None or not obj.get("color") or not meta["include"][pos[1]].get("color"):
                    continue
                centroids = []
                for o in (obj, meta["include"][pos[1]]):
                    m = masks[b, self.color_index[o["color"]]]
                    w = m.sum() + 1e-6
                    centroids.append(torch.stack([(m.sum(0) * xs).sum() / w, (m.sum(1) * ys).sum() / w]))
                dx, dy = centroids[0] - centroids[1]
                offset = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[pos[0]]
                scores.append(torch.sigmoid(self.sharpness * offset))
            out.append(torch.stack(scores).mean())
        return torch.stack(out).float()
