"""GenEval's rules on hand-built detections."""

import pytest

from reward_models.geneval_rules import Detection, evaluate, relative_position, select_detections, summarize


def D(x, y, size=10.0, score=0.95, color=None):
    """A detection centred at (x, y)."""
    return Detection((x - size / 2, y - size / 2, x + size / 2, y + size / 2), score, color)


def test_threshold_is_03_and_09_for_counting():
    raw = {"cat": [D(10, 10, score=0.5), D(50, 50, score=0.95), D(90, 90, score=0.3)]}
    assert len(select_detections(raw, "single_object")["cat"]) == 2  # 0.3 itself is not > 0.3
    assert len(select_detections(raw, "counting")["cat"]) == 1
    assert select_detections({"cat": [D(1, 1, score=0.2)]}, "colors") == {}


def test_at_most_16_objects_highest_confidence_first():
    raw = {"dog": [D(i, i, score=0.4 + i / 100) for i in range(20)]}
    kept = select_detections(raw, "single_object")["dog"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.59) and kept[-1].score == pytest.approx(0.44)


def test_include_count():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}]}
    assert not evaluate({"cup": [D(0, 0), D(20, 0)]}, meta).correct
    assert evaluate({"cup": [D(0, 0), D(20, 0), D(40, 0)]}, meta).correct
    # exclude fails at >= 4 detections
    v = evaluate({"cup": [D(0, 0), D(20, 0), D(40, 0), D(60, 0)]}, meta)
    assert not v.correct and v.reasons == ["expected cup<4, found 4"]
    # a fourth below the counting threshold does not count
    assert evaluate({"cup": [D(0, 0), D(20, 0), D(40, 0), D(60, 0, score=0.85)]}, meta).correct


def test_colour_uses_the_top_count_detections():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    # the most confident car is blue: the red one is not looked at
    raw = {"car": [D(0, 0, score=0.9, color="blue"), D(30, 0, score=0.8, color="red")]}
    assert not evaluate(raw, meta).correct
    raw = {"car": [D(0, 0, score=0.7, color="blue"), D(30, 0, score=0.8, color="red")]}
    assert evaluate(raw, meta).correct


def test_colour_classifier_callback_is_used_when_detections_have_no_colour():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert evaluate({"car": [D(0, 0)]}, meta, color_fn=lambda det, cls: "red").correct
    with pytest.raises(ValueError, match="color_fn"):
        evaluate({"car": [D(0, 0)]}, meta)


def test_relative_position_margin_and_directions():
    # A at x=30, B at x=10, both 10 wide: offset 20, revised 20 - 0.1 * 20 = 18, dx = 0.9 -> right of
    assert relative_position(D(30, 10), D(10, 10)) == {"right of"}
    assert relative_position(D(10, 10), D(30, 10)) == {"left of"}
    assert relative_position(D(10, 40), D(10, 10)) == {"below"}  # y grows downwards
    assert relative_position(D(10, 0), D(10, 30)) == {"above"}
    # diagonal: offset (20, 20), revised (18, 18), norm 28.28 -> dx = dy = 0.636: two relations
    assert relative_position(D(30, 30), D(10, 10)) == {"right of", "below"}
    # shallow: offset (20, 8): revised (18, 6) / 21.54 -> dx 0.836, dy 0.279: only right of
    assert relative_position(D(30, 18), D(10, 10)) == {"right of"}
    # too close: |offset| 1.5 <= margin 0.1 * 20 = 2 -> no relation at all
    assert relative_position(D(11.5, 10), D(10, 10)) == set()


def test_position_clause():
    meta = {"tag": "position", "include": [{"class": "kite", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    assert evaluate({"kite": [D(10, 10)], "dog": [D(40, 10)]}, meta).correct
    v = evaluate({"kite": [D(40, 10)], "dog": [D(10, 10)]}, meta)
    assert not v.correct and "right of" in v.reasons[0]
    # no target: the kite is missing
    v = evaluate({"dog": [D(40, 10)]}, meta)
    assert not v.correct and v.reasons[-1] == "no target for dog to be right of"
    # every matched target is compared: a second kite is not looked at (top-1 only)
    assert evaluate({"kite": [D(10, 10, score=0.9), D(80, 10, score=0.5)], "dog": [D(40, 10)]}, meta).correct


def test_ties_take_the_official_order_and_equal_scores_both_count():
    meta = {"tag": "two_object", "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1}]}
    raw = {"a": [D(0, 0, score=0.5), D(10, 0, score=0.5)], "b": [D(30, 0, score=0.5)]}
    assert evaluate(raw, meta).correct
    kept = select_detections({"a": [D(0, 0, score=0.5, color="x"), D(10, 0, score=0.5, color="y")]}, "colors")
    # GenEval's argsort(scores)[::-1]: of two equal scores the later detection comes first
    assert [d.color for d in kept["a"]] == ["y", "x"]


def test_too_many_objects_for_exclude_and_partial_score():
    meta = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    raw = {"star": [D(i * 12, 0) for i in range(20)]}  # 20 detections, 16 kept: exclude fails
    v = evaluate(raw, meta)
    assert not v.correct and v.reasons == ["expected star<3, found 16"]
    assert v.clauses == 2 and v.satisfied == 1 and v.partial == 0.5
    meta = {"tag": "color_attr", "include": [{"class": "a", "count": 1, "color": "red"},
                                             {"class": "b", "count": 1, "color": "blue"}]}
    v = evaluate({"a": [D(0, 0, color="red")]}, meta)  # a red ok; b missing (and its colour)
    assert (v.clauses, v.satisfied) == (4, 2)


def test_summary_is_the_unweighted_mean_of_task_accuracies():
    rows = [{"tag": "counting", "correct": True}] * 3 + [{"tag": "counting", "correct": False}] + \
           [{"tag": "colors", "correct": False}]
    s = summarize(rows)
    # counting 3/4, colors 0/1 -> overall (0.75 + 0) / 2, not 3/5
    assert s == {"overall": 0.375, "tasks": {"colors": 0.0, "counting": 0.75}, "n_images": 5}
