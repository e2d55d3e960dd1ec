"""run.sharding=fsdp2 on 2 CPU processes (torchrun, gloo): full fine-tuning with FSDP2 gives the
weights of one unsharded process with the same global batch; a resumed sharded run ends
bit-identical to a straight one; the gathered model/ loads with stock diffusers; a checkpoint
resumes only under the sharding and process count that wrote it."""

import os

import pytest
import torch
from safetensors.torch import load_file

from flowalign.config import load_config
from flowalign.trainer import Trainer
from tests.flowalign.test_distributed import _torchrun
from tests.flowalign.test_nft import NFT, overrides

# DiffusionNFT seeds every sample's noise by its index in the whole batch, so any number of processes
# draws the same samples; full fine-tuning with a KL term exercises the frozen reference and NFT's
# old policy (weights swapped into the shards). Adam's eps is raised from 1e-8 to 1e-4: with 1e-8 a
# weight whose gradient is rounding noise (~1e-9) moves by +-lr whatever the noise's sign, so two
# summation orders (2 processes vs 1, DDP as well as FSDP2) end ~lr apart on such weights.
KW = {**NFT, "lora.enabled": False, "algorithm.kl_beta": 0.01, "algorithm.train_batch_size": 2,
      "run.sample_every": 0, "run.checkpoint_every": 1, "optim.lr": 1e-3, "optim.eps": 1e-4}


def _transformer(run):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(run / "model"))  # stock diffusers reads the export
    return {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a red circle\na blue square\n")
    return str(p)


def test_fsdp2_full_fine_tuning_equals_one_unsharded_process(tiny_sd3_dir, tmp_path, prompts):
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer(load_config(None, overrides(tiny_sd3_dir, str(one), prompts, **{**KW, "run.max_iterations": 2}))).train()
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(two), prompts, **{
        **KW, "run.max_iterations": 2, "run.sharding": "fsdp2"}))
    a, b = _transformer(one), _transformer(two)
    base = load_file(os.path.join(tiny_sd3_dir, "transformer", "diffusion_pytorch_model.safetensors"))
    moved = max((a[k].float() - base[k].float()).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"FSDP2 2-process vs 1-process after 2 optimiser steps: max abs difference {diff:.2e} (moved {moved:.2e})")
    assert moved > 1e-4 and diff < 1e-5
    ckpt = sorted(os.listdir(two / "checkpoints" / "iter_000002"))
    assert {"trainable_rank0.safetensors", "trainable_rank1.safetensors", "optimizer_rank0.pt",
            "optimizer_rank1.pt", "algorithm_rank0.pt", "algorithm_rank1.pt"} <= set(ckpt)
    assert "trainable.safetensors" not in ckpt
    shard = load_file(str(two / "checkpoints" / "iter_000002" / "trainable_rank0.safetensors"))
    name = next(k for k in shard if k.endswith("proj_out.weight"))
    assert shard[name].shape[0] * 2 == a[name].shape[0]  # half the rows of each weight per process

    # the shards resume only under run.sharding=fsdp2 with the same number of processes
    with pytest.raises(ValueError, match=r"cannot change \(run.sharding: checkpoint 'fsdp2', config 'none'\)"):
        Trainer(load_config(None, overrides(tiny_sd3_dir, str(two), prompts, **{
            **KW, "run.max_iterations": 3, "run.resume": True})))
    with pytest.raises(ValueError, match="was written as FSDP2 shards by 2 process.*unsharded over 1"):
        Trainer(load_config(None, overrides(tiny_sd3_dir, str(two), prompts, **{
            **KW, "run.max_iterations": 3, "run.resume": True, "run.sharding": "fsdp2"}))).resume()


def test_fsdp2_kill_and_resume_is_bit_identical_to_a_straight_run(tiny_sd3_dir, tmp_path, prompts):
    """Both processes of a sharded run are killed (SIGKILL) once iteration 2's checkpoint exists;
    run.resume=true ends bit-identical to the straight run (EMA and warm-up on)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    straight, killed = tmp_path / "a", tmp_path / "b"
    sharded = {**KW, "run.sharding": "fsdp2", "optim.ema_decay": 0.5, "optim.warmup_iterations": 2,
               "run.max_iterations": 3}
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(straight), prompts, **sharded))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(killed), prompts,
                                                                             **sharded)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "iter_000002").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both training processes
    proc.wait(timeout=60)
    done = sorted(d for d in os.listdir(killed / "checkpoints") if ".tmp" not in d)
    assert done[-1] < "iter_000003" and not (killed / "model").exists(), done
    res = _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(killed), prompts, **{
        **sharded, "run.resume": True}))
    assert "resumed from" in res.stdout + res.stderr
    a, b = _transformer(straight), _transformer(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r in (0, 1):
        x = load_file(str(straight / "checkpoints" / "iter_000003" / f"trainable_rank{r}.safetensors"))
        y = load_file(str(killed / "checkpoints" / "iter_000003" / f"trainable_rank{r}.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_fsdp2_lora_equals_one_unsharded_process(tiny_sd3_dir, tmp_path, prompts):
    """LoRA under sharding: the adapters are sharded with their blocks; the gathered diffusers LoRA file
    equals the single process's."""
    kw = {**KW, "lora.enabled": True, "optim.lr": 3e-3, "run.max_iterations": 2}
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer(load_config(None, overrides(tiny_sd3_dir, str(one), prompts, **kw))).train()
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(two), prompts, **{
        **kw, "run.sharding": "fsdp2"}))
    a = load_file(str(one / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(two / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-4
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_fsdp2_bf16_mixed_precision_trains(tiny_sd3_dir, tmp_path, prompts):
    """bf16 compute with float32 master weights under FSDP2: finite metrics, float32 weights that moved."""
    import json

    out = tmp_path / "bf16"
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(out), prompts, **{
        **KW, "run.max_iterations": 1, "run.sharding": "fsdp2", "optim.mixed_precision": "bf16"}))
    m = [json.loads(x) for x in open(out / "metrics.jsonl")][-1]
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "grad_norm", "reward_mean"))
    shard = load_file(str(out / "checkpoints" / "iter_000001" / "trainable_rank1.safetensors"))
    assert all(t.dtype == torch.float32 for t in shard.values())
    a = _transformer(out)
    base = load_file(os.path.join(tiny_sd3_dir, "transformer", "diffusion_pytorch_model.safetensors"))
    assert max((a[k].float() - base[k].float()).abs().max().item() for k in a) > 1e-5


def test_fsdp2_under_accelerate_launch_with_the_shipped_launch_config(tiny_sd3_dir, tmp_path, prompts):
    """`accelerate launch --config_file configs/accelerate/fsdp2_8gpu.yaml --num_processes 2` (on CPUs
    accelerate runs the processes with gloo) trains sharded: one shard file per process."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "acc"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / "fsdp2_8gpu.yaml"), "--num_processes", "2", "-m", "flowalign.cli",
           "train", "-", *overrides(tiny_sd3_dir, str(out), prompts, **{
               **KW, "run.max_iterations": 1, "run.sharding": "fsdp2"})]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    files = set(os.listdir(out / "checkpoints" / "iter_000001"))
    assert {"trainable_rank0.safetensors", "trainable_rank1.safetensors", "rng_1.pt"} <= files
    assert (out / "model" / "transformer").is_dir()


def test_fsdp2_export_keeps_the_model_dtype(tiny_sd3_dir, tmp_path, prompts):
    """A bf16 checkpoint fine-tuned under FSDP2 is exported in bf16, as the unsharded export is."""
    out = tmp_path / "bf16_model"
    _torchrun("-m", "flowalign.cli", "train", "-", *overrides(tiny_sd3_dir, str(out), prompts, **{
        **KW, "run.max_iterations": 1, "run.sharding": "fsdp2", "model.dtype": "bfloat16"}))
    weights = load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
