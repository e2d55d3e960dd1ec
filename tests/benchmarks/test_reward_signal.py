import math

from benchmarks.shapes.captioner import auroc, grouped_auroc


def test_grouped_auroc_compares_images_of_one_prompt_only():
    # prompt a: correct 0.2 > incorrect 0.1; prompt b: correct 0.9 > incorrect 0.8 and tie 0.9 = 0.9.
    # Pooled, b's incorrect images outrank a's correct one; within prompts every comparison is a win or a tie.
    scores = [0.2, 0.1, 0.9, 0.8, 0.9]
    labels = [True, False, True, False, False]
    groups = ["a", "a", "b", "b", "b"]
    pooled = auroc([0.2, 0.9], [0.1, 0.8, 0.9])
    assert pooled == (1 + 0 + 0 + 1 + 1 + 0.5) / 6
    within, pairs = grouped_auroc(scores, labels, groups)
    assert pairs == 1 + 2 and within == (1 + 1 + 0.5) / 3


def test_grouped_auroc_ignores_groups_without_both_labels():
    within, pairs = grouped_auroc([0.1, 0.5, 0.3], [True, True, False], ["a", "a", "b"])
    assert pairs == 0 and math.isnan(within)
    within, pairs = grouped_auroc([0.1, 0.5, 0.3, 0.4], [True, True, False, True], ["a", "a", "b", "b"])
    assert pairs == 1 and within == 1.0  # group a (only correct images) adds no pair
