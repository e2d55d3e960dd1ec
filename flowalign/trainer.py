"""The training engine: accelerate (devices, processes, mixed precision), LoRA or full fine-tuning,
EMA, atomic checkpoints and exact resume, metrics (JSONL + tensorboard), sample grids and the
progress bar. It never owns the maths: the algorithm does (flowalign/algorithms/)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from reward_models import build_reward
from reward_models.base import learned

from .algorithms import build_algorithm
from .algorithms.base import trainable_params
from .config import build_train_reward
from .data import iteration_prompts, load_prompt_rows
from .ema import EMA
from .evaluation import evaluate_prompts
from .images import read_frames, save_grid, save_video_grid
from .policies import load_policy
from .seeds import SAMPLE_GRID_OFFSET, rollout_generator
from .trackers import build_trackers, flat_config, log_grid, scalars


class TrainingError(RuntimeError):
    """A run that cannot continue (non-finite loss or reward); the last checkpoint is kept."""


class Updater:
    """What an algorithm calls to apply gradients: `backward` (gradients are all-reduced only on the
    last accumulation) and `step` (clip, optimiser, learning-rate schedule, EMA)."""

    def __init__(self, accelerator, model, params, optimizer, scheduler, ema, max_grad_norm, sharded_parts=None):
        self.acc, self.model, self.params = accelerator, model, params
        self.optimizer, self.scheduler, self.ema, self.max_grad_norm = optimizer, scheduler, ema, max_grad_norm
        self.sharded_parts = sharded_parts  # FSDP2 modules (run.sharding=fsdp2), else None (DDP / one process)

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        if not loss.requires_grad:
            # every row ran a frozen part (a Wan2.2 expert left out of training): a zero gradient, and
            # every process still takes part in the all-reduce
            loss = loss + 0.0 * sum(p.sum() for p in self.params)
        if self.sharded_parts is not None:  # FSDP2: reduce-scatter only on the accumulation's last backward
            from .sharding import set_gradient_sync

            set_gradient_sync(self.sharded_parts, last)
            loss.backward()
            return
        ctx = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
        with ctx:
            self.acc.backward(loss)

    def _clip(self) -> float:
        if self.sharded_parts is None:
            return float(self.acc.clip_grad_norm_(self.params, self.max_grad_norm))
        from .sharding import is_dtensor

        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)  # the norm over every shard
        return float(norm.full_tensor() if is_dtensor(norm) else norm)

    def step(self) -> dict:
        norm = self._clip()
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": norm, "lr": self.scheduler.get_last_lr()[0]}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return {"grad_norm": norm, "lr": self.scheduler.get_last_lr()[0]}


def load_state(path: str):
    """A checkpoint state written by torch.save, read with weights_only=True: tensors and plain
    containers only, so a crafted file in a folder a user points at cannot run code."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"checkpoint file {path!r} holds objects other than tensors and plain containers "
                         f"({str(e).splitlines()[0][:120]}); flowalign never unpickles code from a checkpoint: "
                         "resume from a checkpoint flowalign wrote, or start a fresh run.") from None


def numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))


def run_dir_in_use(out: str) -> list[str]:
    """What of an earlier run a run folder holds: its metrics and/or checkpoints (empty if none)."""
    return [n for n in ("metrics.jsonl",) if os.path.isfile(os.path.join(out, n))] + \
        (["checkpoints"] if _checkpoints(os.path.join(out, "checkpoints")) else [])


def check_fresh_run_dir(out: str) -> None:
    """A run folder belongs to one run: a fresh run (run.resume=false) in a folder that holds an
    earlier run's checkpoints or metrics would prune the new checkpoints by name and append to the
    old metrics, so it stops here, before anything is written."""
    used = run_dir_in_use(out)
    if used:
        raise ValueError(f"run.output_dir={out!r} already holds a run ({' and '.join(used)}); continue it with "
                         "run.resume=true, or give a new run.output_dir.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_holder(path: str) -> int | None:
    """The id of a live process, other than this one, that holds the lock file `path` (else None)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and _alive(pid) else None


def _in_use(out: str, pid: int) -> ValueError:
    return ValueError(f"run.output_dir={out!r} is in use by process {pid} (its .lock); wait for that run to end, "
                      "or give another run.output_dir.")


def check_run_lock(out: str) -> None:
    """Stop early (before any model loads) when a live process holds OUT/.lock."""
    pid = _lock_holder(os.path.join(out, ".lock"))
    if pid is not None:
        raise _in_use(out, pid)


def acquire_run_lock(out: str) -> str:
    """Create OUT/.lock holding this process's id; a live process's lock stops this run with one
    sentence, a dead one's (a killed run) is taken over. Returns the lock's path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_holder(path)
            if pid is not None:
                raise _in_use(out, pid) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise ValueError(f"could not lock run.output_dir={out!r} (.lock keeps reappearing); is another run starting there?")


def release_run_lock(path: str | None) -> None:
    """Remove the lock if this process holds it (None: this process took none)."""
    if not path:
        return
    with contextlib.suppress(OSError):
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.remove(path)


def _checkpoints(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root) if d.startswith("iter_") and ".tmp" not in d)


# keys a resumed run may change; every other key must equal the checkpoint's (it changes what is trained)
RESUMABLE_PREFIXES = ("run.output_dir", "run.max_iterations", "run.resume", "run.checkpoint_every",
                      "run.keep_checkpoints", "run.sample_every", "run.device", "run.progress", "run.max_weight_abs",
                      "run.trackers", "run.tracker_project", "eval.", "data.sample_prompts", "optim.lr",
                      "model.attention_backend", "model.gradient_checkpointing", "reward.device", "reward.args.device",
                      "reward.args.url", "reward.args.timeout", "reward.args.retries", "reward.args.backoff")


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def resume_checkpoint(cfg) -> str | None:
    """The checkpoint folder run.resume points at (None: a fresh start), checked before any model
    loads: it exists, and the config it was made with agrees with `cfg` on every key that changes
    what is trained. A fresh run (run.resume=false) in a used folder stops here too."""
    r, out = cfg.run.resume, cfg.run.output_dir
    if r is False or r == "false":
        check_fresh_run_dir(out)
        return None
    if r is True or r == "true":
        found = _checkpoints(os.path.join(out, "checkpoints"))
        if not found:
            return None
        path = found[-1]
    else:
        path = str(r)
        if not os.path.isfile(os.path.join(path, "state.json")):
            raise FileNotFoundError(f"run.resume={path!r} is not a checkpoint folder (no state.json); "
                                    f"pass one of {os.path.join(out, 'checkpoints')}/iter_*.")
    saved = os.path.join(path, "config.yaml")
    if os.path.isfile(saved):
        try:
            old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
        except Exception as e:  # a damaged file: say so instead of resuming blind
            raise ValueError(f"the checkpoint's config {saved!r} cannot be read ({str(e).splitlines()[0]}); "
                             "resume from an earlier checkpoint or start a new run.output_dir.") from None
        new = _flat(OmegaConf.to_container(cfg, resolve=True))
        # keys in both (a key a later flowalign adds, or one it removes, is not a difference of the run)
        fixed = sorted(k for k in set(old) & set(new) if old[k] != new[k]
                       and not any(k == p or k.startswith(p) for p in RESUMABLE_PREFIXES))
        if fixed:
            diffs = "; ".join(f"{k}: checkpoint {old[k]!r}, config {new[k]!r}" for k in fixed[:4])
            raise ValueError(f"run.resume: the config differs from the checkpoint {path!r} in keys a resumed run cannot "
                             f"change ({diffs}{'; ...' if len(fixed) > 4 else ''}); restore them, or start a new "
                             "run.output_dir. optim.lr, eval.*, run.* but run.seed, and where the reward runs "
                             "(reward.device, a served reward's url) may change.")
    return path


class Trainer:
    def __init__(self, cfg):
        from accelerate import Accelerator

        self.cfg = cfg
        run = cfg.run
        if int(os.environ.get("RANK", "0")) == 0:  # the main process takes the lock; the others follow it
            check_run_lock(run.output_dir)
        # a used folder without run.resume, or a config the checkpoint disagrees with, stops here
        self.resume_path = resume_checkpoint(cfg)
        self.acc = Accelerator(mixed_precision=cfg.optim.mixed_precision, cpu=run.device == "cpu")
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        a = cfg.algorithm
        # reward_aggregation=advantage is validated to come with reward.name=weighted and its weights
        part_weights = ([float(w) for w in cfg.reward.args.weights.values()]
                        if a.reward_aggregation == "advantage" else None)
        self.algo = build_algorithm(cfg.algorithm, cfg.sampler, part_weights=part_weights)
        # which prompts (samples or trees) this process rolls out; raises if they do not divide evenly
        self.n_local = len(self.algo.assign([{"prompt": ""}] * a.prompts_per_iteration, self.rank, self.world)[0])
        self.out = run.output_dir
        self.ckpt_root = os.path.join(self.out, "checkpoints")
        torch.manual_seed(run.seed)
        self.rows = load_prompt_rows(cfg.data.train_prompts)
        # every input file is read before the model loads, so a bad one costs seconds, not minutes
        self.eval_rows = load_prompt_rows(cfg.eval.prompts, key="eval.prompts") if cfg.eval.every else None

        m = cfg.model
        self.policy = load_policy(m.path, dtype=m.dtype, device=self.acc.device, attention_backend=m.attention_backend,
                                  max_sequence_length=m.max_sequence_length)
        self.policy.sigma_shift = cfg.sampler.shift
        self.policy.merge_lora = cfg.lora.merge_for_sampling
        if m.num_frames is not None:
            if self.policy.num_frames is None:
                raise ValueError(f"model.num_frames={m.num_frames} is set but {m.path!r} is an image model; remove it.")
            self.policy.num_frames = m.num_frames
        self.height = m.height or self.policy.defaults.get("height")
        self.width = m.width or self.policy.defaults.get("width")
        two_experts = getattr(self.policy, "experts", None) is not None  # Wan2.2 A14B
        if cfg.sampler.guidance_2 is not None:
            if not two_experts:
                raise ValueError(f"sampler.guidance_2={cfg.sampler.guidance_2} is set but {m.path!r} has one "
                                 "transformer; it is the low-noise expert's guidance of a Wan2.2 A14B model, so "
                                 "remove it.")
            self.policy.guidance_2 = cfg.sampler.guidance_2
        if m.experts != "both" and not two_experts:
            raise ValueError(f"model.experts={m.experts!r} needs a two-expert Wan2.2 checkpoint; {m.path!r} has one "
                             "transformer, so use model.experts=both.")
        if two_experts:
            self.policy.trained_experts = m.experts
        tr = self.policy.transformer
        tr.requires_grad_(False)
        if cfg.lora.enabled:
            self.policy.add_lora(cfg.lora.rank, cfg.lora.alpha, list(cfg.lora.target_modules))
        else:
            for part in self.policy.trainable_parts():
                part.requires_grad_(True)
        if two_experts:
            # a batch whose rows all sit on one side of the boundary leaves the other expert unused
            from accelerate.utils import DistributedDataParallelKwargs

            self.acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.policy.set_gradient_checkpointing(m.gradient_checkpointing)
        tr.train()
        # run.sharding=fsdp2: the trained parts become FSDP2 modules (their parameters DTensor shards)
        self.sharded = run.sharding == "fsdp2" and self.world > 1
        if run.sharding == "fsdp2" and not self.sharded:
            self.acc.print("run.sharding=fsdp2 with one process: nothing to shard, training unsharded.")
        self.sharded_parts = None
        if self.sharded:
            from .sharding import shard_fsdp2

            self.policy.merge_lora = False  # merging writes into the weights, which FSDP2 holds as shards
            self.unsharded_class = type(tr)  # the diffusers class, for the gathered export
            self.sharded_parts = list(self.policy.trainable_parts())
            shard_fsdp2(self.sharded_parts, self.acc.device, cfg.optim.mixed_precision)
        if not cfg.lora.enabled and (getattr(a, "kl_beta", 0) or 0) > 0:
            self.policy.keep_reference()  # the KL's reference: the weights before any update
        self.param_names = [n for n, p in tr.named_parameters() if p.requires_grad]
        self.params = trainable_params(self.policy)
        o = cfg.optim
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        per_iter = self.algo.updates_per_iteration(self.n_local)
        warm = max(1, o.warmup_iterations * per_iter)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
        if self.sharded:
            self.model, self.optimizer = tr, optimizer
        else:
            self.model, self.optimizer = self.acc.prepare(tr, optimizer)
        self.scheduler = scheduler
        if self.model is not tr:
            self.policy.forward_module = self.model
        self.ema = (EMA(self.params, o.ema_decay, update_every=o.ema_update_every, warmup=o.ema_warmup)
                    if o.ema_decay else None)
        self.updater = Updater(self.acc, self.model, self.params, self.optimizer, scheduler, self.ema, o.max_grad_norm,
                               sharded_parts=self.sharded_parts)
        self.reward = build_train_reward(cfg)
        self.learned_reward = learned(self.reward)  # trained after every batch, saved with checkpoints
        self.iteration = 0
        self.eval_reward = None
        if cfg.eval.every:
            args = OmegaConf.to_container(cfg.eval.reward_args)
            if cfg.eval.reward in ("shapes_geneval", "geneval"):
                args.setdefault("mode", "strict")  # GenEval's accuracy: 0/1 correctness per image
            self.eval_reward = build_reward(cfg.eval.reward, **args)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        name = os.path.join(self.ckpt_root, f"iter_{self.iteration:06d}")
        tmp = f"{name}.tmp{os.getpid()}"  # the main process's name, shared with the other processes below
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        tmp = self._broadcast_str(tmp)
        self.acc.wait_for_everyone()
        if self.sharded:  # every process writes its own shards (plain local tensors)
            from .sharding import to_local

            r = self.rank
            save_file({n: to_local(p).contiguous() for n, p in zip(self.param_names, self.params)},
                      os.path.join(tmp, f"trainable_rank{r}.safetensors"))
            torch.save(to_local(self.optimizer.state_dict()), os.path.join(tmp, f"optimizer_rank{r}.pt"))
            if self.ema is not None:
                torch.save(to_local(self.ema.state_dict()), os.path.join(tmp, f"ema_rank{r}.pt"))
            if hasattr(self.algo, "state_dict"):
                torch.save(to_local(self.algo.state_dict()), os.path.join(tmp, f"algorithm_rank{r}.pt"))
        if self.acc.is_main_process:
            OmegaConf.save(self.cfg, os.path.join(tmp, "config.yaml"), resolve=True)  # what resume compares
            if not self.sharded:
                tensors = {n: p.detach().cpu().contiguous() for n, p in zip(self.param_names, self.params)}
                save_file(tensors, os.path.join(tmp, "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                if self.ema is not None:
                    torch.save(self.ema.state_dict(), os.path.join(tmp, "ema.pt"))
                if hasattr(self.algo, "state_dict"):  # what an algorithm keeps between iterations (NFT's old policy)
                    torch.save(self.algo.state_dict(), os.path.join(tmp, "algorithm.pt"))
            torch.save(self.scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            if self.learned_reward is not None:  # a learned reward's head and optimiser
                torch.save(self.learned_reward.state_dict(), os.path.join(tmp, "reward.pt"))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({"iteration": self.iteration, "data_position": self.iteration, "seed": self.cfg.run.seed,
                           "world_size": self.world, "sharding": "fsdp2" if self.sharded else "none"}, f)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_rng_state()},
                   os.path.join(tmp, f"rng_{self.rank}.pt"))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(name, ignore_errors=True)
            os.replace(tmp, name)  # atomic: a crash leaves either the old or the new checkpoint
            for old in _checkpoints(self.ckpt_root)[: -self.cfg.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return name

    def _broadcast_str(self, text: str) -> str:
        """The main process's `text` on every process."""
        if self.world == 1:
            return text
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([text])[0]

    def resume(self) -> None:
        r = self.cfg.run.resume
        if r is False or r == "false":
            return
        path = self.resume_path  # found and checked against the config before the model loaded
        if path is None:
            self.acc.print(f"run.resume=true but {self.ckpt_root} has no checkpoint: starting fresh.")
            self._truncate_metrics(-1)  # a fresh start redoes everything an earlier attempt logged
            return
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        saved_sharded = state.get("sharding", "none") == "fsdp2"
        if saved_sharded != self.sharded or (self.sharded and state.get("world_size") != self.world):
            how = "as FSDP2 shards" if saved_sharded else "unsharded"
            raise ValueError(f"run.resume: checkpoint {path!r} was written {how} by {state.get('world_size')} "
                             f"process(es), this run is {'sharded' if self.sharded else 'unsharded'} over {self.world}; "
                             "resume with the run.sharding and number of processes that wrote it.")
        if self.sharded:
            self._resume_shards(path)
        else:
            tensors = load_file(os.path.join(path, "trainable.safetensors"))
            with torch.no_grad():
                for n, p in zip(self.param_names, self.params):
                    p.copy_(tensors[n])
            self.optimizer.load_state_dict(load_state(os.path.join(path, "optimizer.pt")))
            if self.ema is not None:
                self.ema.load_state_dict(load_state(os.path.join(path, "ema.pt")))
            if hasattr(self.algo, "load_state_dict"):
                self.algo.load_state_dict(load_state(os.path.join(path, "algorithm.pt")))
        self.scheduler.load_state_dict(load_state(os.path.join(path, "scheduler.pt")))
        if self.learned_reward is not None and os.path.isfile(os.path.join(path, "reward.pt")):
            self.learned_reward.load_state_dict(load_state(os.path.join(path, "reward.pt")))
        rng_file = os.path.join(path, f"rng_{self.rank}.pt")
        if os.path.isfile(rng_file):
            rng = load_state(rng_file)
            torch.set_rng_state(rng["torch"]), random.setstate(rng["python"]), set_numpy_rng_state(rng["numpy"])
        self.iteration = state["iteration"]
        self._apply_lr(float(self.cfg.optim.lr))
        self._truncate_metrics(self.iteration)
        self.acc.print(f"resumed from {path} at iteration {self.iteration} (optim.lr {self.cfg.optim.lr})")

    def _resume_shards(self, path: str) -> None:
        """This process's shards of the weights, optimiser, EMA and algorithm state (run.sharding=fsdp2)."""
        from .sharding import list_like, optimizer_state_like

        r = self.rank
        tensors = load_file(os.path.join(path, f"trainable_rank{r}.safetensors"))
        with torch.no_grad():
            for n, p in zip(self.param_names, self.params):
                p.to_local().copy_(tensors[n])
        self.optimizer.load_state_dict(optimizer_state_like(load_state(os.path.join(path, f"optimizer_rank{r}.pt")),
                                                            self.params))
        if self.ema is not None:
            ema = load_state(os.path.join(path, f"ema_rank{r}.pt"))
            self.ema.load_state_dict({**ema, "shadow": list_like(ema["shadow"], self.params)})
        if hasattr(self.algo, "load_state_dict"):
            st = load_state(os.path.join(path, f"algorithm_rank{r}.pt"))
            n = len(self.params)
            self.algo.load_state_dict({k: list_like(v, self.params) if isinstance(v, list) and len(v) == n else v
                                       for k, v in st.items()})

    def _apply_lr(self, lr: float) -> None:
        """The config's learning rate over the restored optimiser and schedule: the schedule keeps its
        position (warm-up), its base becomes `lr` (a resume after divergence with a lower optim.lr
        uses it)."""
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        for g, fn in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            g["initial_lr"] = lr
            g["lr"] = lr * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _truncate_metrics(self, upto: int) -> None:
        """Keep the metrics of iterations <= upto, atomically (a kill leaves the old file or the new
        one); a torn line (a kill in the middle of a write) is dropped, not fatal."""
        path = os.path.join(self.out, "metrics.jsonl")
        if not self.acc.is_main_process or not os.path.isfile(path):
            return
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["iteration"] <= upto:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn or foreign line
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # -- logging -------------------------------------------------------------------------------
    def log(self, metrics: dict) -> None:
        if not self.acc.is_main_process:
            return
        line = (json.dumps(metrics) + "\n").encode()
        fd = os.open(os.path.join(self.out, "metrics.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one append of the whole line: lines never interleave or split
        finally:
            os.close(fd)
        if self.acc.trackers:
            self.acc.log(scalars(metrics), step=metrics["iteration"])

    @torch.no_grad()
    def sample_grid(self) -> None:
        prompts = list(self.cfg.data.sample_prompts)
        if not prompts:
            return
        steps = self.cfg.sampler.eval_num_steps or self.cfg.sampler.num_steps
        with self.sampling_weights():
            imgs = self.policy.generate(prompts * 4, num_steps=steps, guidance=self.cfg.sampler.guidance,
                                        height=self.height, width=self.width, seed=self.cfg.run.seed + SAMPLE_GRID_OFFSET)
        if self.acc.is_main_process:
            name = os.path.join(self.out, "samples", f"iter_{self.iteration:06d}")
            frames = None
            if imgs.ndim == 5:  # videos [N, F, 3, H, W]: an animated grid and the middle frame
                gif = save_video_grid(imgs, name + ".gif", nrow=len(prompts), scale=2)
                frames = read_frames(gif)
                imgs = imgs[:, imgs.shape[1] // 2]
            png = save_grid(imgs, name + ".png", nrow=len(prompts), scale=2)
            if self.acc.trackers:
                log_grid(self.acc.trackers, read_frames(png)[0], self.iteration, frames)

    def eval_weights(self):
        """A context in which the trainable parameters hold the weights to evaluate and save: the EMA
        weights when EMA is on, else the current ones."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def sampling_weights(self):
        """The weights sample grids and evaluations run on: the EMA weights when EMA is on, merged into
        the base weights (lora.merge_for_sampling)."""
        with self.eval_weights(), self.policy.sampling_weights():
            yield

    def evaluate(self) -> dict:
        """The held-out evaluation (eval.*), with EMA weights when EMA is on; logged to metrics."""
        e = self.cfg.eval
        steps = e.num_steps or self.cfg.sampler.eval_num_steps or self.cfg.sampler.num_steps
        with self.sampling_weights():
            m = evaluate_prompts(self.policy, self.eval_rows, self.eval_reward, images_per_prompt=e.images_per_prompt,
                                 num_steps=steps, guidance=self.cfg.sampler.guidance, seed=e.seed,
                                 batch_size=e.batch_size, height=self.height, width=self.width, rank=self.rank,
                                 world=self.world, gather=self.acc.gather if self.world > 1 else None)
        metrics = {"iteration": self.iteration, **m}
        self.log(metrics)
        return metrics

    def _weight_abs_max(self) -> float:
        """The largest |w| of the trainable weights (inf or nan if any is not finite)."""
        with torch.no_grad():
            return max(float(p.detach().abs().max()) for p in self.params) if self.params else 0.0

    # -- the loop ------------------------------------------------------------------------------
    def _clock(self) -> float:
        """Wall-clock seconds after the device's queued work is done (phase timings)."""
        if self.acc.device.type == "cuda":
            torch.cuda.synchronize(self.acc.device)
        return time.time()

    def iterate(self) -> dict:
        a, seed = self.cfg.algorithm, self.cfg.run.seed
        t0 = self._clock()
        metas = iteration_prompts(self.rows, self.iteration, a.prompts_per_iteration, seed)
        mine, gids = self.algo.assign(metas, self.rank, self.world)
        gen = rollout_generator(seed, self.iteration, self.rank)
        nfe0 = self.policy.nfe
        ro = self.algo.rollout(self.policy, mine, gids.to(self.acc.device), gen, self.height, self.width,
                               seed=seed, iteration=self.iteration)
        nfe1 = self.policy.nfe
        t1 = self._clock()
        with torch.no_grad():
            rewards = self.algo.score(self.policy, ro, self.reward).to(self.acc.device)
        nfe2 = self.policy.nfe
        t2 = self._clock()
        reward_stats = {}
        if self.learned_reward is not None:  # a learned reward (Adv-GRPO's discriminator) trains on this batch
            # decoded here: score() keeps only rewards (and DenseGRPO's scores ODE completions of every state),
            # so this is a second VAE decode of the finals, the price of an algorithm-independent score()
            with torch.no_grad():
                images = self.policy.decode(self.algo.final_latents(ro))
            reward_stats = self.learned_reward.update(images, self.algo.final_prompts(ro), iteration=self.iteration)
        adv = self.algo.advantages(ro, rewards, self.acc, iteration=self.iteration)
        all_rewards, adv_all = adv.all_rewards, self.acc.gather(adv.local.contiguous())
        # Adv-GRPO's alternate schedule reserves iterations for the discriminator: no policy update then
        if self.learned_reward is None:
            stats = self.algo.policy_step(self.policy, ro, adv, self.updater, gen)
        elif self.learned_reward.trains_generator(self.iteration):
            stats = {**self.algo.policy_step(self.policy, ro, adv, self.updater, gen), "generator_step": 1.0}
        else:
            stats = {"generator_step": 0.0}
        t3 = self._clock()
        self.iteration += 1
        final_rewards = all_rewards if all_rewards.dim() == 1 else all_rewards[:, -1]  # dense: the final image's
        metrics = {
            "iteration": self.iteration, "reward_mean": final_rewards.mean().item(),
            "reward_std": final_rewards.std().item(),
            "advantage_mean": adv_all.mean().item(), "advantage_abs_mean": adv_all.abs().mean().item(),
            "advantage_std": adv_all.std().item(), **stats, **reward_stats,
            "nfe_rollout": (nfe1 - nfe0) * self.world, "nfe_reward": (nfe2 - nfe1) * self.world,
            "nfe_train": (self.policy.nfe - nfe2) * self.world, "iteration_time": time.time() - t0,
            # where the iteration's time went: rollout, scoring (DenseGRPO's completions included), update
            "time_rollout": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2,
        }
        metrics["nfe"] = metrics["nfe_rollout"] + metrics["nfe_reward"] + metrics["nfe_train"]
        metrics["weight_abs_max"] = self._weight_abs_max()
        limit = self.cfg.run.max_weight_abs
        if not math.isfinite(metrics["reward_mean"]) or not math.isfinite(metrics.get("loss", 0.0)) \
                or not math.isfinite(metrics.get("grad_norm", 0.0)) or not math.isfinite(metrics["weight_abs_max"]) \
                or (limit is not None and metrics["weight_abs_max"] > limit):
            last = _checkpoints(self.ckpt_root)
            raise TrainingError(f"divergence at iteration {self.iteration} (reward {metrics['reward_mean']}, loss "
                                f"{metrics.get('loss')}, grad norm {metrics.get('grad_norm')}, largest trainable weight "
                                f"{metrics['weight_abs_max']:.3g}, run.max_weight_abs {limit}); nothing of it was "
                                f"checkpointed; the last good checkpoint is {last[-1] if last else 'none'}: resume it with "
                                "run.resume=true and a lower optim.lr (the resumed run uses the new rate).")
        return metrics

    def train(self) -> str:
        lock = acquire_run_lock(self.out) if self.acc.is_main_process else None
        try:
            return self._train()
        finally:
            release_run_lock(lock)

    def _train(self) -> str:
        cfg = self.cfg
        if cfg.run.resume in (False, "false"):
            check_fresh_run_dir(self.out)
        if self.acc.is_main_process:
            os.makedirs(self.out, exist_ok=True)
            OmegaConf.save(cfg, os.path.join(self.out, "config.yaml"), resolve=True)
            self.acc.log_with = build_trackers(cfg.run.trackers, self.out, cfg.run.tracker_project,
                                              config=flat_config(cfg))
            self.acc.init_trackers(cfg.run.tracker_project)
        self.resume()
        if cfg.run.sample_every and self.iteration == 0:
            self.sample_grid()
        if cfg.eval.every and self.iteration == 0:
            self.evaluate()
        bar = tqdm(total=cfg.run.max_iterations, initial=self.iteration, desc="flowalign train",
                   disable=not (cfg.run.progress and self.acc.is_main_process))
        while self.iteration < cfg.run.max_iterations:
            metrics = self.iterate()
            self.log(metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics.get('kl', 0):.2e}")
            if self.iteration % cfg.run.checkpoint_every == 0 or self.iteration == cfg.run.max_iterations:
                self.save_checkpoint()
            if cfg.run.sample_every and self.iteration % cfg.run.sample_every == 0:
                self.sample_grid()
            if cfg.eval.every and self.iteration % cfg.eval.every == 0:
                ev = self.evaluate()
                bar.write(f"iteration {self.iteration}: " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in ev.items()
                                                                     if k.startswith("eval/")))
        bar.close()
        final = self.save_final()
        self.acc.wait_for_everyone()
        self.acc.end_training()  # finishes the trackers; a clean shutdown of the process group, if any
        return final

    def save_final(self) -> str:
        """lora/pytorch_lora_weights.safetensors (diffusers format) or model/ for full fine-tuning;
        EMA weights when EMA is on."""
        self.acc.wait_for_everyone()
        if self.sharded:
            return self._save_final_gathered()
        if not self.acc.is_main_process:
            return ""
        ctx = self.eval_weights()
        with ctx:
            if self.cfg.lora.enabled:
                out = os.path.join(self.out, "lora")
                self.policy.save_lora(out)
            else:
                out = os.path.join(self.out, "model")
                self.policy.pipe.save_pretrained(out)
        return out

    def _save_final_gathered(self) -> str:
        """run.sharding=fsdp2: every process takes part in gathering the full weights; the main process
        writes them as the unsharded run would (diffusers' LoRA file, or model/)."""
        from .sharding import full_state_dict

        with self.eval_weights():
            full = full_state_dict(self.policy.transformer)
        out = os.path.join(self.out, "lora" if self.cfg.lora.enabled else "model")
        if self.acc.is_main_process:
            if self.cfg.lora.enabled:
                from peft.utils import get_peft_model_state_dict

                from .policies.diffusers_base import lora_metadata

                layers = get_peft_model_state_dict(self.policy.transformer, state_dict=full)
                type(self.policy.pipe).save_lora_weights(
                    out, transformer_lora_layers=layers,
                    transformer_lora_adapter_metadata=lora_metadata(self.policy.transformer))
            else:
                plain = self.unsharded_class.from_config(self.policy.transformer.config)
                plain.load_state_dict(full)
                plain.to(self.policy.dtype)  # the checkpoint's dtype (model.dtype), as the unsharded export
                pipe = self.policy.pipe
                sharded, pipe.transformer = pipe.transformer, plain
                try:
                    pipe.save_pretrained(out)
                finally:
                    pipe.transformer = sharded
        self.acc.wait_for_everyone()
        return out if self.acc.is_main_process else ""


def train(cfg) -> str:
    """Run a training job from a validated config; returns the final weights' folder."""
    return Trainer(cfg).train()
