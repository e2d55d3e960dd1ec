"""The algorithm speed table: per-algorithm overrides reach only their algorithm, and one round of
two algorithms writes medians, phase timings and ratios."""

import json

from benchmarks.speed.algorithms import main, overrides_for


def test_prefixed_overrides_reach_only_their_algorithm():
    ov = ["run.seed=1", "dense_grpo:algorithm.completion_batch_size=512", "nft:optim.lr=1e-4",
          "model.path=a:b"]
    assert overrides_for("dense_grpo", ov) == ["run.seed=1", "algorithm.completion_batch_size=512", "model.path=a:b"]
    assert overrides_for("flow_grpo", ov) == ["run.seed=1", "model.path=a:b"]


def test_one_round_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "speed.json"
    import benchmarks.speed.algorithms as mod
    from benchmarks.shapes.learn import CONFIGS
    root = __import__("pathlib").Path(mod.__file__).resolve().parents[2]
    monkeypatch.setattr(mod, "CONFIGS", {k: str(root / v) for k, v in CONFIGS.items()})
    res = main(["--rounds", "1", "--algo", "flow_grpo,nft", "--out", str(out),
                f"model.path={root / 'flowalign/shapes/model'}",
                f"data.train_prompts={root / 'flowalign/shapes/prompts/train.jsonl'}",
                "algorithm.group_size=2", "algorithm.prompts_per_iteration=1", "sampler.num_steps=3",
                "flow_grpo:algorithm.train_batch_size=2", "nft:algorithm.train_batch_size=2", "eval.every=0"])
    saved = json.loads(out.read_text())
    assert saved["ratio_to_flow_grpo"]["flow_grpo"] == 1.0 and res["ratio_to_flow_grpo"]["nft"] > 0
    phases = saved["median_phase_seconds"]["nft"]
    assert set(phases) == {"rollout", "score", "update"} and all(v > 0 for v in phases.values())
    assert saved["nfe_per_iteration"]["flow_grpo"] > 0
