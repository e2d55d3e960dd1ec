import json

from benchmarks.speed import rollout


def test_rollout_benchmark_runs_and_saves(tmp_path):
    out = tmp_path / "r.json"
    res = rollout.main(["--steps", "2", "--batch", "2", "--repeats", "1", "--layers", "1", "--heads", "2",
                        "--head-dim", "8", "--max-sequence-length", "8", "--lora-rank", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["ratio_flowalign_over_diffusers"] == res["ratio_flowalign_over_diffusers"] > 0
    assert saved["ratio_lora_merged_over_base"] > 0 and saved["ratio_lora_adapter_over_base"] > 0
