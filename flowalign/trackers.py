"""Experiment trackers (`run.trackers`), through accelerate's tracker classes: every iteration's
scalar metrics and every sample grid go to each of them; metrics.jsonl is always written.

    run:
      trackers: [tensorboard, wandb]   # default [tensorboard]; [] for metrics.jsonl alone
      tracker_project: flowalign       # the wandb / comet / ... project

tensorboard writes OUT/tensorboard; wandb writes its files under OUT/wandb, names the run after
OUT, and resumes the same wandb run when the training run resumes (its id is kept in
OUT/wandb_run_id). WANDB_MODE=offline works without an account."""

from __future__ import annotations

import importlib.util
import os
import uuid

import numpy as np

# tracker name -> the package it needs
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet_ml",
            "aim": "aim", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


def check_trackers(names) -> None:
    """One sentence for an unknown tracker or one whose package is missing."""
    for name in names or []:
        if name not in PACKAGES:
            raise ValueError(f"run.trackers has {name!r}; use any of {sorted(PACKAGES)} (or [] for metrics.jsonl "
                             "alone).")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(f"run.trackers has {name!r} but the package {PACKAGES[name]!r} is not installed; "
                             f"pip install {PACKAGES[name]} (wandb: pip install 'flowalign[wandb]') or drop it.")


def _wandb_id(out: str) -> str:
    """The wandb run id of this training run: created once, kept in OUT/wandb_run_id (resume continues it)."""
    path = os.path.join(out, "wandb_run_id")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    run_id = uuid.uuid4().hex[:12]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(run_id)
    os.replace(tmp, path)
    return run_id


def build_trackers(names, out: str, project: str, config: dict | None = None) -> list:
    """accelerate tracker objects for `names` (started by Accelerator.init_trackers)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker, WandBTracker

    trackers = []
    for name in names or []:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", out))
        elif name == "wandb":
            os.makedirs(out, exist_ok=True)
            trackers.append(WandBTracker(project, dir=out, name=os.path.basename(os.path.abspath(out)),
                                         id=_wandb_id(out), resume="allow", config=config))
        else:
            trackers.append(LOGGER_TYPE_TO_CLASS[name](project))
    return trackers


def flat_config(cfg) -> dict:
    """The resolved config as {"a.b.c": value} (values wandb shows as the run's config)."""
    from omegaconf import OmegaConf

    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def scalars(metrics: dict) -> dict:
    """The numeric metrics of one log line (no iteration, no None)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_grid(trackers, grid: np.ndarray, step: int, frames: np.ndarray | None = None) -> None:
    """A sample grid (uint8 [H, W, 3]) as an image, and a video grid (uint8 [F, H, W, 3]) as a
    video where the tracker takes one."""
    for t in trackers:
        if t.name == "tensorboard":
            t.writer.add_image("samples", grid, global_step=step, dataformats="HWC")
            if frames is not None:
                t.writer.add_video("samples_video", frames.transpose(0, 3, 1, 2)[None], global_step=step, fps=8)
            t.writer.flush()
        elif t.name == "wandb":
            import wandb

            logged = {"samples": wandb.Image(grid)}
            if frames is not None:
                logged["samples_video"] = wandb.Video(frames.transpose(0, 3, 1, 2), fps=8, format="gif")
            t.run.log(logged, step=step)
        elif hasattr(t, "log_images"):
            t.log_images({"samples": [grid]}, step=step)
