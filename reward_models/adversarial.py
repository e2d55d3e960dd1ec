"""Adv-GRPO's adversarial reward (showlab/Adv-GRPO `scripts/train_sd3_fast_dino_patch.py` and
`adv_grpo/rewards.py:dino_patch_cotrain_score`): a frozen DINOv2 backbone (transformers Dinov2Model
from a local path or hub id; a CLIPVisionModel is read the same way, CLS token then patches) and a
trainable head h = Linear(D, 512)-GELU-Linear(512, 1).

The reward of an image, on features divided by (||f|| + 1e-6), with 64 patch tokens drawn at random
(with replacement) for every image:
    R(x) = 0.7 h(f_cls) + 0.3 mean_j h(f_patch_j).
The head is trained as a hinge discriminator, reference images positive and generated images
negative. `disc_loss: reference` (the default) is the released code's loss, on the raw features:
    L = 0.5 [mean relu(1 - h(cls_real)) + mean relu(1 + h(cls_fake))]
        + 0.3 * 0.5 [mean over images and patches of relu(1 - h(p_real)) + relu(1 + h(p_fake))];
`disc_loss: normalized` trains on the normalised features the reward reads, with the reward's
0.7 / 0.3 split of the hinges of h(cls) and of the mean patch logit (one scale for training and
scoring). Adam (lr 1e-4, betas (0.5, 0.999)).

Schedules: `alternate` (the reference's, default): of every `d_times` iterations the first
d_times - 1 train the head once on that iteration's fresh rollout and skip the generator update, the
last trains the generator only (`trains_generator`); `k_steps`: k head updates on every batch and a
generator update every iteration; `while_lower`: head updates while the reference images score
lower than the generated ones. References: `reference_dir` alone gives random references;
`reference_map` (a JSON file {prompt: [file names in reference_dir]}, the reference's
prompt2img json) matches each generated image with its own prompt's references, as there.

The engine calls `update(images, prompts, iteration=)` after scoring each batch and saves
`state_dict()` (head, optimiser, random state) in every checkpoint. Images are preprocessed in torch
(bicubic resize to the backbone's size, ImageNet normalisation), so the reward is differentiable."""

from __future__ import annotations

import json
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
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKBONES = {"dinov2": ("Dinov2Model", IMAGENET_MEAN, IMAGENET_STD),
             "clip_vision_model": ("CLIPVisionModel", CLIP_MEAN, CLIP_STD)}
SCHEDULES = ("alternate", "k_steps", "while_lower")
DISC_LOSSES = ("reference", "normalized")


class DiscriminatorHead(nn.Module):
    def __init__(self, dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f).squeeze(-1)


def unit(f: Tensor) -> Tensor:
    """f / (||f|| + 1e-6), the reward's feature normalisation."""
    return f / (f.norm(dim=-1, keepdim=True) + 1e-6)


def pick_patches(patches: Tensor, idx: Tensor) -> Tensor:
    """patches [B, N, D], idx [B, n] -> [B, n, D] (each image its own patch indices)."""
    return torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def adversarial_scores(head: nn.Module, cls: Tensor, patches: Tensor, patch_idx: Tensor) -> tuple[Tensor, Tensor]:
    """(global h(cls) [B], local mean_j h(patch_j) [B]) on normalised features; patch_idx [B, n]."""
    return head(unit(cls)), head(unit(pick_patches(patches, patch_idx))).mean(dim=1)


def reference_hinge_loss(head: nn.Module, real: tuple[Tensor, Tensor], fake: tuple[Tensor, Tensor],
                         patch_loss_weight: float = 0.3) -> Tensor:
    """The released code's discriminator loss on raw features. real / fake = (cls [B, D], sampled
    patches [B, n, D])."""
    image = 0.5 * (F.relu(1 - head(real[0])).mean() + F.relu(1 + head(fake[0])).mean())
    patch = 0.5 * (F.relu(1 - head(real[1])).mean() + F.relu(1 + head(fake[1])).mean())
    return image + patch_loss_weight * patch


def normalized_hinge_loss(head: nn.Module, real: tuple[Tensor, Tensor], fake: tuple[Tensor, Tensor],
                          global_weight: float = 0.7) -> Tensor:
    """flowalign's option: the hinges of the reward's own two scores (normalised features),
    gw [relu(1 - g_real) + relu(1 + g_fake)] + (1 - gw) [the same on the mean patch logits]."""
    r = (head(unit(real[0])), head(unit(real[1])).mean(1))
    f = (head(unit(fake[0])), head(unit(fake[1])).mean(1))
    parts = [F.relu(1 - a).mean() + F.relu(1 + b).mean() for a, b in zip(r, f)]
    return global_weight * parts[0] + (1 - global_weight) * parts[1]


def load_backbone(path: str):
    """A frozen vision encoder saved with save_pretrained -> (model, (mean, std) of its input
    normalisation). DINOv2 (Dinov2Model, the reference's) or a CLIP vision tower (CLIPVisionModel);
    either gives the CLS token first in `last_hidden_state`, then the patch tokens."""
    import transformers
    from transformers import AutoConfig

    try:
        kind = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"could not load the encoder checkpoint {path!r}: {str(e).splitlines()[0]}; "
                                "pass a local Dinov2Model or CLIPVisionModel folder or a reachable hub id.") from None
    if kind not in BACKBONES:
        raise ValueError(f"reward.args.backbone {path!r} is a {kind!r} model; the discriminator reads "
                         f"{' or '.join(BACKBONES)} encoders (Dinov2Model, CLIPVisionModel).")
    cls_name, mean, std = BACKBONES[kind]
    return getattr(transformers, cls_name).from_pretrained(path), (mean, std)


def load_image(path: str, size: Sequence[int] | None = None) -> Tensor:
    """One image file -> [3, H, W] in [0, 1], resized (bilinear, as torchvision's Resize) to `size` (H, W)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if size is not None and tuple(img.size[::-1]) != tuple(size):
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def load_reference_map(path: str, folder: str) -> dict[str, list[str]]:
    """{prompt: [image files in `folder`]} from a JSON file; every named file must exist."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward.args.reference_map {path!r} does not exist; pass a JSON file "
                                "{prompt: [image file names in reference_dir]}.")
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError(f"reward.args.reference_map {path!r} must hold a JSON object {{prompt: [file names]}}.")
    mapping = {p: [files] if isinstance(files, str) else list(files) for p, files in mapping.items()}
    missing = [f for files in mapping.values() for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"reward.args.reference_map names {len(missing)} file(s) missing from {folder!r}, "
                                f"e.g. {missing[0]!r}.")
    return mapping


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


def reference_batch(fake: Tensor, prompts: Sequence[str] | None, reference: Tensor | None,
                    reference_map: dict[str, list[str]] | None, reference_dir: str | None,
                    generator: torch.Generator) -> Tensor:
    """Positives for a batch of generated images: each image's own prompt's references, cycling through
    that prompt's files in batch order (`reference_map`, the reference's prompt2img json), else random
    images of `reference` drawn with `generator`."""
    if reference_map is None:
        return reference[torch.randint(len(reference), (fake.shape[0],), generator=generator)]
    if prompts is None or len(prompts) != fake.shape[0]:
        raise ValueError("reward.args.reference_map needs the prompt of every generated image.")
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        files = reference_map.get(p)
        if not files:
            raise ValueError(f"prompt {p!r} has no reference images in reward.args.reference_map; add it, or "
                             "drop reference_map to use random references.")
        j = seen.get(p, 0)
        seen[p] = j + 1
        out.append(load_image(os.path.join(reference_dir, files[j % len(files)]), fake.shape[-2:]))
    return torch.stack(out)


class AdversarialDinoReward:
    learns = True  # a LearnedReward: the engine trains its head after every batch
    differentiable = True

    def __init__(self, backbone: str = "facebook/dinov2-base", reference_dir: str | None = None, *,
                 reference_map: str | None = None, hidden: int = 512, global_weight: float = 0.7,
                 num_patches: int = 64, lr: float = 1e-4, betas: Sequence[float] = (0.5, 0.999),
                 schedule: str = "alternate", d_times: int = 10, k: int = 9, disc_loss: str = "reference",
                 patch_loss_weight: float = 0.3, batch_size: int = 16, device: str | None = None, seed: int = 0):
        check_local(backbone, "DINOv2", "pass a Dinov2Model directory or a hub id")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is unknown; use one of {', '.join(SCHEDULES)}.")
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss {disc_loss!r} is unknown; use one of {', '.join(DISC_LOSSES)}.")
        if d_times < 2 and schedule == "alternate":
            raise ValueError(f"d_times={d_times} must be at least 2 (d_times - 1 head iterations per generator one).")
        if reference_map and not reference_dir:
            raise ValueError("reward.args.reference_map names files inside reference_dir; set reference_dir too.")
        self.device = default_device(device)
        self.backbone, (self.mean, self.std) = load_backbone(backbone)
        self.backbone = self.backbone.to(self.device).eval().requires_grad_(False)
        cfg = self.backbone.config
        self.size = cfg.image_size
        self.head = DiscriminatorHead(cfg.hidden_size, hidden).to(self.device)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=lr, betas=tuple(betas))
        self.global_weight, self.num_patches, self.patch_loss_weight = global_weight, num_patches, patch_loss_weight
        self.schedule, self.d_times, self.k, self.disc_loss, self.batch_size = schedule, d_times, k, disc_loss, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.reference_dir = reference_dir
        self.reference_map = load_reference_map(reference_map, reference_dir) if reference_map else None
        self.reference = load_reference_images(reference_dir) if reference_dir and not reference_map else None
        self.name = "adversarial_dino"
        self.updates = 0

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(images.float().to(self.device), size=(self.size, self.size), mode="bicubic",
                          align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        h = self.backbone(pixel_values=(x - mean) / std).last_hidden_state
        return h[:, 0], h[:, 1:]

    def _patch_idx(self, batch: int, n: int) -> Tensor:
        """[batch, min(num_patches, n)] patch indices, uniform with replacement, per image."""
        return torch.randint(0, n, (batch, min(self.num_patches, n)), generator=self.generator).to(self.device)

    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls, patches = self.features(images)
        return adversarial_scores(self.head, cls, patches, self._patch_idx(*patches.shape[:2]))

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            g, loc = self.scores(images[i:i + self.batch_size])
            out.append(self.global_weight * g + (1 - self.global_weight) * loc)
        return torch.cat(out).float()

    def head_step(self, real: Tensor, fake: Tensor) -> float:
        """One Adam step of the discriminator loss on a real and a fake batch; returns the loss."""
        with torch.no_grad():
            rc, rp = self.features(real)
            fc, fp = self.features(fake)
            rp = pick_patches(rp, self._patch_idx(*rp.shape[:2]))
            fp = pick_patches(fp, self._patch_idx(*fp.shape[:2]))
        if self.disc_loss == "reference":
            loss = reference_hinge_loss(self.head, (rc, rp), (fc, fp), self.patch_loss_weight)
        else:
            loss = normalized_hinge_loss(self.head, (rc, rp), (fc, fp), self.global_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        return float(loss.detach())

    def trains_generator(self, iteration: int) -> bool:
        """Whether the policy is updated at `iteration` (0-based): with `alternate`, only every
        d_times-th iteration, as the reference's `(epoch + 1) % d_times == 0`."""
        return self.schedule != "alternate" or (iteration + 1) % self.d_times == 0

    def real_images(self, fake: Tensor, prompts: Sequence[str] | None) -> Tensor:
        """Positives for a batch of generated images (`reference_batch`)."""
        return reference_batch(fake, prompts, self.reference, self.reference_map, self.reference_dir, self.generator)

    def update(self, images: Tensor, prompts: Sequence[str] | None = None, *, iteration: int = 0, **context) -> dict:
        """Called by the engine after each batch is scored: train the head against reference images
        when the schedule says so."""
        if self.reference is None and self.reference_map is None:
            return {}
        if self.schedule == "alternate" and self.trains_generator(iteration):
            return {}
        fake = images.detach()
        losses = []
        steps = self.k if self.schedule == "k_steps" else 1
        for _ in range(steps):
            real = self.real_images(fake, prompts)
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
