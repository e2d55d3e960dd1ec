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
