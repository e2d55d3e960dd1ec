"""Bad numbers and silent-wrong-result inputs stop at the door with one sentence: a GenEval reward
on plain-text prompts (which have no clauses, so every image would score 1), zero or negative sizes
and step counts on the command line, guidance below 1, and checkpoint counts that would delete the
checkpoint just written."""

import subprocess
import sys

import pytest
import torch

from flowalign.config import load_config
from reward_models import build_reward


def test_geneval_rewards_refuse_prompts_without_clauses(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n")
    with pytest.raises(ValueError, match="data.train_prompts=.*not a GenEval-format .jsonl file.*shapes_geneval"):
        load_config(None, [f"data.train_prompts={txt}"])
    with pytest.raises(ValueError, match="eval.prompts=.*shapes_geneval"):
        load_config(None, [f"eval.prompts={txt}", "eval.every=5"])
    load_config(None, [f"data.train_prompts={txt}", "reward.name=jpeg_compressibility"])  # no clauses needed
    reward = build_reward("shapes_geneval")
    with pytest.raises(ValueError, match="without GenEval clauses"):
        reward(torch.rand(1, 3, 32, 32), ["a red circle"], metadata=[{"prompt": "a red circle"}])


@pytest.mark.parametrize("override, match", [
    ("run.keep_checkpoints=0", "run.keep_checkpoints=0 must be at least 1"),
    ("run.keep_checkpoints=-1", "run.keep_checkpoints=-1 must be at least 1"),
    ("sampler.guidance=0.5", "sampler.guidance=0.5 must be at least 1"),
    ("sampler.guidance=-3", "sampler.guidance=-3.0 must be at least 1"),
    ("model.height=0", "model.height=0 must be at least 1"),
    ("sampler.eval_num_steps=0", "sampler.eval_num_steps=0 must be at least 1"),
])
def test_config_numbers(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("argv, flag", [
    (["sample", "--model", "M", "--prompt", "p", "--steps", "0"], "--steps"),
    (["sample", "--model", "M", "--prompt", "p", "--height", "0"], "--height"),
    (["sample", "--model", "M", "--prompt", "p", "--guidance", "-2"], "--guidance"),
    (["eval", "shapes", "--images-per-prompt", "0"], "--images-per-prompt"),
    (["reno", "--model", "M", "--prompt", "p", "--iters", "zero"], "--iters"),
])
def test_cli_numbers_fail_before_any_model_loads(argv, flag):
    p = subprocess.run([sys.executable, "-m", "flowalign.cli", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"argument {flag}" in p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", "\n\n", "holds no prompt"),
    ("empty.jsonl", "", "holds no prompt"),
    ("broken.jsonl", '{"prompt": "a red circle"}\n{"prompt": "a blue\n', r"broken.jsonl:2: not valid JSON"),
    ("string.jsonl", '{"prompt": "a"}\n"a red circle"\n', r"string.jsonl:2: a row needs a non-empty 'prompt'"),
    ("null.jsonl", '{"prompt": null}\n', r"null.jsonl:1: a row needs a non-empty 'prompt'"),
    ("blank.jsonl", '{"prompt": "  "}\n', r"blank.jsonl:1: a row needs"),
])
def test_prompt_files_are_checked_line_by_line(tmp_path, name, content, match):
    from flowalign.data import load_prompt_rows

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_prompt_rows(str(path))


def test_non_utf8_prompt_file(tmp_path):
    from flowalign.data import load_prompt_rows

    path = tmp_path / "latin1.txt"
    path.write_bytes("a caf\xe9 circle\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_prompt_rows(str(path), key="eval.prompts")


def test_a_bad_prompt_file_stops_training_before_the_model_loads(tmp_path, monkeypatch):
    from flowalign import trainer

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\nnot json\n')
    monkeypatch.setattr(trainer, "load_policy", lambda *a, **k: pytest.fail("the model loaded first"))
    cfg = load_config(None, [f"eval.prompts={bad}", "eval.every=1", f"run.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        trainer.Trainer(cfg)
