"""Procedural detector of the shapes world: colour segmentation against the palette, connected
components, shape classification from geometry, and a confidence. It returns GenEval-style
detections (reward_models.geneval_rules.Detection) with their colours, so the same scoring rules
as the real evaluator apply. Imports only the world and the scoring rules.

Each pixel is read as a blend of the background and one palette colour (its coverage alpha).
Features of a component: fill = covered area / sub-pixel bounding-box area (square 1, circle
~pi/4, triangle ~0.58 once anti-aliased), and top = share of the covered area in the upper half of
the box (square and circle 1/2, an upward triangle ~0.29)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..geneval_rules import Detection
from .world import BACKGROUND, COLORS

# (fill, top) of clean 32 px renders, measured over 660 single-object renders (spread <= 0.02);
# the widths leave room for the imperfect shapes a model draws
PROTOTYPES = {"square": (1.0, 0.5), "circle": (0.781, 0.5), "triangle": (0.585, 0.286)}
FEATURE_STD = (0.05, 0.04)
MIN_AREA = 6.0  # pixels of coverage at 32 x 32
MAX_COLOR_DIST = 110.0  # RGB distance beyond which a pixel matches no palette colour
# an image with more than this share of pixels off the background and outside every detected object
# is not a scene but noise, and gets no detections. `python -m benchmarks.shapes.clutter`
# (benchmarks/results/clutter.json, 96 images per source): clean renders max 0.000; the committed
# model max 0.011; an untrained transformer median 0.142 (71 %
# above), decoded random latents median 0.162 (77 %), uniform noise 0.98. Without the rule the
# untrained transformer passes 36 % of single-object prompts, with it 8 %.
MAX_CLUTTER = 0.10
STRAY_DIST = 40.0  # RGB distance from the background that makes a pixel "off the background"


def classify(fill: float, top: float) -> dict[str, float]:
    """Class probabilities from the two shape features (Gaussian likelihoods, normalised)."""
    like = {c: math.exp(-0.5 * (((fill - f) / FEATURE_STD[0]) ** 2 + ((top - t) / FEATURE_STD[1]) ** 2))
            for c, (f, t) in PROTOTYPES.items()}
    z = sum(like.values())
    if z < 1e-12:
        return {c: 0.0 for c in like}
    # a feature far from every prototype lowers the confidence of the best class too
    best = max(like.values())
    return {c: v / z * min(1.0, best / 0.05) for c, v in like.items()}


def as_pixels(image: np.ndarray) -> np.ndarray:
    """image [H, W, 3] uint8 (or float in [0, 1]) -> float64 in [0, 255]."""
    img = np.asarray(image, dtype=np.float64)
    return img * 255.0 if img.max() <= 1.0 + 1e-6 else img


def detect(image: np.ndarray) -> dict[str, list[Detection]]:
    """image [H, W, 3] uint8 (or float in [0, 1]) -> class -> detections (box, score, colour); none
    for an image whose clutter (see `clutter`) exceeds MAX_CLUTTER."""
    # both take the caller's image: as_pixels is not idempotent (a float image darker than 1/255,
    # once scaled, would read as [0, 1] again and be scaled twice)
    out = find_objects(image)
    return {} if clutter(image, out) > MAX_CLUTTER else out


def find_objects(image: np.ndarray) -> dict[str, list[Detection]]:
    """The object pass of `detect` without the clutter rule: every palette-coloured component."""
    img = as_pixels(image)
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    # each pixel as a blend bg + alpha (c - bg): alpha per colour and the distance off that line
    d = palette - bg  # [C, 3]
    alpha = np.clip(((img - bg) @ d.T) / (d * d).sum(1), 0.0, 1.0)  # [H, W, C]
    resid = np.linalg.norm(img[:, :, None, :] - (bg + alpha[..., None] * d), axis=-1)  # [H, W, C]
    best = resid.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    fits = np.take_along_axis(resid, best[..., None], -1)[..., 0] < MAX_COLOR_DIST / 2
    label = np.where(fits & (best_alpha > 0.5), best, len(names))  # len(names): background
    soft = np.where(fits[..., None] & (best[..., None] == np.arange(len(names))), alpha, 0.0)  # [H, W, C]
    out: dict[str, list[Detection]] = {}
    for ci, name in enumerate(names):
        comps, n = ndimage.label(label == ci, structure=np.ones((3, 3)))
        if n == 0:
            continue
        cov = soft[..., ci]
        for k in range(1, n + 1):
            region = comps == k
            grown = ndimage.binary_dilation(region, structure=np.ones((3, 3)))
            alpha = np.where(grown, cov, 0.0)
            area = alpha.sum()
            if area < MIN_AREA:
                continue
            # sub-pixel extents: a column's (row's) largest coverage is the share of it the shape spans
            col_ext, row_ext = alpha.max(0), alpha.max(1)
            w, h = float(col_ext.sum()), float(row_ext.sum())
            cx = float((col_ext * (np.arange(len(col_ext)) + 0.5)).sum() / w)  # centre of the extent
            cy = float((row_ext * (np.arange(len(row_ext)) + 0.5)).sum() / h)
            x1, x2, y1, y2 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
            fill = area / (w * h)
            # share of the covered area above the box's middle row
            rows = np.arange(img.shape[0]) + 0.5
            upper = np.clip(cy - (rows - 0.5), 0, 1)
            top = float((alpha.sum(1) * upper).sum() / area)
            probs = classify(fill, top)
            cls = max(probs, key=probs.get)
            aspect = min(w, h) / max(w, h)
            score = probs[cls] * min(1.0, aspect / 0.7)
            out.setdefault(cls, []).append(Detection((float(x1), float(y1), float(x2), float(y2)), float(score), name, region))
    return out


def clutter(image: np.ndarray, detections: dict[str, list[Detection]]) -> float:
    """Share of pixels farther than STRAY_DIST from the background and not within one pixel of a
    detected object."""
    covered = np.zeros(np.shape(image)[:2], dtype=bool)
    for dets in detections.values():
        for det in dets:
            covered |= det.mask
    covered = ndimage.binary_dilation(covered, structure=np.ones((3, 3)))
    stray = np.linalg.norm(as_pixels(image) - np.asarray(BACKGROUND, dtype=np.float64), axis=-1) > STRAY_DIST
    return float((stray & ~covered).mean())
