"""`flowalign eval geneval`: GenEval's metadata, the folder layout, resumable generation, scoring with
the real detector classes on tiny models, and the summary against hand computation."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from flowalign.evaluation.geneval import (
    METADATA_FILE,
    ShapesEvaluator,
    check_metadata,
    generate_layout,
    read_layout,
    read_metadata,
    score_layout,
    summarize_geneval,
)
from reward_models.geneval_rules import Detection, evaluate

SHARED = os.path.join("..", "shared", "data", "geneval", "evaluation_metadata.jsonl")


def first_per_task(rows):
    seen, out = set(), []
    for r in rows:
        if r["tag"] not in seen:
            seen.add(r["tag"])
            out.append(r)
    return out


def test_every_metadata_line_parses():
    rows = read_metadata(METADATA_FILE)
    assert len(rows) == 553
    assert {r["tag"] for r in rows} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    if os.path.exists(SHARED):  # the packaged copy is GenEval's file, line for line
        assert read_metadata(SHARED) == rows


@pytest.mark.parametrize("row, match", [
    ({"tag": "shapes", "include": [{"class": "cat", "count": 1}], "prompt": "x"}, "not a GenEval task"),
    ({"tag": "counting", "include": [], "prompt": "x"}, "non-empty list"),
    ({"tag": "counting", "include": [{"class": "cat", "count": 0}], "prompt": "x"}, "positive integer count"),
    ({"tag": "position", "include": [{"class": "cat", "count": 1, "position": ["near", 0]}], "prompt": "x"},
     "relation"),
    ({"tag": "counting", "prompt": "x"}, "include"),
])
def test_bad_metadata_is_one_sentence(row, match):
    with pytest.raises(ValueError, match=match):
        check_metadata(row, "f.jsonl:3")


def test_metadata_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metadata(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "counting"\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        read_metadata(str(bad))


def test_generation_writes_the_layout_and_resumes_exactly(sd3_policy, tmp_path):
    metas = first_per_task(read_metadata(METADATA_FILE))  # one prompt of each task
    out = str(tmp_path / "gen")
    kw = dict(images_per_prompt=2, num_steps=2, guidance=1.0, seed=3, batch_size=4, progress=False)
    assert generate_layout(sd3_policy, metas, out, **kw) == 6
    for i, meta in enumerate(metas):
        folder = os.path.join(out, f"{i:05d}")
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            assert json.loads(f.read()) == meta
        assert sorted(os.listdir(os.path.join(folder, "samples"))) == ["0000.png", "0001.png"]
    before = np.asarray(Image.open(os.path.join(out, "00004", "samples", "0001.png")))
    # a crash mid-prompt: metadata missing -> that prompt (only) is generated again, identically
    os.remove(os.path.join(out, "00004", "metadata.jsonl"))
    os.remove(os.path.join(out, "00004", "samples", "0001.png"))
    assert generate_layout(sd3_policy, metas, out, **kw) == 1
    assert np.array_equal(np.asarray(Image.open(os.path.join(out, "00004", "samples", "0001.png"))), before)
    assert generate_layout(sd3_policy, metas, out, **kw) == 0
    assert [m for m, _ in read_layout(out)] == metas


class FixedEvaluator:
    """Fixed fake detections per prompt: a cat always, a red dog only in image 0."""

    def verdicts(self, images, metadata):
        out = []
        for j, meta in enumerate(metadata):
            dets = {"cat": [Detection((0, 0, 10, 10), 0.95, color="blue")]}
            if j == 0:
                dets["dog"] = [Detection((20, 0, 30, 10), 0.8, color="red")]
            out.append((evaluate(dets, meta), dets))
        return out


def test_score_layout_summary_matches_hand_computation(tmp_path):
    out = tmp_path / "layout"
    metas = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
             {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
              "prompt": "a photo of a cat and a dog"},
             {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a red dog"},
             {"tag": "position", "include": [{"class": "cat", "count": 1},
                                             {"class": "dog", "count": 1, "position": ["left of", 0]}],
              "prompt": "a photo of a dog left of a cat"}]
    for i, m in enumerate(metas):
        (out / f"{i:05d}" / "samples").mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (32, 32), (153, 153, 153)).save(out / f"{i:05d}" / "samples" / f"{j:04d}.png")
        (out / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(m) + "\n")
    s = score_layout(str(out), FixedEvaluator(), progress=False)
    # by hand: single_object 2/2; two_object 1/2; colors 1/2; position: the dog is right of the cat -> 0/2
    assert s["tasks"] == {"colors": 0.5, "position": 0.0, "single_object": 1.0, "two_object": 0.5}
    assert s["overall"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert s["correct_images"] == pytest.approx(4 / 8) and s["correct_prompts"] == pytest.approx(3 / 4)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == 8 and set(rows[0]) >= {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert rows[0]["filename"] == os.path.join("00000", "samples", "0000.png")
    page = (out / "report.html").read_text()
    assert page.count('class="card fail"') == 4 and "00003/samples/0000.png" in page
    assert json.load(open(out / "summary.json"))["overall"] == s["overall"]


def test_summary_counts_a_prompt_correct_when_any_image_is():
    rows = [{"tag": "counting", "correct": c, "metadata": m} for c, m in [(False, "a"), (True, "a"), (False, "b")]]
    s = summarize_geneval(rows)
    assert s["correct_prompts"] == 0.5 and s["correct_images"] == pytest.approx(1 / 3)


def test_cli_end_to_end_with_tiny_mask2former_and_clip(tiny_sd3_dir, tmp_path, capsys):
    from flowalign.cli import main
    from flowalign.testing import save_tiny_mask2former, save_tiny_open_clip

    meta = tmp_path / "meta.jsonl"
    rows = first_per_task(read_metadata(METADATA_FILE))[:3]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m2f, clip = save_tiny_mask2former(tmp_path / "m2f"), save_tiny_open_clip(tmp_path / "clip")
    out = tmp_path / "run"
    args = ["eval", "geneval", "--model", tiny_sd3_dir, "--metadata", str(meta), "--out", str(out), "--detector", m2f,
            "--clip", clip, "--images-per-prompt", "2", "--steps", "2", "--guidance", "1", "--device", "cpu",
            "--max-sequence-length", "16"]
    assert main(args) == 0
    assert "GenEval overall" in capsys.readouterr().out
    s = json.load(open(out / "summary.json"))
    assert s["n_images"] == 6 and s["n_prompts"] == 3 and 0.0 <= s["overall"] <= 1.0
    first = (out / "results.jsonl").read_text()
    # --score-only re-scores the same images to the same results
    assert main(["eval", "geneval", "--score-only", str(out), "--detector", m2f, "--clip", clip, "--device", "cpu"]) == 0
    assert (out / "results.jsonl").read_text() == first
    assert main(["eval", "geneval", "--score-only", str(out), "--detector", m2f, "--device", "cpu"]) == 2
    assert "--clip is missing" in capsys.readouterr().err
    # the same settings finish the folder (nothing left to generate); other ones are refused
    assert json.load(open(out / "generation.json"))["seed"] == 0
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--seed", "3"]) == 2
    assert "other settings (seed: 0 there, 3 now)" in capsys.readouterr().err
    # a typo in --model records nothing: the corrected call is not refused
    fresh = tmp_path / "fresh"
    bad = ["eval", "geneval", "--model", str(tmp_path / "typo"), "--metadata", str(meta), "--out", str(fresh),
           "--detector", m2f, "--clip", clip, "--device", "cpu"]
    assert main(bad) == 2 and not (fresh / "generation.json").exists()


def test_shapes_detector_scores_the_testbed_layout(sd3_policy, tmp_path):
    from flowalign.evaluation.shapes import HELDOUT_FILE

    metas = read_metadata(HELDOUT_FILE)[:2]
    generate_layout(sd3_policy, metas, str(tmp_path), images_per_prompt=1, num_steps=2, guidance=1.0,
                    progress=False)
    s = score_layout(str(tmp_path), ShapesEvaluator(), progress=False, report=False)
    assert s["n_images"] == 2 and not (tmp_path / "report.html").exists()
