import pytest
import torch

from flowalign.evaluation.winrate import clause_judge, net_win_rate, pair_outcome


def test_pair_outcome_cancels_position_bias():
    assert pair_outcome("first", "second") == 1  # A preferred in both orders
    assert pair_outcome("second", "first") == -1  # B preferred in both orders
    assert pair_outcome("first", "first") == 0  # a judge that always picks the first image: tie
    assert pair_outcome("second", "second") == 0
    assert pair_outcome("tie", "second") == 0
    with pytest.raises(ValueError, match="verdict 'left'"):
        pair_outcome("left", "first")


def test_net_win_rate_and_bootstrap_interval():
    outcomes = [1] * 6 + [-1] * 2 + [0] * 2
    r = net_win_rate(outcomes, n_boot=4000, seed=0)
    assert r["net_win_rate"] == pytest.approx(0.4)
    assert (r["wins"], r["losses"], r["ties"], r["pairs"]) == (6, 2, 2, 10)
    lo, hi = r["ci"]
    assert lo < 0.4 < hi and -1 <= lo and hi <= 1
    assert net_win_rate(outcomes, n_boot=4000, seed=0)["ci"] == r["ci"]  # seeded
    assert net_win_rate([1] * 5)["ci"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="no pairs"):
        net_win_rate([])


def test_clause_judge():
    assert clause_judge(0.75, 0.5) == "first"
    assert clause_judge(0.5, 0.75) == "second"
    assert clause_judge(0.5, 0.5) == "tie"


def test_dense_captions_are_satisfiable_and_parse():
    from flowalign.evaluation.densealign import dense_captions
    from reward_models.shapes.render import render_prompt

    rows = dense_captions(6, seed=1)
    assert len({r["prompt"] for r in rows}) == 6
    for i, r in enumerate(rows):
        _, scene = render_prompt(r, seed=i)  # raises if the caption cannot be drawn correctly
        assert len(scene) == 2


def test_dense_training_captions_exclude_the_evaluation_captions():
    import json
    import pathlib

    from benchmarks.densealign.train_prompts import train_captions
    from flowalign.evaluation.densealign import all_dense_captions, dense_captions

    every = {m["prompt"] for m in all_dense_captions()}
    assert len(every) == 3 * 2 * 6 * 5 * 4
    evals = {m["prompt"] for s in range(4) for m in dense_captions(48, s)}
    train = train_captions(48, 4)
    assert evals <= every and not evals & {m["prompt"] for m in train}
    assert len(train) == len(every - evals)
    shipped = pathlib.Path(__file__).resolve().parents[2] / "flowalign/shapes/prompts/dense_train.jsonl"
    assert [json.loads(x) for x in shipped.read_text().splitlines()] == train


def test_densealign_cli_same_model_ties_everywhere(tiny_sd3_dir, tmp_path):
    import json

    from flowalign.cli import main

    out = tmp_path / "d"
    assert main(["eval", "densealign", "--model", tiny_sd3_dir, "--baseline", tiny_sd3_dir, "--num-prompts", "3",
                 "--images-per-prompt", "2", "--steps", "2", "--max-sequence-length", "8", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pairs"] == 6 and s["ties"] == 6 and s["net_win_rate"] == 0.0
    assert main(["eval", "densealign", "--judge", "qwen-vl", "--out", str(out)]) == 2


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from flowalign.testing import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("judge") / "vlm")


def test_vlm_judge_preference_is_the_answer_log_odds(judge_dir):
    """d = log p('first') - log p('second') at the answer position, by hand on one unpadded row."""
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flowalign.evaluation.vlm_judge import VLMJudge
    from reward_models.base import to_uint8_hwc

    judge = VLMJudge(judge_dir, device="cpu", batch_size=2)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    caps = ["a photo of a red circle", "two squares", "a blue triangle left of a green circle"]
    d = judge.preferences(a, b, caps)
    model, proc = AutoModelForImageTextToText.from_pretrained(judge_dir).eval(), AutoProcessor.from_pretrained(judge_dir)
    tok = proc.tokenizer
    for i in range(3):
        inp = proc(images=[to_uint8_hwc(a[i:i + 1])[0], to_uint8_hwc(b[i:i + 1])[0]], text=[judge.text(caps[i])],
                   return_tensors="pt")
        assert (inp["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum() == 2 * 16  # two images
        with torch.no_grad():
            logp = F.log_softmax(model(**inp).logits[0, -1].double(), -1)
        want = logp[tok.convert_tokens_to_ids("first")] - logp[tok.convert_tokens_to_ids("second")]
        assert abs(float(d[i]) - float(want)) < 1e-4
    verdicts = judge(a, b, caps)
    assert verdicts == ["first" if x > 0 else "second" if x < 0 else "tie" for x in d.tolist()]


def test_vlm_judge_in_both_orders_cancels_its_position_bias(tiny_sd3_dir, judge_dir, tmp_path):
    """A model against itself: identical images, so whatever the judge prefers is a position, and
    the order swap turns every pair into a tie."""
    import json

    from flowalign.cli import main

    out = tmp_path / "v"
    assert main(["eval", "densealign", "--model", tiny_sd3_dir, "--baseline", tiny_sd3_dir, "--num-prompts", "2",
                 "--images-per-prompt", "2", "--steps", "2", "--max-sequence-length", "8", "--judge", judge_dir,
                 "--device", "cpu", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in open(out / "results.jsonl")]
    assert s["pairs"] == 4 and s["net_win_rate"] == 0.0
    assert all(r["verdict_model_first"] in ("first", "second", "tie") for r in rows)
    with pytest.raises(ValueError, match="placeholder"):
        from flowalign.evaluation.vlm_judge import VLMJudge

        VLMJudge(judge_dir, question="which is better?")
