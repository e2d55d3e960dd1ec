"""DenseAlignBench's protocol: a judge compares the images of model A and model B for each dense
caption twice, once with A shown first and once with B first, so a judge that prefers a position
cancels out. A pair counts as a win for A only if A wins in both orders, a loss only if B wins in
both, a tie otherwise. Net win rate = (wins - losses) / pairs, in [-1, 1], with a percentile
bootstrap confidence interval over pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VERDICTS = ("first", "second", "tie")


def pair_outcome(a_first: str, b_first: str) -> int:
    """+1 (A wins), -1 (B wins) or 0 from the judge's verdicts with A shown first and with B shown
    first; each verdict is 'first', 'second' or 'tie'."""
    for v in (a_first, b_first):
        if v not in VERDICTS:
            raise ValueError(f"verdict {v!r} is unknown; use one of {VERDICTS}.")
    a_wins = a_first == "first" and b_first == "second"
    b_wins = a_first == "second" and b_first == "first"
    return 1 if a_wins else -1 if b_wins else 0


def net_win_rate(outcomes: Sequence[int], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Outcomes (+1/0/-1 per pair) -> {net_win_rate, wins, losses, ties, pairs, ci: [lo, hi]}."""
    o = np.asarray(list(outcomes), dtype=np.int64)
    if o.size == 0:
        raise ValueError("no pairs to score.")
    if not np.isin(o, (-1, 0, 1)).all():
        raise ValueError("outcomes must be +1, 0 or -1.")
    rng = np.random.default_rng(seed)
    boots = o[rng.integers(0, o.size, size=(n_boot, o.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"net_win_rate": float(o.mean()), "wins": int((o == 1).sum()), "losses": int((o == -1).sum()),
            "ties": int((o == 0).sum()), "pairs": int(o.size), "ci": [float(lo), float(hi)],
            "confidence": 1 - alpha, "bootstrap": n_boot}


def clause_judge(score_first: float, score_second: float, margin: float = 1e-9) -> str:
    """The procedural judge of the shapes testbed: the image satisfying a larger share of the
    caption's clauses wins ('first' / 'second'), equal shares tie."""
    if score_first > score_second + margin:
        return "first"
    if score_second > score_first + margin:
        return "second"
    return "tie"
