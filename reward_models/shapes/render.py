"""Renderer of the shapes world: anti-aliased coloured shapes on a #999 background.

A scene is a list of ShapeObject; `render` draws it at 4x and downsamples (anti-aliasing);
`sample_scene` draws a random scene that satisfies a GenEval-format prompt, checked with GenEval's
own rules on the true boxes. Deterministic from a seed. Imports only the world and the scoring rules."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..geneval_rules import Detection, evaluate
from .world import BACKGROUND, CLASSES, COLORS

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    cls: str  # one of CLASSES
    color: str  # one of COLORS
    cx: float  # centre, pixels
    cy: float
    size: float  # side of the bounding box, pixels

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


def render(scene: list[ShapeObject], size: int = 32) -> np.ndarray:
    """[size, size, 3] uint8 image of the scene."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene:
        x1, y1, x2, y2 = (c * SUPERSAMPLE for c in o.box)
        col = COLORS[o.color]
        if o.cls == "circle":
            draw.ellipse([x1, y1, x2, y2], fill=col)
        elif o.cls == "square":
            draw.rectangle([x1, y1, x2, y2], fill=col)
        elif o.cls == "triangle":
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=col)
        else:
            raise ValueError(f"shape class {o.cls!r} is unknown; use one of {CLASSES}.")
    return np.asarray(img.resize((size, size), Image.BOX))


def _true_detections(scene: list[ShapeObject]) -> dict[str, list[Detection]]:
    out: dict[str, list[Detection]] = {}
    for o in scene:
        out.setdefault(o.cls, []).append(Detection(o.box, 1.0, o.color))
    return out


def satisfies(scene: list[ShapeObject], metadata: dict) -> bool:
    """GenEval's verdict on the scene's true objects."""
    return evaluate(_true_detections(scene), metadata).correct


def _overlaps(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.box, b.box
    return not (ax2 + gap <= bx1 or bx2 + gap <= ax1 or ay2 + gap <= by1 or by2 + gap <= ay1)


def sample_scene(metadata: dict, rng: random.Random, size: int = 32, min_obj: float = 0.22,
                 max_obj: float = 0.36, tries: int = 2000) -> list[ShapeObject]:
    """A random scene with exactly the objects a prompt asks for, satisfying its GenEval rules."""
    colors = list(COLORS)
    for _ in range(tries):
        scene: list[ShapeObject] = []
        for req in metadata["include"]:
            for _ in range(req["count"]):
                s = rng.uniform(min_obj, max_obj) * size
                color = req.get("color") or rng.choice(colors)
                pos = req.get("position")
                for _ in range(50):
                    if pos is None:
                        cx, cy = rng.uniform(s / 2, size - s / 2), rng.uniform(s / 2, size - s / 2)
                    else:  # place relative to the (single) target object
                        t = scene[pos[1]]  # targets are single objects, listed first
                        ang = {"left of": math.pi, "right of": 0.0, "above": -math.pi / 2,
                               "below": math.pi / 2}[pos[0]] + rng.uniform(-0.5, 0.5)
                        dist = rng.uniform(0.6, 1.2) * (s + t.size)
                        cx, cy = t.cx + dist * math.cos(ang), t.cy + dist * math.sin(ang)
                    cand = ShapeObject(req["class"], color, cx, cy, s)
                    x1, y1, x2, y2 = cand.box
                    inside = x1 >= 0.5 and y1 >= 0.5 and x2 <= size - 0.5 and y2 <= size - 0.5
                    if inside and not any(_overlaps(cand, o, 1.5) for o in scene):
                        scene.append(cand)
                        break
        if len(scene) == sum(r["count"] for r in metadata["include"]) and satisfies(scene, metadata):
            order = list(range(len(scene)))
            rng.shuffle(order)  # drawing order carries no information
            return [scene[i] for i in order]
    raise RuntimeError(f"could not place a scene for prompt {metadata['prompt']!r} in {tries} tries.")


def render_prompt(metadata: dict, seed: int, size: int = 32) -> tuple[np.ndarray, list[ShapeObject]]:
    """Render one random scene for a prompt, deterministically from `seed`."""
    scene = sample_scene(metadata, random.Random(seed), size)
    return render(scene, size), scene
