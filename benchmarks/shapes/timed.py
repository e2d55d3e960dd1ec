"""The training loop shared by the shapes companions' trainers (captioner, CLIP): AdamW with a short
warm-up and a cosine decay to 5 % over a wall-clock budget, gradient clipping at 1, a progress bar."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm import tqdm


def train_for(model: torch.nn.Module, minutes: float, lr: float, step_loss: Callable[[], tuple[torch.Tensor, dict]],
              desc: str) -> tuple[int, float, float]:
    """Train `model` for `minutes` of wall-clock time; `step_loss()` draws a batch and returns (loss, extra
    progress-bar fields). Returns (steps, final loss, seconds). Leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    budget = minutes * 60
    t0, step, loss = time.time(), 0, torch.tensor(float("nan"))
    bar = tqdm(desc=desc, unit="step", mininterval=10)
    model.train()
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:  # short warm-up, then cosine to 5 %
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        loss, extra = step_loss()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", **extra, refresh=False)
    bar.close()
    model.eval()
    return step, float(loss.item()), time.time() - t0
