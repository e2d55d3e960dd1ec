"""Held-out evaluation during training: sharding over processes, the per-task summary, and the
hook's lines in metrics.jsonl."""

import json

import pytest

from flowalign.config import load_config
from flowalign.evaluation import evaluate_prompts, shard, summarize_scores
from flowalign.trainer import Trainer

from .test_train import overrides

ROWS = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {"tag": "counting", "include": [{"class": "square", "count": 2}], "prompt": "a photo of two squares"},
        {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "red"}],
         "prompt": "a photo of a red triangle"}]


def test_shards_cover_every_item_in_order_with_padding():
    for n, world in [(7, 2), (6, 3), (1, 2), (5, 1)]:
        parts = [shard(n, r, world) for r in range(world)]
        flat = [i for mine in parts for i in mine]
        assert len({len(m) for m in parts}) == 1 and flat[:n] == list(range(n))
        assert all(i == n - 1 for i in flat[n:])


def test_summary_is_per_task_means_and_their_unweighted_mean():
    s = summarize_scores([1, 0, 1, 1, 0], ["a", "a", "b", "b", "c"])
    assert s["eval/a"] == 0.5 and s["eval/b"] == 1.0 and s["eval/c"] == 0.0
    assert s["eval/overall"] == pytest.approx(0.5) and s["eval/reward_mean"] == pytest.approx(0.6)
    assert "eval/overall" not in summarize_scores([0.2, 0.4], [None, None])


def test_evaluation_is_batch_size_invariant(sd3_policy):
    """Each image's noise comes from its prompt's seed alone, so batching changes no image beyond the
    float noise of batched kernels (about 1e-6 per pixel here). The reward is a smooth function of the
    pixels: a discontinuous one (JPEG size, a uint8 rounding) turns that noise into a step, while noise
    that depended on the batch would change the images, and the scores, by orders of magnitude more."""

    def mean_and_spread(images, prompts, **context):
        return images.float().mean(dim=(1, 2, 3)) + images.float().std(dim=(1, 2, 3))

    kw = dict(images_per_prompt=2, num_steps=2, guidance=1.0, seed=5, height=32, width=32)
    a = evaluate_prompts(sd3_policy, ROWS, mean_and_spread, batch_size=1, **kw)
    b = evaluate_prompts(sd3_policy, ROWS, mean_and_spread, batch_size=6, **kw)
    assert a == pytest.approx(b, abs=1e-5)
    other_seed = evaluate_prompts(sd3_policy, ROWS, mean_and_spread, batch_size=6, **{**kw, "seed": 6})
    assert abs(other_seed["eval/reward_mean"] - a["eval/reward_mean"]) > 1e-4  # ten times the tolerance: it sees other noise


def test_training_logs_held_out_evaluations(tiny_sd3_dir, tmp_path, prompts_file):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_sd3_dir, str(out), prompts_file, **{
        "run.sample_every": 0, "eval.every": 1, "eval.prompts": str(heldout), "eval.images_per_prompt": 2,
        "eval.batch_size": 4}))
    Trainer(cfg).train()
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    evals = [m for m in lines if "eval/overall" in m]
    assert [m["iteration"] for m in evals] == [0, 1, 2]
    for m in evals:
        tasks = [m[f"eval/{t}"] for t in ("colors", "counting", "single_object")]
        assert m["eval/overall"] == pytest.approx(sum(tasks) / 3)
        assert all(v in (0.0, 0.5, 1.0) for v in tasks)  # strict correctness of 2 images per prompt


def test_bad_eval_settings_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="eval.every"):
        load_config(None, ["eval.every=-1"])
    with pytest.raises(FileNotFoundError, match="eval.prompts="):
        Trainer(load_config(None, ["eval.every=1", f"eval.prompts={tmp_path / 'missing.jsonl'}",
                                   "model.path=flowalign/shapes/model", "run.device=cpu",
                                   f"run.output_dir={tmp_path / 'r'}"]))
