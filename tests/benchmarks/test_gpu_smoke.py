"""The GPU smoke script runs end to end on a CPU with a tiny model, and says clearly when CUDA is missing."""

import json

import pytest
import torch

from benchmarks.speed.gpu_smoke import main


def test_smoke_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    assert main(["--device", "cpu", "--dtype", "float32", "--backends", "sdpa,math", "--small", "--batch", "2",
                 "--steps", "3", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ok"] and set(res["backends"]) == {"sdpa", "math"}
    assert res["backends"]["sdpa"]["velocity_rel_err_vs_math"] < 1e-4
    assert abs(res["train"]["first_ratio"] - 1) < 1e-5 and res["train"]["nfe_rollout"] == 8 * 6 * 2
    fs = res["fsdp2"]  # FSDP2 over a one-process gloo group on the CPU
    assert fs["sharded"] and fs["full_shapes"] and fs["fp32_step_max_abs_diff"] < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_missing_cuda_is_one_sentence():
    with pytest.raises(SystemExit, match="no CUDA device"):
        main([])
