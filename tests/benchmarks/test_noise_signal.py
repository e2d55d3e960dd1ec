"""The noise-signal diagnostic: the linear-share estimator against closed forms, and one tiny run."""

import pytest
import torch

from benchmarks.shapes.noise_signal import linear_share, main


def test_linear_share_closed_forms():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(20000, 16, generator=g, dtype=torch.float64)
    u = torch.zeros(16, dtype=torch.float64)
    u[3] = 1.0
    # a reward that is exactly linear in one noise direction: |E[A eps]|^2 = 1
    assert linear_share(eps @ u * 2 + 5, eps) == pytest.approx(1.0, abs=0.03)
    # half of the variance linear (plus independent noise of equal variance): 1/2
    other = torch.randn(20000, generator=g, dtype=torch.float64)
    assert linear_share(eps @ u + other, eps) == pytest.approx(0.5, abs=0.03)
    # a reward the noise does not move linearly (|eps_3|): 0, and the D / M bias is removed
    assert linear_share((eps @ u).abs(), eps) == pytest.approx(0.0, abs=0.03)
    assert linear_share(torch.full((20000,), 0.5), eps) == 0.0


def test_runs_on_the_committed_model(tmp_path):
    out = tmp_path / "ns.json"
    res = main(["--samples", "8", "--prompts", "1", "--steps", "0,8", "--out", str(out)])
    assert out.exists() and [r["step"] for r in res["steps"]] == [0, 8]
    for row in res["steps"]:
        assert 0 <= row["decided_share"] <= 1 and row["mean_reward_std"] >= 0
    soft = main(["--samples", "4", "--prompts", "1", "--steps", "1", "--reward", "shapes_soft", "--out", str(out)])
    assert soft["reward"] == "shapes_soft" and soft["steps"][0]["mean_reward_std"] > 0  # a smooth reward varies
    with pytest.raises(SystemExit, match="--steps"):
        main(["--steps", "10"])
