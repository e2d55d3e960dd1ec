"""GenEval's scoring rules (Ghosh et al. 2023), as a pure module that takes detections from any
detector. Imports nothing else of the project.

Rules: keep detections above 0.3 confidence (0.9 for counting prompts), at most 16 per class,
highest confidence first; an `include` clause needs >= count detections of its class and uses the
top-`count` of them; a colour clause needs that many of them to have the colour; a position clause
compares every selected object with every object matched by the target clause, using centres with
a 0.1 (dimA + dimB) margin; an `exclude` clause fails at >= count detections. A task's accuracy is
the mean over its images; the overall score is the unweighted mean of the task accuracies."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass
class Detection:
    """One detected object. box = (x1, y1, x2, y2) in pixels, y pointing down."""

    box: tuple[float, float, float, float]
    score: float
    color: str | None = None  # set by detectors that know colours; else a colour classifier is used
    mask: Any = None  # optional [H, W] boolean mask, for colour classifiers


@dataclass
class Verdict:
    correct: bool
    reasons: list[str] = field(default_factory=list)
    clauses: int = 0  # number of checks made (for the dense score)
    satisfied: int = 0  # number that passed

    @property
    def partial(self) -> float:
        """Fraction of clauses satisfied: a dense, partial score in [0, 1]."""
        return self.satisfied / self.clauses if self.clauses else float(self.correct)


ColorFn = Callable[[Detection, str], str]


def select_detections(raw: Mapping[str, Sequence[Detection]], tag: str) -> dict[str, list[Detection]]:
    """Threshold (0.3, or 0.9 for counting), sort by confidence, keep at most 16 per class, exactly as
    GenEval's evaluate_images.py does on mmdet's float32 scores: a score is compared as float32 (so
    float32(0.3) passes 0.3), and equal scores keep the order numpy's argsort reversed gives them."""
    thr = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    out = {}
    for cls, dets in raw.items():
        scores = np.array([d.score for d in dets], dtype=np.float32)
        order = np.argsort(scores)[::-1]
        order = order[scores[order] > thr][:MAX_OBJECTS]
        if order.size:
            out[cls] = [dets[i] for i in order.tolist()]
    return out


def relative_position(a: Detection, b: Detection) -> set[str]:
    """Relations of A relative to B, with the 0.1 (dimA + dimB) margin; empty if too close. Computed
    in float32 like GenEval (its boxes are mmdet's float32 rows), so verdicts at the 0.5 and 1e-3
    boundaries agree with the official evaluator bit for bit."""
    corners = np.array([a.box, b.box], dtype=np.float32).reshape(2, 2, 2)  # [box, corner, xy]
    centre = corners.mean(axis=1)
    dims = np.abs(corners[:, 1] - corners[:, 0])
    offset = centre[0] - centre[1]
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dims[0] + dims[1]), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _color(det: Detection, cls: str, color_fn: ColorFn | None) -> str | None:
    if det.color is not None:
        return det.color
    if color_fn is None:
        raise ValueError("a colour clause needs detections with colours or a color_fn classifier.")
    return color_fn(det, cls)


def evaluate(raw: Mapping[str, Sequence[Detection]], metadata: Mapping, color_fn: ColorFn | None = None) -> Verdict:
    """GenEval's verdict for one image. `raw`: class -> detections (before thresholding)."""
    objects = select_detections(raw, metadata.get("tag", ""))
    v = Verdict(correct=True)

    def check(ok: bool, reason: str) -> bool:
        v.clauses += 1
        v.satisfied += int(ok)
        if not ok:
            v.correct = False
            v.reasons.append(reason)
        return ok

    matched: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])[:count]
        ok = check(len(found) >= count, f"expected {cls}>={count}, found {len(found)}")
        if ok and "color" in req:
            colors = [_color(d, cls, color_fn) for d in found]
            ok = check(colors.count(req["color"]) >= count,
                       f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])}")
        elif "color" in req:
            check(False, f"no {cls} to check the colour of")
        if "position" in req:
            rel, target = req["position"]
            if not ok:
                check(False, f"no {cls} to check the position of")
            elif matched[target] is None:
                ok = check(False, f"no target for {cls} to be {rel}")
            else:
                bad = next(((o, t) for o in found for t in matched[target] if rel not in relative_position(o, t)), None)
                ok = check(bad is None, f"expected {cls} {rel} target, found {sorted(relative_position(*bad)) if bad else ''}")
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        check(n < req["count"], f"expected {req['class']}<{req['count']}, found {n}")
    return v


def require_clauses(metadata: Sequence[Mapping] | None, n: int, reward: str) -> None:
    """A GenEval reward needs one metadata row with 'include' clauses per image: without clauses (the
    rows of a plain-text prompt file) every image would score 1."""
    if metadata is None or len(metadata) != n:
        raise ValueError(f"the {reward} reward needs GenEval metadata (one row per image); train with a "
                         "GenEval-format JSONL prompt file.")
    bare = next((m for m in metadata if not m.get("include")), None)
    if bare is not None:
        raise ValueError(f"the {reward} reward got the prompt {bare.get('prompt')!r} without GenEval clauses "
                         "('include'); plain-text prompt files carry none, so every image would score 1: use a "
                         "GenEval-format JSONL prompt file.")


def summarize(results: Iterable[Mapping]) -> dict:
    """results: dicts with 'tag' and 'correct' -> {"overall", "tasks": {tag: acc}, "n_images"}.
    The overall score is the unweighted mean over the tasks present."""
    per: dict[str, list[bool]] = {}
    n = 0
    for r in results:
        per.setdefault(r["tag"], []).append(bool(r["correct"]))
        n += 1
    tasks = {t: sum(v) / len(v) for t, v in per.items()}
    overall = sum(tasks.values()) / len(tasks) if tasks else 0.0
    return {"overall": overall, "tasks": dict(sorted(tasks.items())), "n_images": n}


DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "geneval_data")
METADATA_FILE = os.path.join(DATA_DIR, "evaluation_metadata.jsonl")  # GenEval's 553 prompts
OBJECT_NAMES_FILE = os.path.join(DATA_DIR, "object_names.txt")  # the 80 COCO classes, GenEval's order
