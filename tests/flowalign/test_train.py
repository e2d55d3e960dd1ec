"""Smoke, resume and LoRA-export tests of `flowalign train` on the tiny offline SD3 pipeline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from flowalign.config import load_config
from flowalign.trainer import Trainer, load_state

ROOT = Path(__file__).resolve().parents[2]


def overrides(model, out, prompts_file, **extra):
    base = {
        "model.path": model, "model.max_sequence_length": 8, "model.height": 32, "model.width": 32,
        "lora.rank": 4, "lora.alpha": 8, "sampler.num_steps": 3, "sampler.guidance": 2.0,
        "reward.name": "jpeg_compressibility", "algorithm.group_size": 4, "algorithm.prompts_per_iteration": 2,
        "algorithm.train_batch_size": 4, "algorithm.timestep_fraction": 0.7, "algorithm.kl_beta": 0.01,
        "algorithm.clip_range": 0.2, "optim.lr": 1e-2, "data.train_prompts": prompts_file,
        "run.output_dir": out, "run.max_iterations": 2, "run.checkpoint_every": 1, "run.sample_every": 2,
        "run.progress": False, "run.device": "cpu",
        "data.sample_prompts": "[a red circle,a blue square]",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_train_smoke_outputs_and_on_policy_first_step(tiny_sd3_dir, tmp_path, prompts_file):
    out = str(tmp_path / "run")
    cfg = load_config(None, overrides(tiny_sd3_dir, out, prompts_file))
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.params]
    final = trainer.train()
    assert final == os.path.join(out, "lora")
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["iteration"] for m in lines] == [1, 2]
    for key in ("reward_mean", "reward_std", "advantage_std", "ratio", "clip_fraction", "kl", "loss", "grad_norm",
                "lr", "iteration_time", "nfe_rollout", "nfe_train"):
        assert key in lines[0], key
    # the first inner step re-scores the rollout with the same weights, dtype, noise and code path
    assert abs(lines[0]["first_ratio"] - 1) < 1e-5
    # 8 samples x 3 steps x 2 (CFG) per rollout
    assert lines[0]["nfe_rollout"] == 48
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))
    for name in ("config.yaml", "samples/iter_000000.png", "samples/iter_000002.png",
                 "checkpoints/iter_000002/trainable.safetensors", "lora/pytorch_lora_weights.safetensors"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "tensorboard"))
    resolved = load_config(os.path.join(out, "config.yaml"))
    assert resolved.run.max_iterations == 2


def test_saved_lora_loads_in_a_stock_pipeline_and_changes_its_output(tiny_sd3_dir, tmp_path, prompts_file):
    out = str(tmp_path / "run")
    cfg = load_config(None, overrides(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 1, "run.sample_every": 0}))
    Trainer(cfg).train()
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=2.0, height=32, width=32,
              max_sequence_length=8, output_type="latent")
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(os.path.join(out, "lora"))
    tuned = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert (tuned - base).abs().max() > 1e-4


def _cli(args, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "flowalign.cli", "train", "-", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_resume_after_kill_matches_uninterrupted_run(tiny_sd3_dir, tmp_path, prompts_file):
    args = lambda out, **kw: overrides(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 4,  # noqa: E731
                                                                          "run.sample_every": 0, **kw})
    straight = _cli(args(str(tmp_path / "a")))
    assert straight.wait(timeout=300) == 0, straight.stdout.read().decode()[-2000:]

    killed_out = tmp_path / "b"
    proc = _cli(args(str(killed_out)))
    deadline = time.time() + 300
    while not (killed_out / "checkpoints" / "iter_000002").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash mid-run
    proc.wait()
    done = sorted(os.listdir(killed_out / "checkpoints"))
    assert not (killed_out / "lora").exists() and done[-1] < "iter_000004", done
    resumed = _cli(args(str(killed_out), **{"run.resume": "true"}))
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0 and "resumed from" in log, log[-2000:]

    a = load_file(str(tmp_path / "a" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(killed_out / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in open(killed_out / "metrics.jsonl")]
    assert [m["iteration"] for m in lines] == [1, 2, 3, 4]
    ref = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    assert [m["reward_mean"] for m in lines] == [m["reward_mean"] for m in ref]


def test_full_fine_tuning_saves_a_loadable_pipeline(tiny_sd3_dir, tmp_path, prompts_file):
    out = str(tmp_path / "run")
    cfg = load_config(None, overrides(tiny_sd3_dir, out, prompts_file, **{
        "lora.enabled": "false", "run.max_iterations": 1, "run.sample_every": 0, "optim.lr": 1e-4}))
    trainer = Trainer(cfg)
    assert len(trainer.params) == len(list(trainer.policy.transformer.parameters()))
    assert trainer.train() == os.path.join(out, "model")
    pipe = StableDiffusion3Pipeline.from_pretrained(os.path.join(out, "model"))
    base = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    changed = [n for n, p in pipe.transformer.named_parameters()
               if not torch.equal(p, dict(base.transformer.named_parameters())[n])]
    assert changed


def test_divergence_stops_before_the_blown_up_weights_are_checkpointed(tiny_sd3_dir, tmp_path, prompts_file):
    """lr 1e30: iteration 1's loss is finite but its update blows the weights up; the run must stop
    there (the old check only looked at loss and reward, so iteration 1 was checkpointed as 'good')."""
    out = tmp_path / "run"
    proc = _cli(overrides(tiny_sd3_dir, str(out), prompts_file, **{
        "optim.lr": 1e30, "run.max_iterations": 5, "run.sample_every": 0, "algorithm.kl_beta": 0,
        "algorithm.train_batch_size": 8}))  # one update per iteration
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 1, log[-2000:]
    assert "training stopped: divergence at iteration 1" in log and "largest trainable weight" in log
    assert "the last good checkpoint is none" in log
    assert not (out / "checkpoints" / "iter_000001").exists() and not (out / "lora").exists()


def assert_one_iteration_trains(model_dir, out, prompts_file, algo, **extra):
    """One iteration of `algo` (flow_grpo, or branch_grpo with splits [1, 2]) on a tiny pipeline: the
    LoRA weights change, the first ratio is 1 and a diffusers LoRA file is written. Returns metrics."""
    extra = {"run.max_iterations": 1, "run.sample_every": 0, **extra}
    if algo == "branch_grpo":
        extra.update({"algorithm.name": "branch_grpo", "algorithm.split_steps": "[1,2]", "algorithm.group_size": 4})
    cfg = load_config(None, overrides(model_dir, out, prompts_file, **extra))
    t = Trainer(cfg)
    before = [p.detach().clone() for p in t.params]
    final = t.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.params))
    m = json.loads(open(os.path.join(cfg.run.output_dir, "metrics.jsonl")).readline())
    assert abs(m["first_ratio"] - 1) < 1e-5
    assert [f for f in os.listdir(final) if f.startswith("pytorch_lora_weights") and f.endswith(".safetensors")]
    return m


def test_shared_noise_gives_each_group_one_start_on_every_process(tiny_sd3_dir, tmp_path, prompts_file):
    """algorithm.shared_noise: a group's samples start from one noise, other groups from others, and a
    group split over two processes draws the same noise on both; SDE steps then spread the group."""
    from flowalign.algorithms.base import expand_groups

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file,
                                      **{"algorithm.shared_noise": True, "algorithm.group_size": 3}))
    t = Trainer(cfg)
    metas = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
    whole = t.algo.rollout(t.policy, *expand_groups(metas, 3, 0, 1), torch.Generator().manual_seed(0), 32, 32,
                           seed=0, iteration=5)
    x0 = whole.traj.latents[:, 0]
    assert torch.equal(x0[0], x0[1]) and torch.equal(x0[0], x0[2]) and torch.equal(x0[3], x0[5])
    assert not torch.equal(x0[0], x0[3])
    assert not torch.equal(whole.traj.final[0], whole.traj.final[1])  # the SDE steps differ per sample
    halves = [t.algo.rollout(t.policy, *expand_groups(metas, 3, r, 2), torch.Generator().manual_seed(r), 32, 32,
                             seed=0, iteration=5) for r in (0, 1)]
    assert torch.equal(torch.cat([h.traj.latents[:, 0] for h in halves]), x0)  # group 1 spans both processes
    later = t.algo.rollout(t.policy, *expand_groups(metas, 3, 0, 1), torch.Generator().manual_seed(0), 32, 32,
                           seed=0, iteration=6)
    assert not torch.equal(later.traj.latents[0, 0], x0[0])  # fresh noise every iteration


def test_ema_weights_are_the_ones_evaluated_and_saved(tiny_sd3_dir, tmp_path, prompts_file):
    out = str(tmp_path / "run")
    cfg = load_config(None, overrides(tiny_sd3_dir, out, prompts_file, **{"optim.ema_decay": 0.5,
                                                                         "run.max_iterations": 1}))
    trainer = Trainer(cfg)
    trainer.train()
    current = [p.detach().clone() for p in trainer.params]
    assert any(not torch.equal(s, c) for s, c in zip(trainer.ema.shadow, current))  # EMA lags the weights
    with trainer.eval_weights():
        assert all(torch.equal(p, s) for p, s in zip(trainer.params, trainer.ema.shadow))
    assert all(torch.equal(p, c) for p, c in zip(trainer.params, current))
    saved = load_file(os.path.join(out, "lora", "pytorch_lora_weights.safetensors"))
    with trainer.eval_weights():
        named = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        b = next(n for n in named if "lora_B" in n and named[n].abs().sum() > 0)
        key = "transformer." + b.replace(".default", "")  # diffusers' LoRA key of that peft parameter
        assert torch.equal(saved[key], named[b].detach().to(saved[key].dtype)), (b, key)


class _Planted:
    """Unpickling this object creates a file: what a crafted checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_runs_code_from_a_crafted_checkpoint(tiny_sd3_dir, tmp_path, prompts_file):
    """Every checkpoint state loads with weights_only=True: a crafted optimizer.pt (or RNG file) makes
    the resume stop with one sentence, and its code does not run."""
    out = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_sd3_dir, str(out), prompts_file,
                                      **{"run.max_iterations": 1, "run.sample_every": 0}))
    Trainer(cfg).train()
    ckpt = out / "checkpoints" / "iter_000001"
    for name in ("optimizer.pt", "rng_0.pt"):
        marker = tmp_path / f"pwned_{name}"
        original = (ckpt / name).read_bytes()
        torch.save({"state": _Planted(str(marker))}, ckpt / name)
        resumed = load_config(None, overrides(tiny_sd3_dir, str(out), prompts_file,
                                              **{"run.max_iterations": 2, "run.sample_every": 0, "run.resume": True}))
        with pytest.raises(ValueError, match="never unpickles code"):
            Trainer(resumed).resume()
        assert not marker.exists()
        (ckpt / name).write_bytes(original)
    t = Trainer(resumed)  # the genuine files still resume, the numpy RNG included
    np.random.seed(123)
    t.resume()
    saved = load_state(str(ckpt / "rng_0.pt"))["numpy"]
    assert t.iteration == 1 and np.array_equal(np.random.get_state()[1], saved["keys"].numpy())


def test_a_fresh_run_does_not_reuse_a_run_folder(tiny_sd3_dir, tmp_path, prompts_file, monkeypatch):
    """A run folder belongs to one run: a second fresh run there stops before writing anything (it
    would prune the first run's checkpoints by name and append to its metrics); resume continues."""
    out = tmp_path / "run"
    args = overrides(tiny_sd3_dir, str(out), prompts_file, **{"run.max_iterations": 1, "run.sample_every": 0})
    Trainer(load_config(None, args)).train()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run .*run.resume=true"):
        Trainer(load_config(None, args)).train()
    assert (out / "metrics.jsonl").read_text() == metrics and {p.name for p in out.iterdir()} == set(before)
    assert (out / "config.yaml").stat().st_mtime_ns == before["config.yaml"]  # not rewritten
    # `flowalign demo` takes the next free folder instead of failing
    from flowalign import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_train", lambda a: seen.append(a.overrides[0]) or 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "metrics.jsonl").write_text("")
    assert cli.main(["demo"]) == 0 and seen == ["run.output_dir=runs/demo_2"]


def test_metrics_survive_a_torn_line_and_a_resume_without_checkpoint(tiny_sd3_dir, tmp_path, prompts_file):
    """A kill in the middle of a metrics write leaves a torn last line: resume drops it instead of
    failing; a resume that finds no checkpoint starts over without duplicating iterations."""
    out = tmp_path / "run"
    args = overrides(tiny_sd3_dir, str(out), prompts_file, **{"run.max_iterations": 2, "run.sample_every": 0})
    Trainer(load_config(None, args)).train()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "reward_me')  # torn
    Trainer(load_config(None, args + ["run.max_iterations=3", "run.resume=true"])).train()
    iters = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text('{"iteration": 1, "reward_mean": 0.5}\n')  # an attempt killed before its checkpoint
    args = overrides(tiny_sd3_dir, str(fresh), prompts_file, **{"run.max_iterations": 1, "run.sample_every": 0,
                                                                 "run.resume": True})
    Trainer(load_config(None, args)).train()
    assert [json.loads(x)["iteration"] for x in (fresh / "metrics.jsonl").read_text().splitlines()] == [1]
