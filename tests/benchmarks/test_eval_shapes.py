import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from flowalign.cli import main
from flowalign.evaluation.shapes import first_per_task, load_prompts
from flowalign.policies.sd3 import DTYPE_KWARG
from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]


def test_eval_shapes_cli_smoke(tiny_sd3_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "shapes", "--model", tiny_sd3_dir, "--prompts", "held-out", "--per-task", "1",
               "--images-per-prompt", "2", "--steps", "2", "--max-sequence-length", "8", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 12 and set(summary["tasks"]) == {
        "single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert 0 <= summary["overall"] <= 1
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "tag", "correct", "partial", "reasons"} <= set(rows[0])
    assert (out / "grid.png").exists()


def test_prompt_selection():
    held = load_prompts("held-out")
    assert len(held) == 72 and len(first_per_task(held, 2)) == 12
    assert load_prompts(str(ROOT / "flowalign/shapes/prompts/train.jsonl"))[0] == load_prompts("train")[0]


def test_committed_model_loads_in_a_stock_pipeline_and_generates():
    assert os.path.isfile(os.path.join(DEFAULT_MODEL, "model_index.json"))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DEFAULT_MODEL) for f in fs)
    assert size <= 10 * 1024 * 1024, size
    # the weights are stored in fp16; on a CPU load them in fp32 (on a GPU fp16 is the natural choice)
    pipe = StableDiffusion3Pipeline.from_pretrained(DEFAULT_MODEL, **{DTYPE_KWARG: torch.float32})
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a red circle", num_inference_steps=4, guidance_scale=4.0, height=32, width=32,
               max_sequence_length=8, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32) and out.std() > 0.05


def test_learn_benchmark_smoke(tiny_sd3_dir, tmp_path):
    from benchmarks.shapes import learn

    res = learn.main(["--minutes", "0.01", "--eval-every", "0.005", "--images-per-prompt", "1", "--curve-images", "1",
                      "--train-images-per-prompt", "1", "--fresh-images", "1", "--out", str(tmp_path / "learn"),
                      f"model.path={tiny_sd3_dir}",
                      "model.max_sequence_length=8",
                      "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.prompts_per_iteration=2",
                      "algorithm.train_batch_size=4", "lora.rank=2"])
    assert res["iterations"] >= 1 and "overall" in res["before"] and "overall" in res["after"]
    # held-out has as many prompts per task, so the paired mean over prompts is the gain of the task mean
    assert res["gain_paired"] == pytest.approx(res["gain_overall"], abs=1e-9)
    assert res["gain_stderr"] >= 0 and "+-" in (tmp_path / "learn" / "table.md").read_text()
    train = res["train_prompts"]  # the config's 240 training prompts, scored before and after on the same seeds
    assert train["prompts"].endswith("train.jsonl") and train["images_per_prompt"] == 1
    assert train["gain_paired"] == pytest.approx(train["after"] - train["before"], abs=1e-9)
    assert (tmp_path / "learn" / "flow_grpo" / "eval_train_000.0min" / "results.jsonl").exists()
    assert (tmp_path / "learn" / "curve.png").exists() and (tmp_path / "learn" / "learn.json").exists()
    fresh = res["fresh_seed"]  # the final weights against the base on seed 7, paired
    assert fresh["seed"] == 7 and fresh["gain_paired"] == pytest.approx(fresh["after"] - fresh["before"], abs=1e-9)
    assert (tmp_path / "learn" / "flow_grpo" / "eval_fresh_final" / "results.jsonl").exists()
    # the base is scored before any training (written before the pre-training held-out evaluation)
    run = tmp_path / "learn" / "flow_grpo"
    assert os.path.getmtime(run / "eval_fresh_base" / "results.jsonl") <= \
        os.path.getmtime(run / "eval_000.0min" / "results.jsonl")
    assert (tmp_path / "learn" / "flow_grpo" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_learn_benchmark_compares_algorithms(tiny_sd3_dir, tmp_path):
    from benchmarks.shapes import learn

    common = ["--minutes", "0.005", "--eval-every", "1", "--images-per-prompt", "1", "--curve-images", "1",
              "--train-images-per-prompt", "0", "--fresh-images", "1", f"model.path={tiny_sd3_dir}", "model.max_sequence_length=8",
              "algorithm.prompts_per_iteration=2", "lora.rank=2"]
    res = learn.main(["--algo", "flow_grpo,dense_grpo", "--out", str(tmp_path / "a"), *common, "sampler.num_steps=2",
                      "algorithm.group_size=2", "algorithm.train_batch_size=4"])
    r = res["results"]
    assert set(r) == {"flow_grpo", "dense_grpo"}
    # the base model is evaluated once and shared; DenseGRPO's completions cost more NFE per iteration
    assert r["flow_grpo"]["before"] == r["dense_grpo"]["before"]
    assert r["flow_grpo"]["train_prompts"] is None  # --train-images-per-prompt 0
    assert r["dense_grpo"]["nfe_per_iteration"] > r["flow_grpo"]["nfe_per_iteration"] > 0
    assert "| dense_grpo |" in (tmp_path / "a" / "table.md").read_text()
    res = learn.main(["--algo", "branch_grpo_mix", "--out", str(tmp_path / "b"), *common, "sampler.num_steps=3",
                      "algorithm.split_steps=[1]", "algorithm.group_size=2"])
    assert res["results"]["branch_grpo_mix"]["iterations"] >= 1 and (tmp_path / "b" / "curve.png").exists()
    # --seeds: one run per training seed, each with its final weights, and the mean fresh-seed gain over them
    res = learn.main(["--algo", "nft", "--seeds", "2", "--out", str(tmp_path / "c"), *common,
                      "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.train_batch_size=4"])
    r = res["results"]
    assert set(r) == {"nft/seed0", "nft/seed1"} and [r[k]["seed"] for k in sorted(r)] == [0, 1]
    for k in ("seed0", "seed1"):
        assert (tmp_path / "c" / "nft" / k / "lora" / "pytorch_lora_weights.safetensors").exists()
    s = res["over_seeds"]["nft"]
    assert s["runs"] == 2 and s["gain_paired"] == pytest.approx(
        (r["nft/seed0"]["fresh_seed"]["gain_paired"] + r["nft/seed1"]["fresh_seed"]["gain_paired"]) / 2)
    g0, g1 = r["nft/seed0"]["fresh_seed"]["gain_paired"], r["nft/seed1"]["fresh_seed"]["gain_paired"]
    assert s["seed_stderr"] == pytest.approx(abs(g0 - g1) / 2)  # two runs: sample std / sqrt(2) = |g0 - g1| / 2
    assert s["combined_stderr"] == pytest.approx((s["gain_stderr"] ** 2 + s["seed_stderr"] ** 2) ** 0.5)
    assert "| nft | 2 |" in (tmp_path / "c" / "table.md").read_text()
    # a scoreboard continues where it stopped: finished runs are reused, not trained again
    lora = tmp_path / "c" / "nft" / "seed1" / "lora" / "pytorch_lora_weights.safetensors"
    stamp = os.path.getmtime(lora)
    os.remove(tmp_path / "c" / "table.md")
    again = learn.main(["--algo", "nft", "--seeds", "2", "--out", str(tmp_path / "c"), *common,
                        "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.train_batch_size=4"])
    assert again["results"] == json.loads(json.dumps(r)) and os.path.getmtime(lora) == stamp
    assert "| nft | 2 |" in (tmp_path / "c" / "table.md").read_text()
    # a run stopped before its result was kept is trained again; its folder is moved aside, not deleted
    os.remove(tmp_path / "c" / "completed" / "nft_seed1.json")
    again = learn.main(["--algo", "nft", "--seeds", "2", "--out", str(tmp_path / "c"), *common,
                        "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.train_batch_size=4"])
    assert (tmp_path / "c" / "nft" / "seed1.unfinished" / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert os.path.getmtime(lora) > stamp and (tmp_path / "c" / "completed" / "nft_seed1.json").exists()
    assert again["results"]["nft/seed0"] == json.loads(json.dumps(r["nft/seed0"]))
    # other settings would mix two scoreboards: refused, naming the setting
    with pytest.raises(SystemExit, match="minutes"):
        learn.main(["--algo", "nft", "--seeds", "2", "--out", str(tmp_path / "c"), "--minutes", "0.01", *common[2:],
                    "sampler.num_steps=2", "algorithm.group_size=2", "algorithm.train_batch_size=4"])
    with pytest.raises(SystemExit, match="algorithm.group_size"):  # as does a config changed since
        learn.main(["--algo", "nft", "--seeds", "2", "--out", str(tmp_path / "c"), *common,
                    "sampler.num_steps=2", "algorithm.group_size=4", "algorithm.train_batch_size=4"])


@pytest.mark.slow
def test_demo_config_trains_the_committed_model(tmp_path):
    """Two iterations of the shipped demo config on the committed model (about a minute)."""
    from flowalign.config import load_config
    from flowalign.trainer import Trainer

    cfg = load_config(str(ROOT / "configs/shapes/flow_grpo.yaml"),
                      [f"model.path={DEFAULT_MODEL}", f"data.train_prompts={ROOT}/flowalign/shapes/prompts/train.jsonl",
                       f"run.output_dir={tmp_path}/run", "run.max_iterations=2", "run.sample_every=2",
                       "run.progress=false"])
    Trainer(cfg).train()
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(lines) == 2 and 0 < lines[0]["reward_mean"] <= 1 and abs(lines[0]["first_ratio"] - 1) < 1e-5
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_eval_shapes_with_a_lora_changes_the_images(tiny_sd3_dir, tmp_path, capsys):
    from peft.utils import get_peft_model_state_dict

    from flowalign.policies import load_policy

    policy = load_policy(tiny_sd3_dir)
    policy.add_lora(rank=4, alpha=8)
    with torch.no_grad():  # a LoRA that does something (peft initialises B to zero)
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    lora = tmp_path / "lora"
    StableDiffusion3Pipeline.save_lora_weights(str(lora), transformer_lora_layers=get_peft_model_state_dict(policy.transformer))
    args = ["eval", "shapes", "--model", tiny_sd3_dir, "--per-task", "1", "--images-per-prompt", "1", "--steps", "2",
            "--max-sequence-length", "8", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "base")]) == 0
    assert main([*args, "--lora", str(lora), "--out", str(tmp_path / "tuned")]) == 0
    base = (tmp_path / "base" / "grid.png").read_bytes()
    assert (tmp_path / "tuned" / "grid.png").read_bytes() != base
    capsys.readouterr()
    assert main([*args, "--lora", str(tmp_path), "--out", str(tmp_path / "bad")]) == 2
    assert "has no pytorch_lora_weights.safetensors" in capsys.readouterr().err


def test_learn_over_seeds_standard_errors_by_hand():
    """The scoreboard's mean over training seeds: the prompt-noise s.e., the between-seed s.e. and
    both combined, on three hand-made runs (gains 0.07, 0.01, 0.04; prompt s.e. 0.03, 0.02, 0.02)."""
    from benchmarks.shapes import learn

    runs = {f"nft/seed{i}": {"fresh_seed": {"gain_paired": g, "gain_stderr": e}}
            for i, (g, e) in enumerate([(0.07, 0.03), (0.01, 0.02), (0.04, 0.02)])}
    runs["flow_grpo"] = {"fresh_seed": {"gain_paired": -0.01, "gain_stderr": 0.01}}
    s = learn.over_seeds(runs, ["nft", "flow_grpo"])
    assert s["nft"]["gain_paired"] == pytest.approx(0.04)
    assert s["nft"]["gain_stderr"] == pytest.approx((0.03 ** 2 + 0.02 ** 2 + 0.02 ** 2) ** 0.5 / 3)
    # sample variance of (0.07, 0.01, 0.04) is (0.03^2 + 0.03^2 + 0) / 2 = 9e-4; / 3 runs -> 3e-4
    assert s["nft"]["seed_stderr"] == pytest.approx(3e-4 ** 0.5)
    assert s["nft"]["combined_stderr"] == pytest.approx((s["nft"]["gain_stderr"] ** 2 + 3e-4) ** 0.5)
    assert s["flow_grpo"]["runs"] == 1 and s["flow_grpo"]["seed_stderr"] is None
    assert s["flow_grpo"]["combined_stderr"] is None
