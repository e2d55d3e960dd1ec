import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reward_models.geneval_rules import TASKS, evaluate
from reward_models.shapes import detector, prompts, render
from reward_models.shapes.world import BACKGROUND, CLASSES, COLORS

ROOT = Path(__file__).resolve().parents[2]
GENEVAL = ROOT.parent / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"


def check_geneval_line(row: dict) -> None:
    """The schema of a line of GenEval's evaluation_metadata.jsonl."""
    assert set(row) <= {"tag", "include", "exclude", "prompt"} and {"tag", "include", "prompt"} <= set(row)
    assert row["tag"] in TASKS and isinstance(row["prompt"], str) and row["include"]
    for i, req in enumerate(row["include"]):
        assert set(req) <= {"class", "count", "color", "position"} and isinstance(req["count"], int)
        if "position" in req:
            rel, idx = req["position"]
            assert rel in ("left of", "right of", "above", "below") and 0 <= idx < i
    for req in row.get("exclude", []):
        assert set(req) == {"class", "count"}


def test_schema_check_accepts_geneval_own_file():
    if not GENEVAL.exists():
        pytest.skip("GenEval's metadata is not beside the checkout")
    lines = [json.loads(line) for line in GENEVAL.read_text().splitlines() if line.strip()]
    assert len(lines) == 553
    for row in lines:
        check_geneval_line(row)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_prompt_files_parse_like_geneval_and_are_balanced(split):
    rows = prompts.read_jsonl(str(ROOT / "flowalign" / "shapes" / "prompts" / f"{split}.jsonl"))
    for row in rows:
        check_geneval_line(row)
    counts = Counter(r["tag"] for r in rows)
    assert set(counts) == set(TASKS) and len(set(counts.values())) == 1
    # the committed files are what the generator writes
    per = counts["colors"]
    assert rows == prompts.prompt_set(split, per, seed=0 if split == "train" else 1)


def test_heldout_combinations_never_appear_in_training():
    train, held = prompts.all_prompts("train"), prompts.all_prompts("heldout")

    def color_pairs(rows):
        return {(q["color"], q["class"]) for r in rows for q in r["include"] if "color" in q}

    train_rows = [r for v in train.values() for r in v]
    assert not color_pairs(train_rows) & prompts.HELDOUT_COLOR_CLASS
    assert color_pairs(held["colors"]) <= prompts.HELDOUT_COLOR_CLASS
    train_pos = {(r["include"][1]["class"], r["include"][1]["position"][0], r["include"][0]["class"]) for r in train["position"]}
    assert not train_pos & prompts.HELDOUT_POSITION and len(held["position"]) == len(prompts.HELDOUT_POSITION)
    train_count = {(r["include"][0]["count"], r["include"][0]["class"]) for r in train["counting"]}
    assert not train_count & prompts.HELDOUT_COUNT
    train_prompts = {r["prompt"] for r in train_rows}
    for task in ("counting", "colors", "position", "color_attr", "two_object"):
        assert not train_prompts & {r["prompt"] for r in held[task]}, task


def test_render_is_deterministic_anti_aliased_and_on_999():
    meta = prompts.color_attr("red", "circle", "blue", "square")
    a, scene_a = render.render_prompt(meta, seed=7)
    b, scene_b = render.render_prompt(meta, seed=7)
    c, _ = render.render_prompt(meta, seed=8)
    assert np.array_equal(a, b) and scene_a == scene_b and not np.array_equal(a, c)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert tuple(a[0, 0]) == BACKGROUND
    pure = {tuple(v) for v in COLORS.values()} | {BACKGROUND}
    mixed = {tuple(p) for p in a.reshape(-1, 3)} - pure
    assert mixed  # anti-aliased edges blend colour and background


def test_scenes_satisfy_their_prompt_with_1_to_4_objects():
    rng = random.Random(0)
    sizes = Counter()
    for meta in prompts.prompt_set("train", 20):
        scene = render.sample_scene(meta, rng)
        assert render.satisfies(scene, meta), meta["prompt"]
        sizes[len(scene)] += 1
        for o in scene:
            assert o.cls in CLASSES and o.color in COLORS
    assert set(sizes) == {1, 2, 3, 4}


def test_detector_accuracy_on_clean_renders():
    rows = prompts.prompt_set("heldout", 25, seed=3) + prompts.prompt_set("train", 25, seed=3)
    correct = sum(evaluate(detector.detect(render.render_prompt(r, 100 + i)[0]), r).correct for i, r in enumerate(rows))
    acc = correct / len(rows)
    print(f"detector + GenEval rules on {len(rows)} clean renders: {acc:.3f}")
    assert acc >= 0.98


def test_detector_objects_classes_colours_and_boxes():
    rng = random.Random(1)
    n = found = 0
    for meta in prompts.prompt_set("train", 10, seed=4):
        scene = render.sample_scene(meta, rng)
        dets = detector.detect(render.render(scene))
        got = Counter((c, d.color) for c, ds in dets.items() for d in ds if d.score > 0.9)
        want = Counter((o.cls, o.color) for o in scene)
        n += 1
        found += got == want
        for o in scene:
            cand = [d for d in dets.get(o.cls, []) if d.color == o.color]
            assert min(abs((d.box[0] + d.box[2]) / 2 - o.cx) for d in cand) < 0.5
    assert found / n >= 0.98


def test_detector_ignores_background_and_blobs():
    bg = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    assert detector.detect(bg) == {}
    noisy = bg.copy()
    noisy[10, 10] = COLORS["red"]  # a one-pixel speck is below the minimum area
    assert detector.detect(noisy) == {}


def test_detector_rejects_noise_but_keeps_a_scene_with_a_few_stray_pixels():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    # smooth coloured noise, like an untrained VAE's decodings
    smooth = ndimage.gaussian_filter(rng.normal(size=(32, 32, 3)), sigma=(1.0, 1.0, 0))
    smooth = np.clip(153 + smooth / smooth.std() * 90, 0, 255).astype(np.uint8)
    assert detector.find_objects(smooth)  # without the clutter rule, noise yields shapes
    assert detector.detect(uniform) == {} and detector.detect(smooth) == {}
    meta = {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"}
    img = render.render_prompt(meta, 7)[0].copy()
    flat = img.reshape(-1, 3)
    specks = rng.choice(len(flat), size=len(flat) * 3 // 100, replace=False)  # 3 % stray pixels
    flat[specks] = rng.integers(0, 256, (len(specks), 3))
    assert "square" in detector.detect(img)
