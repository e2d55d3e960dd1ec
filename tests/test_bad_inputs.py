"""Bad inputs through the real CLI (`flowalign.cli.main`, what the `flowalign` script runs): each must
exit non-zero with one `error:` line on stderr that names the bad value, no traceback, and leave an
earlier run's folder (config, metrics, checkpoint) and every other file of the workspace as it was."""

import hashlib
import json
import os

import pytest

from flowalign.cli import main
from tests.flowalign.test_train import overrides


def snapshot(root) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_sd3_dir):
    """A workspace: an earlier 1-iteration run in run/, prompt files good and bad, configs, a LoRA folder
    without weights, a damaged LoRA file, a GenEval --out made with seed 0."""
    from flowalign.config import load_config
    from flowalign.trainer import Trainer

    root = tmp_path_factory.mktemp("ws")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    run = root / "run"
    cfg = load_config(None, overrides(tiny_sd3_dir, str(run), str(prompts), **{"run.max_iterations": 1,
                                                                               "run.sample_every": 0}))
    Trainer(cfg).train()
    (root / "empty.jsonl").write_text("")
    (root / "broken.jsonl").write_text('{"prompt": "a red circle", "include": [{"class": "circle", "count": 1}]}\n{oops\n')
    (root / "strings.jsonl").write_text('"a red circle"\n')
    (root / "latin1.txt").write_bytes("a caf\xe9 circle\n".encode("latin-1"))
    (root / "bad.yaml").write_text("model:\n  path: [unclosed\n")
    (root / "list.yaml").write_text("- model\n- sampler\n")
    (root / "nullsection.yaml").write_text("algorithm:\nrun:\n  max_iterations: 2\n")
    (root / "reno_bad.yaml").write_text("model: x\nprompt: a cat\nlearning_rate: 3\n")
    (root / "lora_empty").mkdir()
    (root / "lora_bad").mkdir()
    (root / "lora_bad" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    (root / "a_file").write_text("x")
    gen = root / "gen"
    gen.mkdir()
    (gen / "generation.json").write_text(json.dumps({
        "model": str(tiny_sd3_dir), "lora": None, "dtype": "float32", "steps": 2, "guidance": 4.5, "seed": 0,
        "height": 32, "width": 32, "images_per_prompt": 1, "metadata": "x"}))
    return root


def train_args(ws, tiny, **extra):
    kw = {"run.output_dir": str(ws / "fresh")}
    kw.update(extra)
    return ["train", "-", *overrides(tiny, kw.pop("run.output_dir"), str(ws / "prompts.txt"), **kw)]


# (id, argv builder (ws, tiny model) -> argv, text the error line must contain)
CASES = [
    ("config-missing", lambda w, t: ["train", str(w / "none.yaml")], "none.yaml"),
    ("config-bad-yaml", lambda w, t: ["train", str(w / "bad.yaml")], "bad.yaml"),
    ("config-list", lambda w, t: ["train", str(w / "list.yaml")], "ListConfig"),
    ("config-null-section", lambda w, t: ["train", str(w / "nullsection.yaml")], "section algorithm"),
    ("override-no-equals", lambda w, t: ["train", "-", "run.max_iterations"], "run.max_iterations"),
    ("override-unknown-key", lambda w, t: train_args(w, t, **{"optim.lrr": 1}), "optim.lrr"),
    ("override-bad-type", lambda w, t: train_args(w, t, **{"run.max_iterations": "many"}), "run.max_iterations"),
    ("override-null-algorithm", lambda w, t: ["train", "-", "algorithm=null"], "algorithm=None"),
    ("algorithm-unknown", lambda w, t: train_args(w, t, **{"algorithm.name": "ppo"}), "ppo"),
    ("sampler-kind-ode", lambda w, t: train_args(w, t, **{"sampler.kind": "ode"}), "sampler.kind='ode'"),
    ("sampler-steps-0", lambda w, t: train_args(w, t, **{"sampler.num_steps": 0}), "sampler.num_steps=0"),
    ("sde-window-out", lambda w, t: train_args(w, t, **{"sampler.sde_window": "[3,20]"}), "sampler.sde_window"),
    ("random-window-half", lambda w, t: train_args(w, t, **{"sampler.sde_window_size": 2}), "sde_window_size"),
    ("guidance-below-1", lambda w, t: train_args(w, t, **{"sampler.guidance": 0.5}), "sampler.guidance=0.5"),
    ("shift-negative", lambda w, t: train_args(w, t, **{"sampler.shift": -1}), "sampler.shift=-1"),
    ("ema-decay", lambda w, t: train_args(w, t, **{"optim.ema_decay": 1.5}), "optim.ema_decay=1.5"),
    ("keep-checkpoints-0", lambda w, t: train_args(w, t, **{"run.keep_checkpoints": 0}), "run.keep_checkpoints=0"),
    ("max-iterations-0", lambda w, t: train_args(w, t, **{"run.max_iterations": 0}), "run.max_iterations=0"),
    ("run-device-cuda", lambda w, t: train_args(w, t, **{"run.device": "cuda"}), "run.device='cuda'"),
    ("max-weight-abs", lambda w, t: train_args(w, t, **{"run.max_weight_abs": -1}), "run.max_weight_abs=-1"),
    ("prompts-missing", lambda w, t: train_args(w, t, **{"data.train_prompts": str(w / "none.jsonl")}), "none.jsonl"),
    ("prompts-empty", lambda w, t: train_args(w, t, **{"data.train_prompts": str(w / "empty.jsonl")}), "empty.jsonl"),
    ("prompts-broken-line", lambda w, t: train_args(w, t, **{"data.train_prompts": str(w / "broken.jsonl")}),
     "broken.jsonl:2"),
    ("prompts-strings", lambda w, t: train_args(w, t, **{"data.train_prompts": str(w / "strings.jsonl")}),
     "strings.jsonl:1"),
    ("prompts-not-utf8", lambda w, t: train_args(w, t, **{"data.train_prompts": str(w / "latin1.txt")}), "latin1.txt"),
    ("reward-unknown", lambda w, t: train_args(w, t, **{"reward.name": "beauty"}), "beauty"),
    ("geneval-reward-txt", lambda w, t: train_args(w, t, **{"reward.name": "shapes_geneval"}), "prompts.txt"),
    ("branch-group-size", lambda w, t: train_args(w, t, **{"algorithm.name": "branch_grpo", "algorithm.group_size": 3,
                                                           "algorithm.split_steps": "[0,1]"}), "algorithm.group_size=3"),
    ("width-ratio", lambda w, t: train_args(w, t, **{"algorithm.name": "branch_grpo", "algorithm.split_steps": "[0,1]",
                                                     "algorithm.width_pruning_ratio": 2}), "width_pruning_ratio=2"),
    ("fresh-run-in-used-folder", lambda w, t: train_args(w, t, **{"run.output_dir": str(w / "run")}), "run.resume=true"),
    ("resume-changed-lora-rank", lambda w, t: train_args(w, t, **{"run.output_dir": str(w / "run"), "run.resume": True,
                                                                  "lora.rank": 8}), "lora.rank"),
    ("resume-not-a-checkpoint", lambda w, t: train_args(w, t, **{"run.resume": str(w / "a_file")}), "a_file"),
    ("sample-steps-0", lambda w, t: ["sample", "--model", t, "--steps", "0", "--prompt", "a"], "--steps"),
    ("sample-height-0", lambda w, t: ["sample", "--model", t, "--height", "0", "--prompt", "a"], "--height"),
    ("sample-guidance-0.5", lambda w, t: ["sample", "--model", t, "--guidance", "0.5", "--prompt", "a"], "0.5"),
    ("sample-guidance-text", lambda w, t: ["sample", "--model", t, "--guidance", "lots", "--prompt", "a"], "lots"),
    ("sample-model-missing", lambda w, t: ["sample", "--model", str(w / "nomodel"), "--prompt", "a"], "nomodel"),
    ("sample-model-not-pipeline", lambda w, t: ["sample", "--model", str(w / "lora_empty"), "--prompt", "a"],
     "model_index.json"),
    ("sample-device-cuda", lambda w, t: ["sample", "--model", t, "--device", "cuda", "--prompt", "a"], "cuda"),
    ("eval-lora-empty", lambda w, t: ["eval", "shapes", "--model", t, "--lora", str(w / "lora_empty"), "--out",
                                      str(w / "ev")], "lora_empty"),
    ("eval-lora-damaged", lambda w, t: ["eval", "shapes", "--model", t, "--lora", str(w / "lora_bad"), "--out",
                                        str(w / "ev")], "lora_bad"),
    ("eval-out-is-a-file", lambda w, t: ["eval", "shapes", "--model", t, "--out", str(w / "a_file")], "a_file"),
    ("sample-out-is-a-folder", lambda w, t: ["sample", "--model", t, "--prompt", "a", "--out", str(w / "lora_empty")],
     "lora_empty"),
    ("sample-out-no-extension", lambda w, t: ["sample", "--model", t, "--prompt", "a", "--out", str(w / "grid")],
     "grid"),
    ("eval-images-0", lambda w, t: ["eval", "shapes", "--images-per-prompt", "0", "--out", str(w / "ev")],
     "--images-per-prompt"),
    ("eval-prompts-missing", lambda w, t: ["eval", "shapes", "--prompts", str(w / "none.jsonl"), "--out",
                                           str(w / "ev")], "none.jsonl"),
    ("geneval-no-clip", lambda w, t: ["eval", "geneval", "--model", t, "--out", str(w / "gen2"), "--detector", "m2f"],
     "--clip"),
    ("geneval-out-other-seed", lambda w, t: ["eval", "geneval", "--model", t, "--out", str(w / "gen"), "--detector",
                                             "shapes", "--steps", "2", "--images-per-prompt", "1", "--height", "32",
                                             "--width", "32", "--seed", "5"], "seed"),
    ("reno-no-prompt", lambda w, t: ["reno", "--model", t, "--reward", "jpeg_compressibility=1"], "--prompt"),
    ("reno-unknown-key", lambda w, t: ["reno", "--config", str(w / "reno_bad.yaml")], "learning_rate"),
    ("convert-missing", lambda w, t: ["convert-detector", str(w / "none.pth"), str(w / "conv")], "none.pth"),
]


@pytest.mark.parametrize("case,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_and_changes_nothing(ws, tiny_sd3_dir, capfd, case, argv, needle):
    before = snapshot(ws)
    try:
        code = main(argv(ws, tiny_sd3_dir))
    except SystemExit as e:  # argparse
        code = e.code
    _, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith(" ")]
    assert code not in (0, None), (case, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and "error" in lines[0], (case, err)
    assert needle in lines[0], (case, lines[0])
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before, case  # nothing deleted or overwritten
    assert not any(k.startswith("run" + os.sep) for k in set(after) - set(before)), case  # nothing added to run/


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


def test_a_live_runs_lock_stops_a_second_run(ws, tiny_sd3_dir, capfd):
    """Two runs in one folder: the second stops with one sentence (the first's .lock names a live process)."""
    lock = ws / "run" / ".lock"
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    try:
        before = snapshot(ws / "run")
        code = main(train_args(ws, tiny_sd3_dir, **{"run.output_dir": str(ws / "run"), "run.resume": True,
                                                    "run.max_iterations": 2}))
        err = capfd.readouterr().err
        assert code == 2 and f"in use by process {os.getppid()}" in err and "Traceback" not in err
        assert snapshot(ws / "run") == before
    finally:
        lock.unlink()


def test_machine_errors_become_one_sentence_and_bugs_keep_their_traceback():
    import errno

    from flowalign.cli import user_error

    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")
    assert "no space left" in user_error(full) and "metrics.jsonl" in user_error(full)
    assert "cannot use '/x'" in user_error(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert user_error(TypeError("unsupported operand")) is None  # a bug: the traceback stays
    assert user_error(ValueError("first line\nsecond line")) == "first line"
