"""Real 2-process CPU runs (torchrun, gloo backend)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
    from flowalign.algorithms.flow_grpo import FlowGRPOConfig

    single = group_advantages(torch.tensor(dist_worker.REWARDS), torch.tensor(dist_worker.GROUPS),
                              std_scope=FlowGRPOConfig().std_scope)  # the batch std: over both processes
    # prompt 1's group (samples 4..7) is split 2 + 2 over the processes
    assert torch.equal(torch.tensor(ranks[0]["local"] + ranks[1]["local"]), single)


def test_two_process_training_run(tiny_sd3_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\nthree triangles\n")
    out = tmp_path / "run"
    # 3 prompts x 4 images = 12 samples, 6 per process: one group spans both processes
    heldout = tmp_path / "heldout.jsonl"  # 3 prompts x 1 image: shards of 2 + 2 with one padded item
    heldout.write_text("".join(json.dumps({"prompt": p, "tag": t}) + "\n" for p, t in
                               [("a red circle", "a"), ("two squares", "b"), ("a blue triangle", "b")]))
    args = overrides(tiny_sd3_dir, str(out), str(prompts), **{
        "algorithm.prompts_per_iteration": 3, "run.max_iterations": 2, "run.sample_every": 0, "eval.every": 2,
        "eval.prompts": str(heldout), "eval.images_per_prompt": 1, "eval.reward": "jpeg_compressibility"})
    _torchrun("-m", "flowalign.cli", "train", "-", *args)
    all_lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    lines = [m for m in all_lines if "reward_mean" in m]
    assert [m["iteration"] for m in lines] == [1, 2]
    evals = [m for m in all_lines if "eval/reward_mean" in m]
    assert [m["iteration"] for m in evals] == [0, 2]
    # the evaluation gathered over 2 processes equals the single-process one (iteration 0: base weights)
    from flowalign.evaluation import evaluate_prompts
    from flowalign.policies import SD3Policy
    from reward_models import build_reward

    pol = SD3Policy.from_pretrained(tiny_sd3_dir, max_sequence_length=8)
    rows = [json.loads(x) for x in open(heldout)]
    single = evaluate_prompts(pol, rows, build_reward("jpeg_compressibility"), images_per_prompt=1, num_steps=3,
                              guidance=2.0, seed=4321, batch_size=32, height=32, width=32)
    assert evals[0]["eval/reward_mean"] == pytest.approx(single["eval/reward_mean"], abs=1e-5)
    assert evals[0]["eval/overall"] == pytest.approx(single["eval/overall"], abs=1e-5)
    assert abs(lines[0]["first_ratio"] - 1) < 1e-5
    assert lines[0]["nfe_rollout"] == 12 * 3 * 2  # counted over both processes
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert sorted(os.listdir(out / "checkpoints" / "iter_000002")) == [
        "config.yaml", "optimizer.pt", "rng_0.pt", "rng_1.pt", "scheduler.pt", "state.json", "trainable.safetensors"]
