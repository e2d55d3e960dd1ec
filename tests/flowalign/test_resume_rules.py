"""Resume rules (issue items 2, 3 and 5): a divergent update is never checkpointed, a resume applies the
config's new learning rate, a checkpoint carries its config and a resume refuses keys that change what
is trained (before config.yaml is rewritten), checkpoints are written under a per-process temporary
name, and a run folder is locked while a run uses it."""

import json
import os

import pytest
import torch

from flowalign.config import load_config
from flowalign.trainer import Trainer, TrainingError, acquire_run_lock, release_run_lock
from tests.flowalign.test_train import overrides


def _cfg(tiny, out, prompts, **kw):
    return load_config(None, overrides(tiny, str(out), prompts, **{"run.sample_every": 0, **kw}))


def test_divergent_weights_stop_the_run_before_they_are_checkpointed(tiny_sd3_dir, tmp_path, prompts_file):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1})).train()
    good = torch.load(out / "checkpoints" / "iter_000001" / "optimizer.pt", weights_only=True)
    # a bound below the current weights: the next update counts as divergence
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.resume": True, "run.max_iterations": 3,
                                                          "run.max_weight_abs": 1e-6}))
    with pytest.raises(TrainingError, match="largest trainable weight") as e:
        t.train()
    assert "iter_000001" in str(e.value) and "lower optim.lr" in str(e.value)
    assert sorted(os.listdir(out / "checkpoints")) == ["iter_000001"]  # the divergent iteration left no checkpoint
    again = torch.load(out / "checkpoints" / "iter_000001" / "optimizer.pt", weights_only=True)
    assert again["state"].keys() == good["state"].keys()
    assert not (out / ".lock").exists()  # released on the way out


def test_resume_applies_a_new_learning_rate(tiny_sd3_dir, tmp_path, prompts_file):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1, "optim.lr": 1e-2})).train()
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.resume": True, "run.max_iterations": 2,
                                                          "optim.lr": 1e-4}))
    t.resume()
    assert [g["lr"] for g in t.optimizer.param_groups] == [pytest.approx(1e-4)]
    # the base a scheduler built later from this optimiser reads (torch's LRScheduler: initial_lr)
    assert [g["initial_lr"] for g in t.optimizer.param_groups] == [pytest.approx(1e-4)]
    assert t.scheduler.base_lrs == [pytest.approx(1e-4)] and t.scheduler.get_last_lr() == [pytest.approx(1e-4)]
    t.train()
    m = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert m[-1]["iteration"] == 2 and m[-1]["lr"] == pytest.approx(1e-4)


def test_checkpoint_carries_its_config_and_resume_refuses_training_keys(tiny_sd3_dir, tmp_path, prompts_file):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1})).train()
    saved = out / "checkpoints" / "iter_000001" / "config.yaml"
    assert saved.is_file()
    config_before = (out / "config.yaml").read_text()
    for key, value in (("lora.rank", 8), ("run.seed", 3), ("algorithm.group_size", 2), ("lora.alpha", 4)):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.resume": True, key: value}))
    assert (out / "config.yaml").read_text() == config_before  # refused before anything was written
    # run.* (but seed), eval.* and optim.lr may change
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.resume": True, "run.max_iterations": 5,
                                                      "run.checkpoint_every": 2, "optim.lr": 1e-3}))


def test_run_lock_and_temporary_names(tmp_path):
    lock = acquire_run_lock(str(tmp_path))
    assert open(lock).read() == str(os.getpid())
    release_run_lock(lock)
    assert not os.path.exists(lock)
    (tmp_path / ".lock").write_text("999999999")  # a killed run's lock: taken over
    lock = acquire_run_lock(str(tmp_path))
    assert open(lock).read() == str(os.getpid())
    release_run_lock(lock)
    (tmp_path / ".lock").write_text(str(os.getppid()))  # a live process's lock
    with pytest.raises(ValueError, match=f"in use by process {os.getppid()}"):
        acquire_run_lock(str(tmp_path))


def test_checkpoint_tmp_name_is_per_process_and_never_listed(tiny_sd3_dir, tmp_path, prompts_file):
    from flowalign.trainer import _checkpoints

    out = tmp_path / "run"
    (out / "checkpoints" / "iter_000009.tmp12345").mkdir(parents=True)  # another process's half-written one
    assert _checkpoints(str(out / "checkpoints")) == []
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1}))
    t.train()
    assert (out / "checkpoints" / "iter_000009.tmp12345").is_dir()  # not touched: not this process's name
    assert [os.path.basename(c) for c in _checkpoints(str(out / "checkpoints"))] == ["iter_000001"]


def test_keys_only_one_side_knows_are_not_differences(tiny_sd3_dir, tmp_path, prompts_file):
    """A checkpoint from a flowalign without a newer key (or with a removed one) still resumes."""
    from omegaconf import OmegaConf

    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1})).train()
    saved = out / "checkpoints" / "iter_000001" / "config.yaml"
    old = OmegaConf.load(saved)
    del old.algorithm["drop_zero_advantage"]  # as if written before that key existed
    old.algorithm["retired_key"] = 3
    OmegaConf.save(old, saved)
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.resume": True, "run.max_iterations": 2}))


def test_checkpoint_states_load_weights_only_onto_the_cpu_whatever_torchs_default(tmp_path, monkeypatch):
    """load_state asks torch.load for weights_only=True itself (torch < 2.6 defaults to False, and the
    project allows torch >= 2.4) and maps onto the CPU (a GPU-written state loads on any machine)."""
    from flowalign.trainer import load_state

    torch.save({"w": torch.ones(2)}, tmp_path / "s.pt")
    seen, real = [], torch.load

    def recording(*a, **k):
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", recording)
    assert torch.equal(load_state(str(tmp_path / "s.pt"))["w"], torch.ones(2))
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_truncating_metrics_keeps_complete_lines_up_to_the_iteration_and_skips_torn_ones(tmp_path):
    """A torn or foreign line in the middle is skipped (the lines after it stay); a last complete line
    without its newline gets one; a run folder without metrics is left alone."""
    from types import SimpleNamespace

    me = SimpleNamespace(out=str(tmp_path), acc=SimpleNamespace(is_main_process=True))
    Trainer._truncate_metrics(me, 5)  # no metrics.jsonl: nothing to do
    assert not (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iterat\n["foreign"]\n{"iteration": 2}\n'
                                            '{"iteration": 3}\n{"iteration": 2, "note": "last"}')
    Trainer._truncate_metrics(me, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == ('{"iteration": 1}\n{"iteration": 2}\n'
                                                        '{"iteration": 2, "note": "last"}\n')


def test_a_run_folder_is_in_use_with_metrics_or_checkpoints_alone(tmp_path, monkeypatch):
    """A fresh run refuses a folder holding an earlier run's metrics (even without checkpoints) or its
    checkpoints (even without metrics); half-written checkpoints and other files do not count. The
    paths are the folder's, whatever the working directory."""
    from flowalign.trainer import check_fresh_run_dir, run_dir_in_use

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # in the working directory, not in the run folder
    out = tmp_path / "run"
    (out / "checkpoints" / "iter_000001.tmp77").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    assert run_dir_in_use(str(out)) == []
    check_fresh_run_dir(str(out))
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert run_dir_in_use(str(out)) == ["metrics.jsonl"]
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.jsonl\)"):
        check_fresh_run_dir(str(out))
    (out / "checkpoints" / "iter_000002").mkdir()
    assert run_dir_in_use(str(out)) == ["metrics.jsonl", "checkpoints"]
    os.remove(out / "metrics.jsonl")
    assert run_dir_in_use(str(out)) == ["checkpoints"]


@pytest.mark.parametrize("as_text", [False, True])
def test_resume_checkpoint_reads_true_false_and_a_path(tmp_path, as_text):
    """run.resume as a bool or as the text a command line gives ('true' / 'false'): false refuses a used
    folder and starts fresh in an empty one, true picks the latest complete checkpoint (None without
    one), and a path picks that checkpoint even when a later one exists."""
    from omegaconf import OmegaConf

    from flowalign.trainer import resume_checkpoint

    def cfg(resume, out):
        return OmegaConf.create({"run": {"resume": resume, "output_dir": str(out)}})

    yes, no = ("true", "false") if as_text else (True, False)
    out = tmp_path / "run"
    assert resume_checkpoint(cfg(no, out)) is None
    assert resume_checkpoint(cfg(yes, out)) is None
    for i in (1, 2):
        (out / "checkpoints" / f"iter_00000{i}").mkdir(parents=True)
        (out / "checkpoints" / f"iter_00000{i}" / "state.json").write_text("{}")
    (out / "checkpoints" / "iter_000003.tmp5").mkdir()
    with pytest.raises(ValueError, match="already holds a run"):
        resume_checkpoint(cfg(no, out))
    assert resume_checkpoint(cfg(yes, out)) == str(out / "checkpoints" / "iter_000002")
    first = str(out / "checkpoints" / "iter_000001")
    assert resume_checkpoint(cfg(first, out)) == first
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resume_checkpoint(cfg(str(out / "checkpoints"), out))


def test_resume_compares_configs_with_their_interpolations_resolved(tmp_path):
    """An interpolation (`${model.a}`) in the run's config or in the checkpoint's is compared by its
    value: the same value is no difference; another value is."""
    from omegaconf import OmegaConf

    from flowalign.trainer import resume_checkpoint

    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "iter_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (ckpt / "config.yaml").write_text("model:\n  a: 3\n  b: ${model.a}\n")

    def cfg(a, b):
        return OmegaConf.create({"run": {"resume": True, "output_dir": str(out)}, "model": {"a": a, "b": b}})

    assert resume_checkpoint(cfg(3, "${model.a}")) == str(ckpt)
    assert resume_checkpoint(cfg(3, 3)) == str(ckpt)
    with pytest.raises(ValueError, match="model.b: checkpoint 3, config 4"):
        resume_checkpoint(cfg(3, 4))


@pytest.mark.parametrize("fresh", [False, "false"])
def test_a_fresh_run_resumes_nothing_and_says_nothing_of_resuming(tiny_sd3_dir, tmp_path, prompts_file, capsys,
                                                                  fresh):
    """run.resume=false (a bool, or the text a command line gives): resume() returns at once, without
    the 'run.resume=true but ... no checkpoint' line, and the run starts at iteration 0."""
    t = Trainer(_cfg(tiny_sd3_dir, tmp_path / "run", prompts_file, **{"run.max_iterations": 1}))
    t.cfg.run.resume = fresh
    capsys.readouterr()
    t.resume()
    assert "run.resume" not in capsys.readouterr().out and t.iteration == 0


def test_an_unsharded_checkpoint_resumes_with_another_number_of_processes(tiny_sd3_dir, tmp_path, prompts_file):
    """Only sharded checkpoints are tied to their process count: one written unsharded by 2 processes
    (state.json says world_size 2) resumes in 1."""
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1})).train()
    state = out / "checkpoints" / "iter_000001" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "world_size": 2}))
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 2, "run.resume": True}))
    t.resume()
    assert t.iteration == 1


def test_the_checkpoint_keeps_the_values_its_interpolations_had(tiny_sd3_dir, tmp_path, prompts_file, monkeypatch):
    """A checkpoint's config.yaml holds resolved values: a run whose data.train_prompts reads an
    environment variable (${oc.env:...}) is refused on resume once the variable names other prompts,
    since what is trained on changed."""
    from omegaconf import OmegaConf

    other = tmp_path / "other.txt"
    other.write_text("a green triangle\n")
    monkeypatch.setenv("FA_TEST_PROMPTS", prompts_file)
    out = tmp_path / "run"
    kw = {"run.max_iterations": 1, "data.train_prompts": "${oc.env:FA_TEST_PROMPTS}"}
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **kw))
    assert OmegaConf.is_interpolation(t.cfg.data, "train_prompts")
    t.train()
    saved = (out / "checkpoints" / "iter_000001" / "config.yaml").read_text()
    assert prompts_file in saved and "oc.env" not in saved
    monkeypatch.setenv("FA_TEST_PROMPTS", str(other))
    with pytest.raises(ValueError, match="data.train_prompts: checkpoint"):
        Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{**kw, "run.max_iterations": 2, "run.resume": True}))


def test_a_reward_that_learns_nothing_never_reads_a_reward_state(tiny_sd3_dir, tmp_path, prompts_file):
    """reward.pt is read only into a reward that learns (the discriminator): a run whose reward learns
    nothing resumes from a checkpoint holding a stray reward.pt and leaves the file unread."""
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1})).train()
    ckpt = out / "checkpoints" / "iter_000001"
    assert not (ckpt / "reward.pt").exists()
    torch.save({"head": torch.zeros(2)}, ckpt / "reward.pt")
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 2, "run.resume": True}))
    assert t.learned_reward is None
    t.resume()
    assert t.iteration == 1


def test_resume_names_four_differences_and_lets_prefixed_keys_change(tmp_path):
    """The refusal lists the first four differing keys, sorted and joined by '; ', then '; ...' when
    there are more; keys under a resumable prefix (eval.*) may differ without a refusal."""
    from omegaconf import OmegaConf

    from flowalign.trainer import resume_checkpoint

    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "iter_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    old = {"eval": {"every": 1}, "model": {k: 0 for k in "abcde"}}
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))

    def cfg(n_changed):  # eval.every is 7 against the checkpoint's 1 in every call
        model = {k: (1 if i < n_changed else 0) for i, k in enumerate("abcde")}
        return OmegaConf.create({"run": {"resume": True, "output_dir": str(out)}, "eval": {"every": 7},
                                 "model": model})

    assert resume_checkpoint(cfg(0)) == str(ckpt)  # eval.every changed: allowed
    with pytest.raises(ValueError) as e:
        resume_checkpoint(cfg(2))
    assert "(model.a: checkpoint 0, config 1; model.b: checkpoint 0, config 1)" in str(e.value)
    with pytest.raises(ValueError) as e:
        resume_checkpoint(cfg(5))
    listed = "; ".join(f"model.{k}: checkpoint 0, config 1" for k in "abcd")
    assert f"({listed}; ...)" in str(e.value) and "model.e" not in str(e.value)
