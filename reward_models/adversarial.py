"""Adv-GRPO's adversarial reward: a frozen DINOv2 backbone (transformers Dinov2Model from a local
path or hub id) and a trainable head h = Linear(D, 512)-GELU-Linear(512, 1) on L2-normalised
features. The reward of an image is
    R(x) = 0.7 h(f_cls) + 0.3 mean over 64 random patch tokens of h(f_patch),
and the head is trained as a hinge discriminator with reference images as positives and generated
images as negatives, with the same 0.7 / 0.3 split:
    L = 0.7 [relu(1 - h(cls_real)) + relu(1 + h(cls_fake))] + 0.3 [same on the patch tokens].
Adam (lr 1e-4, betas (0.5, 0.999)). Two schedules: `k_steps` (k head updates per generator update;
the released code uses 9:1) and `while_lower` (update the head only while the mean reward of the
reference images is below that of the generated ones). The engine calls `update(images)` after
scoring each batch and saves `state_dict()` (head + optimiser) in every checkpoint.
Images are preprocessed in torch (resize to the backbone's size, ImageNet normalisation), so the
reward is differentiable in the image."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import default_device
from .clip_common import check_local

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DiscriminatorHead(nn.Module):
    def __init__(self, dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f).squeeze(-1)


def adversarial_scores(head: nn.Module, cls: Tensor, patches: Tensor, patch_idx: Tensor,
                       global_weight: float = 0.7) -> tuple[Tensor, Tensor]:
    """(global h(cls) [B], local mean_j h(patch_j) [B]) on L2-normalised features."""
    g = head(F.normalize(cls, dim=-1))
    loc = head(F.normalize(patches[:, patch_idx], dim=-1)).mean(dim=1)
    return g, loc


def hinge_loss(real: tuple[Tensor, Tensor], fake: tuple[Tensor, Tensor], global_weight: float = 0.7) -> Tensor:
    """0.7 [relu(1 - g_real) + relu(1 + g_fake)] + 0.3 [the same on the local scores], batch means."""
    parts = []
    for r, f in zip(real, fake):
        parts.append(F.relu(1 - r).mean() + F.relu(1 + f).mean())
    return global_weight * parts[0] + (1 - global_weight) * parts[1]


def load_reference_images(folder: str, size: int | None = None) -> Tensor:
    """All PNG/JPEG images of a folder -> [N, 3, H, W] in [0, 1]."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"reference image folder {folder!r} does not exist; pass a folder of PNG/JPEG images.")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not files:
        raise FileNotFoundError(f"reference image folder {folder!r} holds no PNG/JPEG images.")
    out = []
    for f in files:
        img = Image.open(os.path.join(folder, f)).convert("RGB")
        if size:
            img = img.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


class AdversarialDinoReward:
    learns = True  # a LearnedReward: the engine trains its head after every batch
    differentiable = True

    def __init__(self, backbone: str = "facebook/dinov2-base", reference_dir: str | None = None, *,
                 hidden: int = 512, global_weight: float = 0.7, num_patches: int = 64, lr: float = 1e-4,
                 betas: Sequence[float] = (0.5, 0.999), schedule: str = "k_steps", k: int = 9,
                 batch_size: int = 16, device: str | None = None, seed: int = 0):
        from transformers import Dinov2Model

        check_local(backbone, "DINOv2", "pass a Dinov2Model directory or a hub id")
        if schedule not in ("k_steps", "while_lower"):
            raise ValueError(f"schedule {schedule!r} is unknown; use k_steps or while_lower.")
        self.device = default_device(device)
        try:
            self.backbone = Dinov2Model.from_pretrained(backbone).to(self.device).eval().requires_grad_(False)
        except OSError as e:
            raise FileNotFoundError(f"could not load the DINOv2 checkpoint {backbone!r}: {str(e).splitlines()[0]}; "
                                    "pass a local Dinov2Model folder or a reachable hub id.") from None
        cfg = self.backbone.config
        self.size = cfg.image_size
        self.head = DiscriminatorHead(cfg.hidden_size, hidden).to(self.device)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=lr, betas=tuple(betas))
        self.global_weight, self.num_patches = global_weight, num_patches
        self.schedule, self.k, self.batch_size = schedule, k, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.reference = load_reference_images(reference_dir) if reference_dir else None
        self.name = "adversarial_dino"
        self.updates = 0

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(images.float().to(self.device), size=(self.size, self.size), mode="bicubic",
                          align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        h = self.backbone(pixel_values=(x - mean) / std).last_hidden_state
        return h[:, 0], h[:, 1:]

    def _patch_idx(self, n: int) -> Tensor:
        k = min(self.num_patches, n)
        return torch.randperm(n, generator=self.generator)[:k].to(self.device)

    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls, patches = self.features(images)
        return adversarial_scores(self.head, cls, patches, self._patch_idx(patches.shape[1]), self.global_weight)

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            g, loc = self.scores(images[i:i + self.batch_size])
            out.append(self.global_weight * g + (1 - self.global_weight) * loc)
        return torch.cat(out).float()

    def head_step(self, real: Tensor, fake: Tensor) -> float:
        """One Adam step of the hinge loss on a real and a fake batch; returns the loss."""
        with torch.no_grad():
            rc, rp = self.features(real)
            fc, fp = self.features(fake)
        idx = self._patch_idx(rp.shape[1])
        loss = hinge_loss(adversarial_scores(self.head, rc, rp, idx, self.global_weight),
                          adversarial_scores(self.head, fc, fp, idx, self.global_weight), self.global_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        return float(loss.detach())

    def update(self, images: Tensor, prompts: Sequence[str] | None = None, **context) -> dict:
        """Called by the engine after each generator batch: train the head against reference images."""
        if self.reference is None:
            return {}
        fake = images.detach()
        losses = []
        steps = self.k if self.schedule == "k_steps" else 1
        for _ in range(steps):
            real = self.reference[torch.randint(len(self.reference), (fake.shape[0],), generator=self.generator)]
            if self.schedule == "while_lower":
                with torch.no_grad():
                    if self(real, []).mean() >= self(fake, []).mean():
                        break
            losses.append(self.head_step(real, fake))
        return {"disc_loss": sum(losses) / len(losses)} if losses else {"disc_loss": 0.0}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict(), "updates": self.updates,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self.updates = state["updates"]
        self.generator.set_state(state["generator"])
