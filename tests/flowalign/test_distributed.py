"""Real 2-process CPU runs (torchrun, gloo backend)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from flowalign.advantages import group_advantages
from tests.flowalign import dist_worker
from tests.flowalign.test_train import overrides

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res


def test_advantages_with_groups_across_two_processes_equal_single_process(tmp_path):
    _torchrun(str(ROOT / "tests" / "flowalign" / "dist_worker.py"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)
    single = group_advantages(torch.tensor(dist_worker.REWARDS), torch.tensor(dist_worker.GROUPS))
    # prompt 1's group (samples 4..7) is split 2 + 2 over the processes
    assert torch.equal(torch.tensor(ranks[0]["local"] + ranks[1]["local"]), single)


def test_two_process_training_run(tiny_sd3_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\nthree triangles\n")
    out = tmp_path / "run"
    # 3 prompts x 4 images = 12 samples, 6 per process: one group spans both processes
    args = overrides(tiny_sd3_dir, str(out), str(prompts), **{"algorithm.prompts_per_iteration": 3,
                                                               "run.max_iterations": 2, "run.sample_every": 0})
    _torchrun("-m", "flowalign.cli", "train", "-", *args)
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [m["iteration"] for m in lines] == [1, 2]
    assert abs(lines[0]["first_ratio"] - 1) < 1e-5
    assert lines[0]["nfe_rollout"] == 12 * 3 * 2  # counted over both processes
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert sorted(os.listdir(out / "checkpoints" / "iter_000002")) == [
        "optimizer.pt", "rng_0.pt", "rng_1.pt", "scheduler.pt", "state.json", "trainable.safetensors"]
