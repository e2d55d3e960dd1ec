"""Loading open_clip models (CLIPScore, HPSv2.1, the LAION aesthetic backbone, GenEval's colour
classifier) from a local folder, a hub id or an architecture name plus a checkpoint file, with one
clear error when the checkpoint is missing.

Accepted forms of `model`:
- a folder holding open_clip_config.json and open_clip_model.safetensors (open_clip's hub layout,
  what `save_open_clip` writes), or the same as 'local-dir:PATH';
- 'hf-hub:ORG/NAME' (needs the network or a filled cache);
- an architecture name such as 'ViT-H-14' with `pretrained` = a local checkpoint file (the HPS
  state dict) or an open_clip pretrained tag."""

from __future__ import annotations

import json
import os

import torch

from .base import default_device
from .clip_common import CLIPPreprocess, check_local


def _resolve(model: str, pretrained: str | None) -> tuple[str, str | None]:
    if model.startswith("local-dir:"):
        model = model[len("local-dir:"):]
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "open_clip_config.json")):
            raise FileNotFoundError(f"open_clip folder {model!r} has no open_clip_config.json; save it with "
                                    "reward_models.open_clip_common.save_open_clip or pass an architecture name.")
        return "local-dir:" + model, None
    check_local(model, "open_clip", "pass a local folder with open_clip_config.json, 'hf-hub:ORG/NAME' or an "
                "architecture name with pretrained=FILE")
    if pretrained and (os.path.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))) \
            and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"open_clip weights file {pretrained!r} does not exist; download it (for HPSv2.1: "
                                "HPS_v2.1_compressed.pt) and pass its local path.")
    return model, pretrained


def load_open_clip(model: str, pretrained: str | None = None, *, device: str | None = None,
                   dtype: str = "float32", quick_gelu: bool | None = None, resize: str = "crop"):
    """-> (model in eval mode without gradients, tokenizer, torch preprocess, device). `resize`: the
    preprocess's 'crop' (shortest side, centre crop) or 'pad' (longest side, black pad; HPSv2).

    `quick_gelu`: build the towers with QuickGELU, the activation OpenAI's CLIP weights were trained
    with (open_clip >= 2.29 builds plain GELU for e.g. 'ViT-L-14' even with OpenAI's weights, which
    shifts every embedding). None: on for pretrained='openai', else the architecture's own choice.
    Rewards whose reference uses OpenAI's CLIP (GenEval's colour classifier, the LAION aesthetic
    predictor, CLIPScore) pass True."""
    import open_clip

    name, weights = _resolve(model, pretrained)
    dev = default_device(device)
    force = quick_gelu if quick_gelu is not None else pretrained == "openai"
    try:
        m = open_clip.create_model(name, pretrained=weights, device=dev, force_quick_gelu=bool(force))
    except RuntimeError as e:
        raise FileNotFoundError(f"could not load open_clip model {model!r} (weights {pretrained!r}): "
                                f"{str(e).splitlines()[0]}; pass a local folder or checkpoint file.") from None
    m = m.to(dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    cfg = m.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return m, open_clip.get_tokenizer(name), CLIPPreprocess(size, cfg["mean"], cfg["std"], resize), dev


def save_open_clip(model, model_cfg: dict, path: str, preprocess_cfg: dict | None = None) -> str:
    """Write an open_clip model in the hub layout that `load_open_clip(path)` reads."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(path, "open_clip_model.safetensors"))
    pre = preprocess_cfg or {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": pre}, f, indent=2)
    return path


def encode_images(model, preprocess: CLIPPreprocess, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [0, 1] -> unit-norm image embeddings (float32); differentiable."""
    dtype = next(model.parameters()).dtype
    x = preprocess(images.to(next(model.parameters()).device)).to(dtype)
    e = model.encode_image(x).float()
    return e / e.norm(dim=-1, keepdim=True)


def encode_texts(model, tokenizer, texts, device) -> torch.Tensor:
    """-> unit-norm text embeddings (float32)."""
    e = model.encode_text(tokenizer(list(texts)).to(device)).float()
    return e / e.norm(dim=-1, keepdim=True)


class OpenCLIPSimilarity:
    """cos(image, text) with an open_clip model, batched; differentiable in the image."""

    differentiable = True

    def __init__(self, model: str, pretrained: str | None = None, *, device: str | None = None,
                 dtype: str = "float32", batch_size: int = 32, quick_gelu: bool | None = None,
                 resize: str = "crop"):
        self.model, self.tokenizer, self.preprocess, self.device = load_open_clip(
            model, pretrained, device=device, dtype=dtype, quick_gelu=quick_gelu, resize=resize)
        self.batch_size = batch_size

    def cosine(self, images: torch.Tensor, prompts) -> torch.Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            ie = encode_images(self.model, self.preprocess, images[i:i + self.batch_size])
            with torch.no_grad():
                te = encode_texts(self.model, self.tokenizer, prompts[i:i + self.batch_size], self.device)
            out.append((ie * te).sum(-1))
        return torch.cat(out).float()
