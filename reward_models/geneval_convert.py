"""GenEval's detector in transformers: convert mmdetection 2.x's Mask2Former (Swin backbone, COCO
instance) checkpoint, the one GenEval's evaluator loads (`mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`),
into a `Mask2FormerForUniversalSegmentation` folder, and run mmdetection's test-time preprocessing.

    flowalign convert-detector mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth OUT

Key map (mmdet 2.x module names -> transformers'):
- backbone (mmdet SwinTransformer -> transformers' SwinBackbone, its trunk under `swin.`):
  `backbone.patch_embed.{projection,norm}` -> `embeddings.patch_embeddings.projection`,
  `embeddings.norm`; `backbone.stages.i.blocks.j.{norm1, attn.w_msa.qkv (split into query/key/value),
  attn.w_msa.proj, attn.w_msa.relative_position_bias_table, norm2, ffn.layers.0.0, ffn.layers.1}` ->
  `encoder.layers.i.blocks.j.{layernorm_before, attention.self.{query,key,value}, attention.output.dense,
  attention.self.relative_position_bias_table, layernorm_after, intermediate.dense, output.dense}`;
  `backbone.stages.i.downsample.{reduction,norm}` -> `encoder.layers.i.downsample.*` with the 2x2
  neighbourhood put back from mmdet's nn.Unfold order to Swin's (the inverse of mmdet's
  `swin_converter`); `backbone.norm{i}` -> `hidden_states_norms.stage{i+1}`.
- pixel decoder (MSDeformAttnPixelDecoder): `input_convs.i.{conv,gn}` -> `input_projections.i.{0,1}`;
  `encoder.layers.i.{attentions.0.*, norms.0, ffns.0.layers.0.0, ffns.0.layers.1, norms.1}` ->
  `encoder.layers.i.{self_attn.*, self_attn_layer_norm, fc1, fc2, final_layer_norm}`;
  `level_encoding` -> `level_embed`; `lateral_convs.0.{conv,gn}` -> `adapter_1.{0,1}`;
  `output_convs.0.{conv,gn}` -> `layer_1.{0,1}`; `mask_feature` -> `mask_projection`.
- transformer decoder (operation order cross_attn, norm, self_attn, norm, ffn, norm):
  `layers.i.attentions.0.attn` -> `cross_attn` (nn.MultiheadAttention, as is),
  `layers.i.attentions.1.attn.in_proj_*` -> `self_attn.{q,k,v}_proj`, `.out_proj` -> `self_attn.out_proj`,
  `norms.{0,1,2}` -> `{cross_attn,self_attn,final}_layer_norm`, `ffns.0.layers.{0.0,1}` -> `fc1`, `fc2`,
  `post_norm` -> `layernorm`; `query_embed`, `query_feat`, `level_embed` -> `queries_embedder`,
  `queries_features`, `level_embed`; `mask_embed.{0,2,4}` -> `mask_predictor.mask_embedder.{0,1,2}.0`;
  `cls_embed` -> `class_predictor`.

Test-time preprocessing (mmdet's `test_pipeline`: Resize to fit (1333, 800) keeping the ratio, Normalize
with ImageNet mean/std in 0-255, Pad to a multiple of 32 with 0): `mmdet_preprocess`. mmdet resizes the
uint8 image with cv2's fixed-point bilinear; here it is torch's bilinear on the same pixels, which can
differ from cv2 by one grey level in places."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)
MMDET_SCALE = (1333, 800)  # (long side, short side) bound of mmdet's test Resize
PAD_DIVISOR = 32
UNFOLD_ORDER = [0, 2, 1, 3]  # mmdet's nn.Unfold order of the 2x2 patch vs Swin's x0, x1, x2, x3 (self-inverse)


def unfold_to_swin_reduction(w: Tensor) -> Tensor:
    """PatchMerging reduction weight [out, 4C] from mmdet's unfold layout (channel-major, 4 offsets
    minor) to Swin's (4 offset blocks of C)."""
    out, four_c = w.shape
    return w.reshape(out, four_c // 4, 4)[:, :, UNFOLD_ORDER].transpose(1, 2).reshape(out, four_c)


def unfold_to_swin_norm(v: Tensor) -> Tensor:
    """PatchMerging norm weight/bias [4C] from mmdet's unfold layout to Swin's."""
    return v.reshape(v.shape[0] // 4, 4)[:, UNFOLD_ORDER].transpose(0, 1).reshape(-1)


def _split3(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    d = t.shape[0] // 3
    return t[:d], t[d:2 * d], t[2 * d:]


ENCODER = "model.pixel_level_module.encoder."


def swin_prefix(model_keys) -> str:
    """Where transformers keeps the Swin trunk inside its backbone: `swin.` (SwinBackbone wrapping a
    SwinModel) or nothing (older versions)."""
    return "swin." if any(k.startswith(ENCODER + "swin.") for k in model_keys) else ""


# transformers' names of a Swin block's parts: the current ones, and those before its attention refactor
SWIN_BLOCK_NAMES = {
    "current": {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                "proj": "attention.o_proj", "table": "attention.relative_position_bias.relative_position_bias_table",
                "fc1": "mlp.fc1", "fc2": "mlp.fc2"},
    "legacy": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "proj": "attention.output.dense", "table": "attention.self.relative_position_bias_table",
               "fc1": "intermediate.dense", "fc2": "output.dense"},
}


def swin_naming(model_keys) -> str:
    """Which SWIN_BLOCK_NAMES scheme a transformers model uses."""
    return "current" if any(k.endswith("blocks.0.attention.q_proj.weight") for k in model_keys) else "legacy"


def _backbone(k: str, v: Tensor, out: dict, trunk: str, naming: str) -> bool:
    B = ENCODER + trunk
    m = re.fullmatch(r"backbone\.patch_embed\.(projection|norm)\.(weight|bias)", k)
    if m:
        out[B + ("embeddings.patch_embeddings.projection." if m[1] == "projection" else "embeddings.norm.") + m[2]] = v
        return True
    m = re.fullmatch(r"backbone\.norm(\d)\.(weight|bias)", k)
    if m:
        out[f"{ENCODER}hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}"] = v
        return True
    m = re.fullmatch(r"backbone\.stages\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)", k)
    if m:
        fix = unfold_to_swin_reduction if m[2] == "reduction" else unfold_to_swin_norm
        out[f"{B}encoder.layers.{m[1]}.downsample.{m[2]}.{m[3]}"] = fix(v)
        return True
    m = re.fullmatch(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)", k)
    if not m:
        return False
    p = f"{B}encoder.layers.{m[1]}.blocks.{m[2]}."
    n = SWIN_BLOCK_NAMES[naming]
    rest = m[3]
    simple = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.w_msa.proj": n["proj"],
              "ffn.layers.0.0": n["fc1"], "ffn.layers.1": n["fc2"]}
    if rest == "attn.w_msa.relative_position_bias_table":
        out[p + n["table"]] = v
        return True
    if rest == "attn.w_msa.relative_position_index":
        return True  # recomputed by transformers from the window size
    mq = re.fullmatch(r"attn\.w_msa\.qkv\.(weight|bias)", rest)
    if mq:
        for name, part in zip(("q", "k", "v"), _split3(v)):
            out[f"{p}{n[name]}.{mq[1]}"] = part
        return True
    mod, _, leaf = rest.rpartition(".")
    if mod in simple:
        out[p + simple[mod] + "." + leaf] = v
        return True
    return False


_PD, _TM = "model.pixel_level_module.decoder.", "model.transformer_module."
_H = r"panoptic_head\."
# (mmdet key pattern, transformers key template): plain renames of the pixel decoder and the decoder head
RENAMES = [
    (_H + r"pixel_decoder\.level_encoding\.weight", _PD + "level_embed"),
    (_H + r"pixel_decoder\.input_convs\.(\d+)\.conv\.(weight|bias)", _PD + "input_projections.{0}.0.{1}"),
    (_H + r"pixel_decoder\.input_convs\.(\d+)\.gn\.(weight|bias)", _PD + "input_projections.{0}.1.{1}"),
    (_H + r"pixel_decoder\.lateral_convs\.0\.conv\.(weight)", _PD + "adapter_1.0.{0}"),
    (_H + r"pixel_decoder\.lateral_convs\.0\.gn\.(weight|bias)", _PD + "adapter_1.1.{0}"),
    (_H + r"pixel_decoder\.output_convs\.0\.conv\.(weight)", _PD + "layer_1.0.{0}"),
    (_H + r"pixel_decoder\.output_convs\.0\.gn\.(weight|bias)", _PD + "layer_1.1.{0}"),
    (_H + r"pixel_decoder\.mask_feature\.(weight|bias)", _PD + "mask_projection.{0}"),
    (_H + r"pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.0\."
          r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)", _PD + "encoder.layers.{0}.self_attn.{1}.{2}"),
    (_H + r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.(weight|bias)", _PD + "encoder.layers.{0}.self_attn_layer_norm.{1}"),
    (_H + r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.(weight|bias)", _PD + "encoder.layers.{0}.final_layer_norm.{1}"),
    (_H + r"pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(weight|bias)", _PD + "encoder.layers.{0}.fc1.{1}"),
    (_H + r"pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(weight|bias)", _PD + "encoder.layers.{0}.fc2.{1}"),
    (_H + r"query_embed\.weight", _TM + "queries_embedder.weight"),
    (_H + r"query_feat\.weight", _TM + "queries_features.weight"),
    (_H + r"level_embed\.weight", _TM + "level_embed.weight"),
    (_H + r"cls_embed\.(weight|bias)", "class_predictor.{0}"),
    (_H + r"transformer_decoder\.post_norm\.(weight|bias)", _TM + "decoder.layernorm.{0}"),
    (_H + r"mask_embed\.0\.(weight|bias)", _TM + "decoder.mask_predictor.mask_embedder.0.0.{0}"),
    (_H + r"mask_embed\.2\.(weight|bias)", _TM + "decoder.mask_predictor.mask_embedder.1.0.{0}"),
    (_H + r"mask_embed\.4\.(weight|bias)", _TM + "decoder.mask_predictor.mask_embedder.2.0.{0}"),
    # decoder layers, operation order cross_attn, norm, self_attn, norm, ffn, norm
    (_H + r"transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.(in_proj_weight|in_proj_bias)",
     _TM + "decoder.layers.{0}.cross_attn.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.out_proj\.(weight|bias)",
     _TM + "decoder.layers.{0}.cross_attn.out_proj.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.out_proj\.(weight|bias)",
     _TM + "decoder.layers.{0}.self_attn.out_proj.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.norms\.0\.(weight|bias)", _TM + "decoder.layers.{0}.cross_attn_layer_norm.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.norms\.1\.(weight|bias)", _TM + "decoder.layers.{0}.self_attn_layer_norm.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.norms\.2\.(weight|bias)", _TM + "decoder.layers.{0}.final_layer_norm.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(weight|bias)", _TM + "decoder.layers.{0}.fc1.{1}"),
    (_H + r"transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(weight|bias)", _TM + "decoder.layers.{0}.fc2.{1}"),
]
_SELF_ATTN_IN = re.compile(_H + r"transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.in_proj_(weight|bias)")


def _head(k: str, v: Tensor, out: dict) -> bool:
    """The pixel decoder and the transformer decoder: renames, plus the decoder self-attention's
    packed in_proj split into q/k/v projections."""
    for pattern, template in RENAMES:
        m = re.fullmatch(pattern, k)
        if m:
            out[template.format(*m.groups())] = v
            return True
    m = _SELF_ATTN_IN.fullmatch(k)
    if m:
        for name, part in zip(("q_proj", "k_proj", "v_proj"), _split3(v)):
            out[f"{_TM}decoder.layers.{m[1]}.self_attn.{name}.{m[2]}"] = part
        return True
    return False


def convert_state_dict(mmdet: dict[str, Tensor], model_keys) -> dict[str, Tensor]:
    """mmdet 2.x Mask2Former (Swin) state dict -> the state dict of transformers'
    Mask2FormerForUniversalSegmentation whose keys are `model_keys` (its Swin naming is detected). Every mmdet key must be converted (the
    relative-position index is recomputed). transformers' SwinModel also has a final layernorm that
    its backbone never applies (mmdet has none): it is written as the identity."""
    trunk, naming = swin_prefix(model_keys), swin_naming(model_keys)
    out: dict[str, Tensor] = {}
    left = [k for k, v in mmdet.items()
            if not (_backbone(k, v, out, trunk, naming) or _head(k, v, out))]
    if left:
        raise ValueError(f"{len(left)} mmdet parameter(s) have no transformers counterpart, e.g. {left[0]!r}; this "
                         "converter reads mmdetection 2.x Mask2Former checkpoints with a Swin backbone.")
    if trunk:
        last = max(int(m[1]) for k in mmdet if (m := re.fullmatch(r"backbone\.norm(\d)\.weight", k)))
        c = mmdet[f"backbone.norm{last}.weight"]
        out[f"{ENCODER}{trunk}layernorm.weight"] = torch.ones_like(c)
        out[f"{ENCODER}{trunk}layernorm.bias"] = torch.zeros_like(c)
    return out


def config_from_state_dict(mmdet: dict[str, Tensor], id2label: dict[int, str] | None = None):
    """The transformers Mask2FormerConfig (Swin backbone) whose shapes match the checkpoint."""
    from transformers import Mask2FormerConfig, SwinConfig

    stages = sorted({int(m[1]) for k in mmdet if (m := re.match(r"backbone\.stages\.(\d+)\.", k))})
    depths = [1 + max(int(m[1]) for k in mmdet if (m := re.match(rf"backbone\.stages\.{s}\.blocks\.(\d+)\.", k)))
              for s in stages]
    embed = mmdet["backbone.patch_embed.projection.weight"].shape[0]
    patch = mmdet["backbone.patch_embed.projection.weight"].shape[-1]
    heads = [mmdet[f"backbone.stages.{s}.blocks.0.attn.w_msa.relative_position_bias_table"].shape[1] for s in stages]
    table = mmdet["backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"].shape[0]
    window = (int(round(math.sqrt(table))) + 1) // 2
    hidden = mmdet["panoptic_head.query_feat.weight"].shape[1]
    n_queries = mmdet["panoptic_head.query_feat.weight"].shape[0]
    n_classes = mmdet["panoptic_head.cls_embed.weight"].shape[0] - 1
    dec_layers = 1 + max(int(m[1]) for k in mmdet
                         if (m := re.match(r"panoptic_head\.transformer_decoder\.layers\.(\d+)\.", k)))
    enc_layers = 1 + max(int(m[1]) for k in mmdet
                         if (m := re.match(r"panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.", k)))
    backbone = SwinConfig(image_size=224, patch_size=patch, embed_dim=embed, depths=depths, num_heads=heads,
                          window_size=window, out_features=[f"stage{s + 1}" for s in stages])
    names = id2label or {i: f"class_{i}" for i in range(n_classes)}
    return Mask2FormerConfig(
        backbone_config=backbone, num_labels=n_classes, num_queries=n_queries, hidden_dim=hidden, feature_size=hidden,
        mask_feature_size=mmdet["panoptic_head.pixel_decoder.mask_feature.weight"].shape[0],
        encoder_layers=enc_layers, decoder_layers=dec_layers + 1,
        encoder_feedforward_dim=mmdet["panoptic_head.pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight"].shape[0],
        dim_feedforward=mmdet["panoptic_head.transformer_decoder.layers.0.ffns.0.layers.0.0.weight"].shape[0],
        num_attention_heads=_decoder_heads(mmdet), id2label=names, label2id={v: k for k, v in names.items()})


def _decoder_heads(mmdet: dict[str, Tensor]) -> int:
    # the pixel decoder's sampling offsets are [heads * levels * points * 2, D] with mmdet's 3 levels, 4 points
    n = mmdet["panoptic_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight"].shape[0]
    return n // (3 * 4 * 2)


def read_mmdet_checkpoint(path: str) -> dict[str, Tensor]:
    """The `state_dict` of an mmdet .pth, read with weights_only=True (no code runs from the file)."""
    import pickle

    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmdet checkpoint {path!r} does not exist; download GenEval's "
                                "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco checkpoint and pass its path.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path!r} holds objects other than tensors and plain containers, which flowalign does not "
                         f"unpickle ({str(e).splitlines()[0][:120]}); re-save its state_dict with torch.save.") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{path!r} is not an mmdet checkpoint (no state_dict).")
    return sd


def convert_checkpoint(path: str, out: str, names: Sequence[str] | None = None) -> str:
    """Write a transformers Mask2Former folder (model + image processor) for GenEval's detector."""
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    from .geneval import object_names

    sd = read_mmdet_checkpoint(path)
    labels = list(names) if names is not None else object_names()
    cfg = config_from_state_dict(sd, dict(enumerate(labels)))
    model = Mask2FormerForUniversalSegmentation(cfg)
    missing, unexpected = model.load_state_dict(convert_state_dict(sd, model.state_dict().keys()), strict=False)
    missing = [k for k in missing if not k.endswith("relative_position_index") and "criterion" not in k]
    if missing or unexpected:
        raise ValueError(f"the converted checkpoint does not fit transformers' model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}.")
    model.save_pretrained(out)
    Mask2FormerImageProcessor(do_resize=False, do_rescale=True, rescale_factor=1 / 255,
                              image_mean=[m / 255 for m in MMDET_MEAN], image_std=[s / 255 for s in MMDET_STD],
                              size_divisor=PAD_DIVISOR).save_pretrained(out)
    with open(os.path.join(out, "flowalign_detector.json"), "w") as f:
        f.write('{"preprocess": "mmdet", "source": "%s"}\n' % os.path.basename(path))
    return out


def mmdet_scale(h: int, w: int, scale: tuple[int, int] = MMDET_SCALE) -> tuple[int, int]:
    """mmcv.imrescale's size: factor min(long / max(h, w), short / min(h, w)), each side int(x f + 0.5)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def mmdet_preprocess(images: np.ndarray, scale: tuple[int, int] = MMDET_SCALE) -> tuple[Tensor, Tensor]:
    """uint8 [B, H, W, 3] (one size) -> (pixel_values [B, 3, Hp, Wp], pixel_mask [B, Hp, Wp]): resize to
    fit `scale` keeping the ratio (bilinear), normalise with mmdet's mean/std (0-255 scale), pad
    bottom/right with 0 to multiples of 32; the mask marks the resized image."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    nh, nw = mmdet_scale(h, w, scale)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).clamp(0, 255).round()
    x = (x - torch.tensor(MMDET_MEAN).view(1, 3, 1, 1)) / torch.tensor(MMDET_STD).view(1, 3, 1, 1)
    ph, pw = -(-nh // PAD_DIVISOR) * PAD_DIVISOR, -(-nw // PAD_DIVISOR) * PAD_DIVISOR
    x = F.pad(x, (0, pw - nw, 0, ph - nh), value=0.0)
    mask = torch.zeros(x.shape[0], ph, pw, dtype=torch.long)
    mask[:, :nh, :nw] = 1
    return x, mask
