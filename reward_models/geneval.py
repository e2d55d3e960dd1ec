"""GenEval's evaluator on real images: Mask2Former instance segmentation (transformers) and CLIP
zero-shot colour classification (open_clip), feeding GenEval's rules in reward_models/geneval_rules.py.

Detector: any local Mask2Former COCO-instance checkpoint (Mask2FormerForUniversalSegmentation plus
its image processor). Its instance post-processing is the one GenEval's mmdet model uses: softmax
over the classes (no-object dropped), the top 100 (query, class) pairs by score, a query's mask
logits upsampled to the image, binary mask = logits > 0, score = class probability x the mean
sigmoid inside the mask, box = the mask's bounding box. Class index i is GenEval's i-th object name
(object_names.txt, COCO order).

Colour: the object's masked crop over a #999 background, classified by CLIP among GenEval's ten
colours with the mean of three prompt templates per colour. `preprocess: pil` (the default) is
GenEval's pipeline: PIL composite and crop (box rounded as PIL does), then open_clip's eval
transform (PIL bicubic resize of the uint8 crop, centre crop, normalise); on CUDA the CLIP forwards
run under fp16 autocast as there (`autocast`). `preprocess: torch` resizes float crops in torch.

GenEvalReward: mode="strict" gives 1 for a correct image, mode="partial" the fraction of clauses
satisfied; it needs the GenEval metadata row of each image (`metadata=` in the context)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reward_models import geneval_rules as scoring
from reward_models.geneval_rules import Detection, evaluate

from .base import default_device, to_uint8_hwc
from .clip_common import check_local
from .open_clip_common import encode_texts, load_open_clip

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
OBJECT_NAMES_FILE = scoring.OBJECT_NAMES_FILE
MAX_PER_IMAGE = 100
BACKGROUND = 0x99 / 255.0


def object_names(path: str = OBJECT_NAMES_FILE) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """[N, H, W] bool -> [N, 4] (x1, y1, x2 + 1, y2 + 1) as mmdet's mask2bbox; zeros for empty masks."""
    boxes = torch.zeros(masks.shape[0], 4)
    for i, m in enumerate(masks):
        ys, xs = torch.where(m)
        if len(xs):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes


def instance_postprocess(class_logits: Tensor, mask_logits: Tensor, height: int, width: int,
                         max_per_image: int = MAX_PER_IMAGE) -> list[tuple[int, float, Tensor, Tensor]]:
    """One image: class_logits [Q, C+1], mask_logits [Q, h, w] (already cropped to the valid region)
    -> [(label, score, box [4], mask [H, W] bool)], highest score first."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1]
    k = min(max_per_image, probs.numel())
    scores, idx = probs.flatten().topk(k)
    labels, queries = idx % num_classes, idx // num_classes
    masks = F.interpolate(mask_logits[queries][None].float(), size=(height, width), mode="bilinear",
                          align_corners=False)[0]
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = scores * mask_scores
    boxes = masks_to_boxes(binary)
    order = final.argsort(descending=True)
    return [(int(labels[i]), float(final[i]), boxes[i], binary[i]) for i in order]


class Mask2FormerDetector:
    """A local Mask2Former COCO-instance checkpoint -> GenEval detections per class name."""

    def __init__(self, path: str, *, device: str | None = None, names: Sequence[str] | None = None,
                 batch_size: int = 8, preprocess: str | None = None):
        """`preprocess`: 'mmdet' (GenEval's test pipeline: fit 1333 x 800, pad to 32;
        reward_models/geneval_convert.py), 'processor' (the folder's image processor), or None: 'mmdet'
        for a folder written by the converter, else 'processor'."""
        import json
        import os

        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        check_local(path, "Mask2Former")
        marker = os.path.join(path, "flowalign_detector.json")
        if preprocess is None:
            preprocess = json.load(open(marker)).get("preprocess", "processor") if os.path.isfile(marker) else "processor"
        if preprocess not in ("mmdet", "processor"):
            raise ValueError(f"detector preprocess {preprocess!r} is unknown; use 'mmdet' or 'processor'.")
        self.preprocess = preprocess
        self.device = default_device(device)
        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(self.device).eval()
            self.processor = AutoImageProcessor.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(f"could not load the Mask2Former checkpoint {path!r}: {str(e).splitlines()[0]}; "
                                    "pass a local folder saved with save_pretrained.") from None
        self.names = list(names) if names is not None else object_names()
        n = self.model.config.num_labels
        if n != len(self.names):
            raise ValueError(f"the Mask2Former checkpoint {path!r} has {n} classes but GenEval names "
                             f"{len(self.names)}; use a COCO-instance checkpoint (80 classes).")
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> list[dict[str, list[Detection]]]:
        """images uint8 [B, H, W, 3] -> per image {class name: [Detection(box, score, mask)]}."""
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = list(images[s:s + self.batch_size])
            if self.preprocess == "mmdet":
                from .geneval_convert import mmdet_preprocess

                pv_, pm_ = mmdet_preprocess(np.stack(chunk))
                inp = {"pixel_values": pv_, "pixel_mask": pm_}
            else:
                inp = self.processor(images=chunk, return_tensors="pt")
            pv = inp["pixel_values"].to(self.device)
            pm = inp.get("pixel_mask")
            res = self.model(pixel_values=pv, pixel_mask=pm.to(self.device) if pm is not None else None)
            ph, pw = pv.shape[-2:]
            for b, img in enumerate(chunk):
                ml = F.interpolate(res.masks_queries_logits[b][None].float(), size=(ph, pw), mode="bilinear",
                                   align_corners=False)[0]
                if pm is not None:  # crop the padding the processor added
                    vh, vw = int(pm[b].any(1).sum()), int(pm[b].any(0).sum())
                    ml = ml[:, :vh, :vw]
                dets: dict[str, list[Detection]] = {}
                for label, score, box, mask in instance_postprocess(res.class_queries_logits[b].cpu(), ml.cpu(),
                                                                    img.shape[0], img.shape[1]):
                    dets.setdefault(self.names[label], []).append(
                        Detection(box=tuple(float(v) for v in box), score=score, mask=mask.numpy()))
                out.append(dets)
        return out


class ColorClassifier:
    """GenEval's CLIP colour classifier (open_clip)."""

    def __init__(self, model: str, pretrained: str | None = None, *, device: str | None = None,
                 quick_gelu: bool = True, preprocess: str = "pil", autocast: bool = True):
        import open_clip

        if preprocess not in ("pil", "torch"):
            raise ValueError(f"colour preprocess {preprocess!r} is unknown; use 'pil' (GenEval's) or 'torch'.")
        # GenEval builds ViT-L-14 with pretrained="openai", i.e. with OpenAI's QuickGELU
        self.model, self.tokenizer, self.preprocess, self.device = load_open_clip(model, pretrained, device=device,
                                                                                  quick_gelu=quick_gelu)
        self.mode = preprocess
        cfg = self.model.visual.preprocess_cfg
        self.pil_transform = open_clip.image_transform(self.preprocess.size, is_train=False, mean=cfg["mean"],
                                                       std=cfg["std"])
        self.autocast = autocast and self.device.type == "cuda"  # GenEval's zsc runs under CUDA autocast
        self._text: dict[str, Tensor] = {}

    def _amp(self):
        import contextlib

        return torch.autocast("cuda", dtype=torch.float16) if self.autocast else contextlib.nullcontext()

    def _classifier(self, cls: str) -> Tensor:
        if cls not in self._text:
            rows = []
            with self._amp():
                for c in COLORS:
                    e = encode_texts(self.model, self.tokenizer, [t.format(c=c, cls=cls) for t in COLOR_TEMPLATES],
                                     self.device).mean(0)
                    rows.append(e / e.norm())
            self._text[cls] = torch.stack(rows)  # [10, D]
        return self._text[cls]

    @staticmethod
    def crop(image: np.ndarray, det: Detection) -> Tensor:
        """The masked crop over #999 as a [3, h, w] float tensor in [0, 1] (the torch path)."""
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        if det.mask is not None:
            m = torch.as_tensor(np.asarray(det.mask), dtype=torch.bool)
            x = torch.where(m[None], x, torch.full_like(x, BACKGROUND))
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        return x[:, y1:y2, x1:x2]

    @staticmethod
    def pil_crop(image: np.ndarray, det: Detection):
        """GenEval's ImageCrops item: the image composited over a #999 canvas through the mask, then
        PIL's crop of the box (coordinates rounded by PIL)."""
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
        if det.mask is not None:
            img = Image.composite(img, Image.new("RGB", img.size, color="#999"),
                                  Image.fromarray(np.asarray(det.mask, dtype=bool)))
        return img.crop(tuple(float(v) for v in det.box[:4]))

    def pixels(self, image: np.ndarray, dets: Sequence[Detection]) -> Tensor:
        """The CLIP input [n, 3, S, S] of each detection's crop."""
        if self.mode == "pil":
            return torch.stack([self.pil_transform(self.pil_crop(image, d)) for d in dets])
        return torch.cat([self.preprocess(self.crop(image, d)[None]) for d in dets])

    @torch.no_grad()
    def __call__(self, image: np.ndarray, dets: Sequence[Detection], cls: str) -> list[str]:
        if not dets:
            return []
        x = self.pixels(image, dets).to(self.device, next(self.model.parameters()).dtype)
        with self._amp():
            e = self.model.encode_image(x).float()
        emb = e / e.norm(dim=-1, keepdim=True)
        return [COLORS[i] for i in (emb @ self._classifier(cls).float().T).argmax(-1).tolist()]


class GenEvalEvaluator:
    """Detector + colour classifier -> GenEval verdicts."""

    def __init__(self, detector: str, clip: str, clip_pretrained: str | None = None, *, device: str | None = None):
        self.detector = Mask2FormerDetector(detector, device=device)
        self.colors = ColorClassifier(clip, clip_pretrained, device=device)

    def verdicts(self, images: np.ndarray, metadata: Sequence[dict]) -> list[tuple[scoring.Verdict, dict]]:
        """images uint8 [B, H, W, 3] -> (verdict, raw detections) per image."""
        out = []
        for img, dets, meta in zip(images, self.detector(images), metadata):
            def color_fn(det: Detection, cls: str, img=img) -> str:
                return self.colors(img, [det], cls)[0]

            out.append((evaluate(dets, meta, color_fn), dets))
        return out


class GenEvalReward:
    differentiable = False

    def __init__(self, detector: str, clip: str, clip_pretrained: str | None = None, mode: str = "strict",
                 device: str | None = None):
        if mode not in ("strict", "partial"):
            raise ValueError(f"geneval mode {mode!r} is unknown; use 'strict' or 'partial'.")
        self.evaluator = GenEvalEvaluator(detector, clip, clip_pretrained, device=device)
        self.mode, self.name = mode, f"geneval_{mode}"

    def __call__(self, images: Tensor, prompts: Sequence[str], *, metadata: Sequence[dict] | None = None,
                 **context) -> Tensor:
        scoring.require_clauses(metadata, len(images), "geneval")
        vs = self.evaluator.verdicts(to_uint8_hwc(images), metadata)
        return torch.tensor([float(v.correct) if self.mode == "strict" else v.partial for v, _ in vs],
                            dtype=torch.float32)
