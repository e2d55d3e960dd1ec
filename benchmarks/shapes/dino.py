"""Train the shapes world's self-supervised encoder (Adv-GRPO's frozen backbone on the testbed), on CPU.

    python -m benchmarks.shapes.dino --out flowalign/shapes/dino_ssl --minutes 5

Adv-GRPO's discriminator reads a frozen DINOv2 that has seen the world; a random-feature DINOv2
(flowalign/shapes/dino) has not, and its discriminator ranks the images of a prompt the wrong way
round (docs/results.md, "Reward signal"). No pretrained DINOv2 can be fetched here or fits 32x32
scenes, so this script trains one the way DINO does (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"): a student and a teacher of the same architecture (transformers'
Dinov2Model, the config of flowalign/shapes/dino, plus a projection head onto K prototypes); the
teacher is an exponential moving average of the student (momentum rising from 0.996 to 1 on a cosine),
its outputs are centred (a running mean of its logits) and sharpened (temperature 0.04 against the
student's 0.1), and the student learns to predict the teacher's distribution over prototypes for
the other views of the same image: two global crops (32x32, 50-100 % of the scene) seen by both, and
local crops (16x16, 15-45 %) seen by the student only. Views are cropped and mildly degraded (pixel
noise, blur, brightness), never flipped or hue-shifted, so position and colour stay in the features.

Scenes are freshly rendered from every prompt of the world each step. Saves the teacher's backbone
with save_pretrained (what the reward loads) and prints a 1-nearest-neighbour probe, the share of
held-out renders whose nearest training render (cosine of the CLS feature) comes from the same prompt,
for this encoder and for the random one; both go to --results."""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flowalign.report import write_json
from flowalign.shapes import DINO_DIR, DINO_SSL_DIR
from reward_models.adversarial import IMAGENET_MEAN, IMAGENET_STD
from reward_models.shapes.prompts import all_prompts
from reward_models.shapes.render import render_prompt

RESULTS = os.path.join(os.path.dirname(__file__), "..", "results", "dino_ssl.json")


# ---------------------------------------------------------------- the maths (pure functions)

def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float = 0.1,
              teacher_temp: float = 0.04) -> Tensor:
    """DINO's cross-entropy. student [Vs, B, K] logits of Vs views, teacher [Vt, B, K] of the first Vt
    of them (the global views); the mean over every pair (teacher view i, student view j != i) of
    -sum_k p_t(k) log p_s(k), with p_t = softmax((teacher - center) / teacher_temp) and
    p_s = softmax(student / student_temp), averaged over the batch."""
    p_t = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_p_s = F.log_softmax(student / student_temp, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if i == j:
                continue
            total = total - (p_t[i] * log_p_s[j]).sum(-1).mean()
            pairs += 1
    return total / pairs


def updated_center(center: Tensor, teacher: Tensor, momentum: float = 0.9) -> Tensor:
    """The running centre of the teacher's logits: m c + (1 - m) mean over views and images."""
    return momentum * center + (1 - momentum) * teacher.reshape(-1, teacher.shape[-1]).mean(0)


def teacher_momentum(step: int, total: int, base: float = 0.996) -> float:
    """DINO's cosine schedule from `base` at step 0 to 1 at the last step."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total - 1)) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


# ---------------------------------------------------------------- the model

class ProjectionHead(nn.Module):
    """DINO's head: a 3-layer MLP to a bottleneck, l2-normalised, then K fixed prototypes of unit norm."""

    def __init__(self, dim: int, prototypes: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        # fixed random prototypes: DINO freezes its last layer early on, because prototypes that learn
        # can all move together and make every output uniform (measured here: the loss rose to log K)
        self.register_buffer("prototypes", torch.randn(prototypes, bottleneck))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, head: ProjectionHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(pixel_values=normalize(x)).last_hidden_state[:, 0])


def new_backbone(seed: int):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config.from_pretrained(DINO_DIR)  # the random encoder's architecture
    return Dinov2Model(cfg)


def normalize(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> the ImageNet normalisation the reward applies to a Dinov2Model."""
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------- data

def world_rows() -> list[dict]:
    return [r for rows in all_prompts("train").values() for r in rows]


def render_batch(rows: list[dict], rng: random.Random, n: int) -> Tensor:
    """n freshly rendered scenes of random prompts -> [n, 3, 32, 32] in [0, 1]."""
    imgs = [render_prompt(rows[rng.randrange(len(rows))], seed=rng.randrange(1 << 30))[0] for _ in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def crops(x: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
    """A random square crop of each image covering `scale` of its area, resized to size x size,
    then mildly degraded (brightness 0.9-1.1 per image, pixel noise up to 0.05, a blur half the time)."""
    b = x.shape[0]
    s = torch.sqrt(torch.empty(b).uniform_(*scale, generator=gen))  # side as a share of the image
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - s)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - s)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = s, s, cx, cy
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        k = torch.ones(3, 1, 3, 3) / 9
        v[blur] = F.conv2d(F.pad(v[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    v = v * torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=gen)
    v = v + torch.randn(v.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.05
    return v.clamp(0, 1)


# ---------------------------------------------------------------- the probe

@torch.no_grad()
def cls_features(backbone, images: Tensor, batch: int = 256) -> Tensor:
    out = [backbone(pixel_values=normalize(images[i:i + batch])).last_hidden_state[:, 0]
           for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def nn_probe(backbone, prompts: int = 100, per_prompt: int = 4, seed: int = 1) -> float:
    """Share of query renders whose nearest (cosine, CLS) gallery render shares its prompt; `prompts`
    random training prompts, `per_prompt` gallery and `per_prompt` query renders each."""
    rng = random.Random(seed)
    rows = rng.sample(world_rows(), prompts)
    gal = [render_prompt(r, seed=rng.randrange(1 << 30))[0] for r in rows for _ in range(per_prompt)]
    qry = [render_prompt(r, seed=rng.randrange(1 << 30))[0] for r in rows for _ in range(per_prompt)]
    to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    g, q = cls_features(backbone, to_t(gal)), cls_features(backbone, to_t(qry))
    labels = torch.arange(prompts).repeat_interleave(per_prompt)
    return float((labels[(q @ g.T).argmax(1)] == labels).float().mean())


# ---------------------------------------------------------------- training

def train(minutes: float, *, batch: int = 64, local_views: int = 4, lr: float = 1.25e-4, prototypes: int = 1024,
          steps: int | None = None, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train for `minutes` of wall-clock (or exactly `steps` steps); returns (teacher backbone, log)."""
    torch.manual_seed(seed)
    student = Encoder(new_backbone(seed), ProjectionHead(64, prototypes))
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.04)
    center = torch.zeros(prototypes)
    rows, rng, gen = world_rows(), random.Random(seed), torch.Generator().manual_seed(seed)
    # the momentum schedule needs a length: estimate it from the first steps when training by time
    total = steps or 10**9
    t0, step, losses = time.time(), 0, []
    bar = tqdm(total=steps or int(minutes * 60), disable=not progress, unit="step",
               bar_format=None if steps else "{l_bar}{bar}| {n_fmt}/{total_fmt} s{postfix}")
    while True:
        if steps is not None and step >= steps:
            break
        elapsed = time.time() - t0
        if steps is None and elapsed >= minutes * 60:
            break
        if steps is None and step == 20:  # steps per second are known now
            total = max(21, int(20 * minutes * 60 / max(elapsed, 1e-6)))
        x = render_batch(rows, rng, batch)
        views = [crops(x, 32, (0.5, 1.0), gen) for _ in range(2)]
        views += [crops(x, 16, (0.15, 0.45), gen) for _ in range(local_views)]
        with torch.no_grad():
            t_out = torch.stack([teacher(v) for v in views[:2]])
        s_out = [student(v) for v in views]
        loss = dino_loss(torch.stack(s_out), t_out, center)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        ema_update(teacher, student, teacher_momentum(min(step, total - 1), total))
        center = updated_center(center, t_out)
        losses.append(float(loss.detach()))
        step += 1
        if steps:
            bar.update(1)
        else:
            bar.n = min(int(time.time() - t0), bar.total)
            bar.refresh()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    return teacher.backbone, {"steps": step, "seconds": time.time() - t0, "loss_first": losses[0],
                              "loss_last": float(np.mean(losses[-20:]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DINO_SSL_DIR, help="where the trained Dinov2Model is saved")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead of --minutes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.25e-4, help="DINO's 5e-4 x batch / 256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=RESULTS)
    args = ap.parse_args(argv)
    if args.minutes <= 0 and args.steps is None:
        raise SystemExit(f"--minutes {args.minutes} must be positive; or pass --steps N.")
    from transformers import Dinov2Model

    backbone, log = train(args.minutes, batch=args.batch, lr=args.lr, steps=args.steps, seed=args.seed)
    backbone.eval().save_pretrained(args.out)
    trained = Dinov2Model.from_pretrained(args.out).eval()  # the saved files, as the reward loads them
    random_probe = nn_probe(Dinov2Model.from_pretrained(DINO_DIR).eval())
    trained_probe = nn_probe(trained)
    print(f"1-NN same-prompt probe: random encoder {random_probe:.3f}, trained {trained_probe:.3f} "
          f"({log['steps']} steps, {log['seconds'] / 60:.1f} min, loss {log['loss_first']:.3f} -> {log['loss_last']:.3f})")
    out = {"encoder": os.path.relpath(args.out), "nn_probe_random": random_probe, "nn_probe_trained": trained_probe, **log,
           "settings": {**vars(args), "out": os.path.relpath(args.out),
                        "results": os.path.relpath(args.results) if args.results else ""}}
    if args.results:
        write_json(args.results, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
