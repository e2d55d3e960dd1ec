"""GenEval's rules at their boundaries, clause by clause, with the verdict's counts and reasons:
the details the mutation audit (issue 26, `make mutation`) found no test pinning down."""

import pytest

from reward_models.geneval_rules import Detection, evaluate, relative_position, require_clauses, summarize


def box(cx, cy, w=0.0, h=0.0):
    return Detection((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 0.99)


def test_summarize_is_the_unweighted_mean_of_task_accuracies():
    res = [{"tag": "b", "correct": True}, {"tag": "a", "correct": 1}, {"tag": "a", "correct": 0},
           {"tag": "a", "correct": True}]
    out = summarize(res)
    assert out == {"overall": pytest.approx((2 / 3 + 1) / 2), "tasks": {"a": pytest.approx(2 / 3), "b": 1.0},
                   "n_images": 4}
    assert list(out["tasks"]) == ["a", "b"]
    assert summarize([]) == {"overall": 0.0, "tasks": {}, "n_images": 0}


def test_require_clauses_refuses_missing_short_and_bare_metadata():
    good = [{"prompt": "a cat", "include": [{"class": "cat", "count": 1}]}]
    require_clauses(good, 1, "geneval")
    with pytest.raises(ValueError, match="one row per image"):
        require_clauses(None, 1, "geneval")
    with pytest.raises(ValueError, match="one row per image"):
        require_clauses(good, 2, "geneval")
    with pytest.raises(ValueError, match="'a dog' without GenEval clauses"):
        require_clauses(good + [{"prompt": "a dog"}], 2, "geneval")


@pytest.mark.parametrize("a, want", [
    ((1, 8, 11, 8), {"below"}),            # dx exactly 0.5: not right of
    ((-11, 8, -1, 8), {"below"}),          # dx exactly -0.5: not left of
    ((8, 1, 8, 11), {"right of"}),         # dy exactly 0.5: not below
    ((8, -11, 8, -1), {"right of"}),       # dy exactly -0.5: not above
    ((1 + 1e-9, 8, 11 + 1e-9, 8), {"below"}),  # float32 boxes: 1 + 1e-9 is 1, so dx stays 0.5
    ((-3.5, -5, 6.5, -5), set()),          # offset 1.5, margin 1: revised 0.5, and 0.5 / 1.5 < 0.5
    ((0.001, 0, 0.001, 0), {"right of"}),  # revised exactly float32(1e-3): not "too close"
    ((0.0005, 0, 0.0005, 0), set()),       # below 1e-3 in every axis (one of them exactly 0): too close
])
def test_relative_position_at_its_boundaries(a, want):
    ref = Detection((0, 0, 0, 0), 0.99) if a[1] != -5 else Detection((0, -5, 0, -5), 0.99)
    assert relative_position(Detection(a, 0.99), ref) == want


def test_verdict_counts_and_reasons_clause_by_clause():
    cat, dog = box(10, 10, 4, 4), box(40, 10, 4, 4)
    meta = {"include": [{"class": "cat", "count": 1, "color": "red"},
                        {"class": "dog", "count": 1, "position": ["right of", 0]}],
            "exclude": [{"class": "bird", "count": 1}]}
    seen = []

    def colour(det, cls):
        seen.append((det, cls))
        return "red"

    v = evaluate({"cat": [cat], "dog": [dog]}, meta, colour)
    assert (v.correct, v.clauses, v.satisfied, v.reasons) == (True, 5, 5, [])
    assert seen == [(cat, "cat")] and v.partial == 1.0
    # a blue cat: the colour fails, so the dog has no target
    v = evaluate({"cat": [cat], "dog": [dog]}, meta, lambda d, c: "blue")
    assert (v.correct, v.clauses, v.satisfied) == (False, 5, 3)
    assert v.reasons == ["expected red cat>=1, found 0", "no target for dog to be right of"]
    # no cat at all: the colour clause fails without a classifier call; a bird is excluded
    v = evaluate({"dog": [dog], "bird": [box(0, 0, 1, 1)]}, meta)
    assert v.reasons == ["expected cat>=1, found 0", "no cat to check the colour of",
                         "no target for dog to be right of", "expected bird<1, found 1"]
    assert (v.clauses, v.satisfied, v.partial) == (5, 1, 0.2)
    # no dog: its position cannot be checked
    v = evaluate({"cat": [cat]}, {"include": meta["include"][1:]})
    assert v.reasons == ["expected dog>=1, found 0", "no dog to check the position of"] and v.clauses == 2
    # the dog left of the cat
    v = evaluate({"cat": [cat], "dog": [box(0, 10, 4, 4)]}, meta, colour)
    assert v.reasons == ["expected dog right of target, found ['left of']"]
    with pytest.raises(ValueError, match="color_fn"):
        evaluate({"cat": [cat]}, {"include": [{"class": "cat", "count": 1, "color": "red"}]})


def test_a_failed_count_is_no_target_even_with_some_objects_found():
    """Two cats wanted, one found: the clause fails, and a later position clause has no target."""
    meta = {"include": [{"class": "cat", "count": 2}, {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    v = evaluate({"cat": [box(10, 10, 4, 4)], "dog": [box(40, 10, 4, 4)]}, meta)
    assert v.reasons == ["expected cat>=2, found 1", "no target for dog to be right of"]


def test_exclude_only_metadata_and_the_counting_threshold():
    v = evaluate({"cat": [box(1, 1)]}, {"exclude": [{"class": "cat", "count": 2}]})
    assert (v.correct, v.clauses) == (True, 1)
    half = [Detection((0, 0, 1, 1), 0.5)]
    assert evaluate({"cat": half}, {"include": [{"class": "cat", "count": 1}]}).correct
    assert not evaluate({"cat": half}, {"tag": "counting", "include": [{"class": "cat", "count": 1}]}).correct
