"""GenEval's verdicts against the official evaluator's logic, djghosh13/geneval
evaluation/evaluate_images.py (evaluate_image's detection selection with max_overlap 1, evaluate and
relative_position), transcribed below on float32 detection rows as mmdet returns them. 10,000 random
detection sets over every tag, with scores exactly at the thresholds, exact ties and boxes whose
centres coincide or sit at the position rule's boundaries; the colour classifier is replaced by a
colour per detection on both sides."""

import random

import numpy as np

from reward_models.geneval_rules import TASKS, Detection, evaluate

CLASSES = ["cat", "dog", "cup"]
COLORS = ["red", "green", "blue"]
THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD = 0.3, 0.9, 16, 0.1


def official_relative_position(obj_a, obj_b):
    boxes = np.array([obj_a, obj_b])[:, :4].reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised_offset = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised_offset) < 1e-3):
        return set()
    dx, dy = revised_offset / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def official_verdict(bbox: dict[str, np.ndarray], colors: dict[str, list[str]], metadata: dict) -> bool:
    threshold = THRESHOLD if metadata["tag"] != "counting" else COUNTING_THRESHOLD
    detected = {}
    for classname, rows in bbox.items():
        ordering = np.argsort(rows[:, 4])[::-1]
        ordering = ordering[rows[ordering, 4] > threshold]
        ordering = ordering[:MAX_OBJECTS].tolist()
        if ordering:
            detected[classname] = [rows[i] for i in ordering]
    correct, matched_groups = True, []
    for req in metadata.get("include", []):
        classname, matched = req["class"], True
        found = detected.get(classname, [])[:req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
        else:
            if "color" in req:
                found_colors = [colors[classname][int(row[5])] for row in found]
                if found_colors.count(req["color"]) < req["count"]:
                    correct = matched = False
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            if expected_rel not in official_relative_position(obj, target):
                                correct = matched = False
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        if len(detected.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def random_case(rng: random.Random):
    tag = rng.choice(TASKS)
    include = []
    for i in range(rng.randint(1, 3)):
        req = {"class": rng.choice(CLASSES), "count": rng.randint(1, 3)}
        if rng.random() < 0.4:
            req["color"] = rng.choice(COLORS)
        if i and rng.random() < 0.5:
            req["position"] = [rng.choice(["left of", "right of", "above", "below"]), rng.randrange(i)]
        include.append(req)
    meta = {"tag": tag, "include": include}
    if rng.random() < 0.3:
        meta["exclude"] = [{"class": rng.choice(CLASSES), "count": rng.randint(1, 3)}]
    special = [0.3, float(np.float32(0.3)), 0.9, float(np.float32(0.9)), 0.5, 0.95]
    bbox, colors = {}, {}
    for cls in CLASSES:
        n = rng.choice([0, 1, 2, 3, 5, 20])
        rows = []
        for j in range(n):
            score = rng.choice(special) if rng.random() < 0.5 else rng.random()
            if rows and rng.random() < 0.3:
                score = float(rows[-1][4])  # an exact tie with the previous detection
            if rng.random() < 0.3:  # boxes on a coarse grid: coincident centres, boundary offsets
                x1, y1 = rng.randrange(0, 8) * 8.0, rng.randrange(0, 8) * 8.0
                x2, y2 = x1 + rng.randrange(1, 4) * 8.0, y1 + rng.randrange(1, 4) * 8.0
            else:
                x1, y1 = rng.uniform(0, 400), rng.uniform(0, 400)
                x2, y2 = x1 + rng.uniform(1, 200), y1 + rng.uniform(1, 200)
            rows.append([x1, y1, x2, y2, score, j])
        if rows:
            bbox[cls] = np.array(rows, dtype=np.float32)
            colors[cls] = [rng.choice(COLORS) for _ in rows]
    return meta, bbox, colors


def test_verdicts_equal_the_official_logic_on_10000_random_detection_sets():
    rng = random.Random(0)
    tags, disagreements, correct = set(), [], 0
    for trial in range(10_000):
        meta, bbox, colors = random_case(rng)
        raw = {cls: [Detection(box=tuple(float(v) for v in row[:4]), score=float(row[4]),
                               color=colors[cls][int(row[5])]) for row in rows] for cls, rows in bbox.items()}
        ours = evaluate(raw, meta).correct
        ref = official_verdict(bbox, colors, meta)
        correct += ref
        tags.add(meta["tag"])
        if ours != ref:
            disagreements.append(trial)
    assert disagreements == []
    assert tags == set(TASKS) and 100 < correct < 9_900  # both verdicts occur often


def test_score_exactly_at_the_threshold_and_ties():
    """float32(0.3) does not pass 0.3 in float32; of two equal scores the official order keeps the later."""
    at = Detection(box=(0, 0, 10, 10), score=float(np.float32(0.3)), color="red")
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert evaluate({"cat": [at]}, meta).correct is False
    first = Detection(box=(0, 0, 10, 10), score=0.5, color="red")
    second = Detection(box=(0, 0, 10, 10), score=0.5, color="blue")
    colour = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "blue"}]}
    rows = np.array([[0, 0, 10, 10, 0.5, 0], [0, 0, 10, 10, 0.5, 1]], dtype=np.float32)
    ref = official_verdict({"cat": rows}, {"cat": ["red", "blue"]}, colour)
    assert evaluate({"cat": [first, second]}, colour).correct is ref
