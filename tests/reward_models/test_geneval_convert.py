"""GenEval's detector converted from mmdetection 2.x to transformers (reward_models/geneval_convert.py).

The synthetic checkpoint below is built key by key from mmdetection 2.28's module tree as GenEval's
config (`mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py`) instantiates it, made tiny:
mmdet/models/backbones/swin.py (PatchEmbed, SwinBlock: norm1, attn.w_msa.{qkv, proj,
relative_position_bias_table, relative_position_index}, norm2, ffn.layers; PatchMerging: norm,
reduction without bias; norm{i} per output), mmdet/models/plugins/msdeformattn_pixel_decoder.py
(input_convs / lateral_convs / output_convs as ConvModule conv + gn, level_encoding, mask_feature,
encoder layers of mmcv's BaseTransformerLayer: attentions.0 MultiScaleDeformableAttention, norms,
ffns.0.layers) and mmdet/models/dense_heads/mask2former_head.py (query_embed, query_feat,
level_embed, cls_embed, mask_embed, transformer_decoder layers with operation order cross_attn,
norm, self_attn, norm, ffn, norm, and post_norm)."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from reward_models.geneval_convert import (
    SWIN_BLOCK_NAMES,
    config_from_state_dict,
    convert_checkpoint,
    convert_state_dict,
    mmdet_preprocess,
    mmdet_scale,
    swin_naming,
    swin_prefix,
)

E, DEPTHS, HEADS, WIN = 32, (1, 1, 2, 1), (1, 2, 4, 8), 7
F_, Q, CLASSES, ENC, DEC, FFN_ENC, FFN_DEC, DEC_HEADS = 32, 10, 80, 2, 3, 64, 64, 8


def mmdet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def t(name, *shape):
        sd[name] = torch.randn(*shape, generator=g)

    def lin(name, out, inp, bias=True):
        t(name + ".weight", out, inp)
        if bias:
            t(name + ".bias", out)

    def norm(name, c):
        t(name + ".weight", c)
        t(name + ".bias", c)

    t("backbone.patch_embed.projection.weight", E, 3, 4, 4)
    t("backbone.patch_embed.projection.bias", E)
    norm("backbone.patch_embed.norm", E)
    chans = [E * 2 ** i for i in range(4)]
    for i, (depth, heads, c) in enumerate(zip(DEPTHS, HEADS, chans)):
        for j in range(depth):
            b = f"backbone.stages.{i}.blocks.{j}."
            norm(b + "norm1", c)
            t(b + "attn.w_msa.relative_position_bias_table", (2 * WIN - 1) ** 2, heads)
            sd[b + "attn.w_msa.relative_position_index"] = torch.zeros(WIN * WIN, WIN * WIN, dtype=torch.long)
            lin(b + "attn.w_msa.qkv", 3 * c, c)
            lin(b + "attn.w_msa.proj", c, c)
            norm(b + "norm2", c)
            lin(b + "ffn.layers.0.0", 4 * c, c)
            lin(b + "ffn.layers.1", c, 4 * c)
        if i < 3:
            norm(f"backbone.stages.{i}.downsample.norm", 4 * c)
            lin(f"backbone.stages.{i}.downsample.reduction", 2 * c, 4 * c, bias=False)
        norm(f"backbone.norm{i}", c)
    p = "panoptic_head.pixel_decoder."
    for i in range(3):  # from low to high resolution: in_channels[3], [2], [1]
        t(p + f"input_convs.{i}.conv.weight", F_, chans[3 - i], 1, 1)
        t(p + f"input_convs.{i}.conv.bias", F_)
        norm(p + f"input_convs.{i}.gn", F_)
    for k in range(ENC):
        a = p + f"encoder.layers.{k}."
        lin(a + "attentions.0.sampling_offsets", DEC_HEADS * 3 * 4 * 2, F_)
        lin(a + "attentions.0.attention_weights", DEC_HEADS * 3 * 4, F_)
        lin(a + "attentions.0.value_proj", F_, F_)
        lin(a + "attentions.0.output_proj", F_, F_)
        norm(a + "norms.0", F_)
        lin(a + "ffns.0.layers.0.0", FFN_ENC, F_)
        lin(a + "ffns.0.layers.1", F_, FFN_ENC)
        norm(a + "norms.1", F_)
    t(p + "level_encoding.weight", 3, F_)
    t(p + "lateral_convs.0.conv.weight", F_, chans[0], 1, 1)
    norm(p + "lateral_convs.0.gn", F_)
    t(p + "output_convs.0.conv.weight", F_, F_, 3, 3)
    norm(p + "output_convs.0.gn", F_)
    t(p + "mask_feature.weight", F_, F_, 1, 1)
    t(p + "mask_feature.bias", F_)
    h = "panoptic_head."
    for k in range(DEC):
        d = h + f"transformer_decoder.layers.{k}."
        for a in (0, 1):
            t(d + f"attentions.{a}.attn.in_proj_weight", 3 * F_, F_)
            t(d + f"attentions.{a}.attn.in_proj_bias", 3 * F_)
            lin(d + f"attentions.{a}.attn.out_proj", F_, F_)
        for n in range(3):
            norm(d + f"norms.{n}", F_)
        lin(d + "ffns.0.layers.0.0", FFN_DEC, F_)
        lin(d + "ffns.0.layers.1", F_, FFN_DEC)
    norm(h + "transformer_decoder.post_norm", F_)
    t(h + "query_embed.weight", Q, F_)
    t(h + "query_feat.weight", Q, F_)
    t(h + "level_embed.weight", 3, F_)
    lin(h + "cls_embed", CLASSES + 1, F_)
    for i in (0, 2, 4):
        lin(h + f"mask_embed.{i}", F_, F_)
    return sd


@pytest.fixture(scope="module")
def converted():
    from transformers import Mask2FormerForUniversalSegmentation

    sd = mmdet_state_dict()
    cfg = config_from_state_dict(sd)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    return sd, convert_state_dict(sd, model.state_dict().keys()), model


def test_every_key_lands_on_a_transformers_parameter_of_the_same_shape(converted):
    sd, hf, model = converted
    want = {k: v for k, v in model.state_dict().items() if not k.startswith("criterion.")}
    assert set(hf) == set(want), (sorted(set(want) - set(hf))[:5], sorted(set(hf) - set(want))[:5])
    for k, v in hf.items():
        assert v.shape == want[k].shape, k
    model.load_state_dict(hf, strict=False)
    for k, v in hf.items():
        assert torch.equal(model.state_dict()[k], v), k
    cfg = model.config
    assert (cfg.backbone_config.depths, cfg.backbone_config.num_heads, cfg.backbone_config.window_size) == \
           (list(DEPTHS), list(HEADS), WIN)
    assert (cfg.num_labels, cfg.num_queries, cfg.decoder_layers - 1, cfg.encoder_layers) == (CLASSES, Q, DEC, ENC)


def test_values_go_where_the_map_says(converted):
    sd, hf, _ = converted
    B = "model.pixel_level_module.encoder." + swin_prefix(hf)
    P, T = "model.pixel_level_module.decoder.", "model.transformer_module."
    qkv = sd["backbone.stages.2.blocks.1.attn.w_msa.qkv.weight"]
    c = qkv.shape[1]
    names = SWIN_BLOCK_NAMES[swin_naming(hf)]
    for i, n in enumerate("qkv"):
        assert torch.equal(hf[B + f"encoder.layers.2.blocks.1.{names[n]}.weight"], qkv[i * c:(i + 1) * c])
    assert torch.equal(hf["model.pixel_level_module.encoder.hidden_states_norms.stage3.weight"], sd["backbone.norm2.weight"])
    assert torch.equal(hf[P + "input_projections.2.0.weight"], sd["panoptic_head.pixel_decoder.input_convs.2.conv.weight"])
    assert torch.equal(hf[P + "adapter_1.1.bias"], sd["panoptic_head.pixel_decoder.lateral_convs.0.gn.bias"])
    assert torch.equal(hf[P + "level_embed"], sd["panoptic_head.pixel_decoder.level_encoding.weight"])
    assert torch.equal(hf[P + "encoder.layers.1.final_layer_norm.weight"],
                       sd["panoptic_head.pixel_decoder.encoder.layers.1.norms.1.weight"])
    d = "panoptic_head.transformer_decoder.layers.2."
    assert torch.equal(hf[T + "decoder.layers.2.cross_attn.in_proj_weight"], sd[d + "attentions.0.attn.in_proj_weight"])
    assert torch.equal(hf[T + "decoder.layers.2.self_attn.k_proj.bias"], sd[d + "attentions.1.attn.in_proj_bias"][F_:2 * F_])
    assert torch.equal(hf[T + "decoder.layers.2.cross_attn_layer_norm.weight"], sd[d + "norms.0.weight"])
    assert torch.equal(hf[T + "decoder.layers.2.self_attn_layer_norm.weight"], sd[d + "norms.1.weight"])
    assert torch.equal(hf[T + "decoder.mask_predictor.mask_embedder.2.0.weight"], sd["panoptic_head.mask_embed.4.weight"])
    assert torch.equal(hf["class_predictor.weight"], sd["panoptic_head.cls_embed.weight"])


def mmdet_patch_merging(x, hw, norm_w, norm_b, reduction_w):
    """mmdet/models/utils/transformer.py PatchMerging.forward (kernel 2, stride 2, nn.Unfold), on
    [B, H*W, C]."""
    B, L, C = x.shape
    H, W = hw
    x = x.view(B, H, W, C).permute([0, 3, 1, 2])
    x = nn.Unfold(kernel_size=2, dilation=1, padding=0, stride=2)(x)
    x = x.transpose(1, 2)
    x = nn.functional.layer_norm(x, (4 * C,), norm_w, norm_b)
    return x @ reduction_w.T


def test_patch_merging_computes_the_same_after_the_unfold_reorder(converted):
    """The one non-rename of the map: mmdet's PatchMerging sees the 2x2 neighbourhood in nn.Unfold's
    order; the converted weights make transformers' Swin merge compute the same function."""
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    sd, hf, _ = converted
    C = E * 2
    merge = SwinPatchMerging(C).double()
    pre = "model.pixel_level_module.encoder." + swin_prefix(hf) + "encoder.layers.1.downsample."
    merge.load_state_dict({k: hf[pre + k].double() for k in ("norm.weight", "norm.bias", "reduction.weight")})
    x = torch.randn(2, 64, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = mmdet_patch_merging(x, (8, 8), sd["backbone.stages.1.downsample.norm.weight"].double(),
                               sd["backbone.stages.1.downsample.norm.bias"].double(),
                               sd["backbone.stages.1.downsample.reduction.weight"].double())
    got = merge(x, (8, 8))
    assert torch.allclose(got, want, rtol=0, atol=1e-10)


def test_self_attention_split_computes_the_same(converted):
    """mmcv's MultiheadAttention is torch's nn.MultiheadAttention with a packed in_proj; transformers'
    decoder self-attention has separate q/k/v projections."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerAttention

    sd, hf, _ = converted
    d = "panoptic_head.transformer_decoder.layers.0.attentions.1.attn."
    ref = nn.MultiheadAttention(F_, DEC_HEADS).double().eval()
    ref.load_state_dict({"in_proj_weight": sd[d + "in_proj_weight"], "in_proj_bias": sd[d + "in_proj_bias"],
                         "out_proj.weight": sd[d + "out_proj.weight"], "out_proj.bias": sd[d + "out_proj.bias"]})
    ours = Mask2FormerAttention(F_, DEC_HEADS, is_decoder=True).double().eval()
    pre = "model.transformer_module.decoder.layers.0.self_attn."
    ours.load_state_dict({k[len(pre):]: v.double() for k, v in hf.items() if k.startswith(pre)})
    g = torch.Generator().manual_seed(2)
    x = torch.randn(Q, 2, F_, dtype=torch.float64, generator=g)  # [L, B, D]
    pos = torch.randn(Q, 2, F_, dtype=torch.float64, generator=g)  # the query embedding
    want = ref(x + pos, x + pos, x, need_weights=False)[0]  # mmcv: query_pos added to query and key
    got = ours(hidden_states=x, position_embeddings=pos)[0]  # sequence-first, as its decoder calls it
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("hw,resized,padded", [((512, 512), (800, 800), (800, 800)), ((480, 640), (800, 1067), (800, 1088)),
                                               ((1024, 256), (1333, 333), (1344, 352))])
def test_mmdet_test_time_resize_and_pad(hw, resized, padded):
    """mmcv.imrescale to fit (1333, 800): factor min(1333 / long, 800 / short), int(x f + 0.5); then
    Normalize (ImageNet mean/std on 0-255) and Pad to a multiple of 32 with 0."""
    assert mmdet_scale(*hw) == resized
    img = np.full((1, *hw, 3), 128, np.uint8)
    pv, mask = mmdet_preprocess(img)
    assert pv.shape == (1, 3, *padded) and mask.shape == (1, *padded)
    assert int(mask.sum()) == resized[0] * resized[1] and mask[0, :resized[0], :resized[1]].all()
    assert torch.allclose(pv[0, :, 0, 0], (128 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]))
    assert (pv[0, :, resized[0]:, :] == 0).all() and (pv[0, :, :, resized[1]:] == 0).all()


def test_convert_checkpoint_end_to_end_and_refuses_pickled_code(tmp_path):
    from reward_models.geneval import Mask2FormerDetector

    ckpt = tmp_path / "m2f.pth"
    torch.save({"state_dict": mmdet_state_dict(), "meta": {"CLASSES": ("person",) * 80, "epoch": 50}}, ckpt)
    out = convert_checkpoint(str(ckpt), str(tmp_path / "hf"))
    assert json.load(open(tmp_path / "hf" / "flowalign_detector.json"))["preprocess"] == "mmdet"
    det = Mask2FormerDetector(out, device="cpu")
    assert det.preprocess == "mmdet" and det.model.config.id2label[0] == "person"
    res = det(np.random.default_rng(0).integers(0, 256, (1, 64, 48, 3), dtype=np.uint8))
    assert len(res) == 1 and all(d.mask.shape == (64, 48) for dets in res[0].values() for d in dets)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"state_dict": {}, "meta": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="does not unpickle"):
        convert_checkpoint(str(tmp_path / "evil.pth"), str(tmp_path / "hf2"))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(str(tmp_path / "none.pth"), str(tmp_path / "hf3"))
