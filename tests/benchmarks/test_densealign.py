import pytest

from benchmarks.densealign.winrate import clause_judge, net_win_rate, pair_outcome


def test_pair_outcome_cancels_position_bias():
    assert pair_outcome("first", "second") == 1  # A preferred in both orders
    assert pair_outcome("second", "first") == -1  # B preferred in both orders
    assert pair_outcome("first", "first") == 0  # a judge that always picks the first image: tie
    assert pair_outcome("second", "second") == 0
    assert pair_outcome("tie", "second") == 0
    with pytest.raises(ValueError, match="verdict 'left'"):
        pair_outcome("left", "first")


def test_net_win_rate_and_bootstrap_interval():
    outcomes = [1] * 6 + [-1] * 2 + [0] * 2
    r = net_win_rate(outcomes, n_boot=4000, seed=0)
    assert r["net_win_rate"] == pytest.approx(0.4)
    assert (r["wins"], r["losses"], r["ties"], r["pairs"]) == (6, 2, 2, 10)
    lo, hi = r["ci"]
    assert lo < 0.4 < hi and -1 <= lo and hi <= 1
    assert net_win_rate(outcomes, n_boot=4000, seed=0)["ci"] == r["ci"]  # seeded
    assert net_win_rate([1] * 5)["ci"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="no pairs"):
        net_win_rate([])


def test_clause_judge():
    assert clause_judge(0.75, 0.5) == "first"
    assert clause_judge(0.5, 0.75) == "second"
    assert clause_judge(0.5, 0.5) == "tie"


def test_dense_captions_are_satisfiable_and_parse():
    from benchmarks.densealign.shapes import dense_captions
    from benchmarks.shapes.render import render_prompt

    rows = dense_captions(6, seed=1)
    assert len({r["prompt"] for r in rows}) == 6
    for i, r in enumerate(rows):
        _, scene = render_prompt(r, seed=i)  # raises if the caption cannot be drawn correctly
        assert len(scene) == 2


def test_densealign_cli_same_model_ties_everywhere(tiny_sd3_dir, tmp_path):
    import json

    from flowalign.cli import main

    out = tmp_path / "d"
    assert main(["eval", "densealign", "--model", tiny_sd3_dir, "--baseline", tiny_sd3_dir, "--num-prompts", "3",
                 "--images-per-prompt", "2", "--steps", "2", "--max-sequence-length", "8", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pairs"] == 6 and s["ties"] == 6 and s["net_win_rate"] == 0.0
    assert main(["eval", "densealign", "--judge", "qwen-vl", "--out", str(out)]) == 2
