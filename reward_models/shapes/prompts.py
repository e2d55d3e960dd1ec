"""Prompt generator of the shapes world in GenEval's metadata format, for all six tasks, with a
held-out set of (colour, class) pairs, (class, relation, class) triples and (count, class) pairs
never seen in training prompts.

    python -m benchmarks.shapes.prompts   # writes flowalign/shapes/prompts/{train,heldout}.jsonl

Single objects and object pairs have too few combinations in a 3-class world to hold any out:
two_object prompts list the pair in one order for training and in the other for held-out, and the
three single_object prompts appear in both sets. Imports only the world."""

from __future__ import annotations

import itertools
import json
import os
import random

from .world import CLASSES, COLORS, NUMBERS, PLURALS

RELATIONS = ("left of", "right of", "above", "below")
HELDOUT_COLOR_CLASS = {("red", "triangle"), ("blue", "circle"), ("yellow", "square"),
                       ("green", "triangle"), ("purple", "circle"), ("black", "square")}
HELDOUT_POSITION = {("circle", "left of", "triangle"), ("square", "above", "circle"),
                    ("triangle", "right of", "square"), ("circle", "below", "square"),
                    ("triangle", "above", "circle"), ("square", "left of", "triangle")}
HELDOUT_COUNT = {(3, "triangle"), (4, "circle"), (2, "square")}


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def single_object(cls):
    return {"tag": "single_object", "include": [{"class": cls, "count": 1}], "prompt": f"a photo of {_a(cls)} {cls}"}


def two_object(a, b):
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {_a(a)} {a} and {_a(b)} {b}"}


def counting(n, cls):
    return {"tag": "counting", "include": [{"class": cls, "count": n}], "exclude": [{"class": cls, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {PLURALS[cls]}"}


def colors(color, cls):
    return {"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}],
            "prompt": f"a photo of {_a(color)} {color} {cls}"}


def position(a, rel, b):
    """A `rel` B: GenEval lists the target B first and A with position [rel, 0]."""
    return {"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_a(a)} {a} {rel} {_a(b)} {b}"}


def color_attr(c1, a, c2, b):
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
            "prompt": f"a photo of {_a(c1)} {c1} {a} and {_a(c2)} {c2} {b}"}


def all_prompts(split: str) -> dict[str, list[dict]]:
    """Every distinct prompt of a split ('train' or 'heldout'), by task."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r} is unknown; use 'train' or 'heldout'.")
    held = split == "heldout"
    cc = [(c, k) for c in COLORS for k in CLASSES]
    out = {
        "single_object": [single_object(k) for k in CLASSES],
        "two_object": [two_object(a, b) if not held else two_object(b, a) for a, b in itertools.combinations(CLASSES, 2)],
        "counting": [counting(n, k) for n in NUMBERS for k in CLASSES if ((n, k) in HELDOUT_COUNT) == held],
        "colors": [colors(c, k) for c, k in cc if ((c, k) in HELDOUT_COLOR_CLASS) == held],
        # same-class relations are left out: GenEval's rule would compare the object with itself
        "position": [position(a, r, b) for a in CLASSES for r in RELATIONS for b in CLASSES
                     if a != b and ((a, r, b) in HELDOUT_POSITION) == held],
        "color_attr": [color_attr(c1, a, c2, b) for (c1, a), (c2, b) in itertools.permutations(cc, 2)
                       if a != b and (((c1, a) in HELDOUT_COLOR_CLASS or (c2, b) in HELDOUT_COLOR_CLASS) == held)],
    }
    return out


def prompt_set(split: str, per_task: int, seed: int = 0) -> list[dict]:
    """`per_task` prompts of each task (balanced); tasks with fewer distinct prompts cycle through
    them. Deterministic from `seed`."""
    rng = random.Random(seed)
    rows = []
    for cands in all_prompts(split).values():
        cands = list(cands)
        rng.shuffle(cands)
        rows += [cands[i % len(cands)] for i in range(per_task)]
    return rows


def write_jsonl(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
