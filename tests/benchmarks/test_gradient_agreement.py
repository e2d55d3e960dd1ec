"""The gradient-agreement diagnostic: its cosine statistic by hand, and one tiny measurement."""

import math

import pytest
import torch

from benchmarks.shapes.gradient_agreement import main, mean_cosine


def test_mean_cosine_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    m, se = mean_cosine([e1, 3 * e1, -e1])  # pairs: +1, -1, -1
    assert m == pytest.approx(-1 / 3)
    assert se == pytest.approx(torch.tensor([1.0, -1.0, -1.0]).std().item() / math.sqrt(3))
    assert mean_cosine([e1, e2])[0] == pytest.approx(0.0)


def test_measurement_runs_on_the_committed_model(tmp_path):
    out = tmp_path / "ga.json"
    res = main(["--batches", "2", "--out", str(out), "--variant",
                "tiny=sampler.num_steps=2;algorithm.group_size=2;algorithm.prompts_per_iteration=1"])
    r = res["tiny"]
    assert r["samples_per_batch"] == 2 and out.exists()
    for mode in ("fresh_prompts", "same_prompts"):
        assert -1 <= r[mode]["mean_cosine"] <= 1 and 0 <= r[mode]["nonzero_advantage_share"] <= 1
    with pytest.raises(SystemExit):
        main(["--batches", "1"])
