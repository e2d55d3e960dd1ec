"""Tiny, offline-built diffusers pipelines for tests, benchmarks and the shapes testbed.

Nothing is downloaded: the CLIP tokenizer is built from the BPE vocabulary that open_clip ships,
and every model is initialised from a config. Saved with save_pretrained, the result is a
standard pipeline directory that StableDiffusion3Pipeline.from_pretrained loads."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from dataclasses import dataclass

import torch


def clip_tokenizer(model_max_length: int = 77, num_merges: int | None = None):
    """A transformers CLIPTokenizer equal to OpenAI CLIP's, from open_clip's packaged BPE file.

    `num_merges` keeps only the first merges (a smaller vocabulary: 512 byte tokens + merges + 2);
    every text still tokenizes, into smaller pieces."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]][:num_merges]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                             model_max_length=model_max_length)


BASIC_WORDS = (
    "a an the of and with to in on at photo image picture left right above below top bottom next "
    "one two three four five six seven eight nine ten red orange yellow green blue purple pink brown "
    "black white gray circle square triangle star hexagon ring cross diamond small large big"
).split()


def t5_tokenizer(words: list[str] | None = None):
    """A small sentencepiece-style (Unigram) T5 tokenizer from a word list plus single characters,
    so any text tokenizes. Built offline with the tokenizers-backed transformers class."""
    from transformers import T5Tokenizer

    words = list(dict.fromkeys(words or BASIC_WORDS))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,-'"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + w, -1.0) for w in words]
    vocab += [(c, -6.0) for c in chars] + [("\u2581" + c, -5.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@dataclass
class TinySD3Config:
    """Sizes of a tiny SD3 pipeline. Defaults give a ~0.3M-parameter transformer for unit tests."""

    sample_size: int = 32  # image side in pixels
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (8, 16)  # one down-sampling per extra entry
    patch_size: int = 2
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    text_hidden: int = 32  # hidden size of each CLIP text encoder
    text_layers: int = 2
    text_projection: int = 32
    t5_dim: int = 64  # width of the tiny T5 encoder (= the transformer's joint_attention_dim)
    clip_merges: int | None = None  # None: CLIP's full 49408-token vocabulary; else a smaller one
    clip_max_length: int = 77  # CLIP tokens per prompt (the pipeline pads to this length)
    shift: float = 3.0
    seed: int = 0


def tiny_sd3_pipeline(cfg: TinySD3Config | None = None, **overrides):
    """A randomly initialised StableDiffusion3Pipeline: two tiny CLIP text encoders and a tiny T5."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = cfg or TinySD3Config()
    if cfg.t5_dim < 2 * cfg.text_hidden:
        raise ValueError(f"t5_dim={cfg.t5_dim} must be at least 2 * text_hidden={2 * cfg.text_hidden} "
                         "(SD3 pads the concatenated CLIP embeddings to the T5 width).")
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"TinySD3Config has no field {k!r}; use one of {sorted(vars(cfg))}.")
        setattr(cfg, k, v)
    torch.manual_seed(cfg.seed)
    down = len(cfg.vae_channels) - 1
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=cfg.vae_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        norm_num_groups=min(cfg.vae_channels), sample_size=cfg.sample_size,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    latent_size = cfg.sample_size // 2**down
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=cfg.patch_size, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels, num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.t5_dim, caption_projection_dim=cfg.num_attention_heads * cfg.attention_head_dim,
        pooled_projection_dim=2 * cfg.text_projection, pos_embed_max_size=latent_size // cfg.patch_size * 2,
    )
    tok = clip_tokenizer(cfg.clip_max_length, num_merges=cfg.clip_merges)
    text_cfg = CLIPTextConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        vocab_size=len(tok), hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
        num_attention_heads=2, num_hidden_layers=cfg.text_layers, projection_dim=cfg.text_projection,
        hidden_act="gelu", max_position_embeddings=77,
    )
    te1 = CLIPTextModelWithProjection(text_cfg)
    te2 = CLIPTextModelWithProjection(text_cfg)
    tok3 = t5_tokenizer()
    te3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=cfg.t5_dim, d_kv=cfg.t5_dim // 4, d_ff=cfg.t5_dim,
                                  num_layers=1, num_heads=4, pad_token_id=tok3.pad_token_id,
                                  eos_token_id=tok3.eos_token_id, decoder_start_token_id=0))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift), vae=vae,
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=clip_tokenizer(cfg.clip_max_length, num_merges=cfg.clip_merges),
        text_encoder_3=te3, tokenizer_3=tok3,
    )


def save_tiny_sd3(path: str | os.PathLike, cfg: TinySD3Config | None = None, **overrides) -> str:
    """Build a tiny SD3 pipeline and save it as a standard diffusers directory at `path`."""
    pipe = tiny_sd3_pipeline(cfg, **overrides)
    pipe.save_pretrained(str(path))
    return str(path)


def tiny_flux_pipeline(guidance_embeds: bool = True, seed: int = 0, sample_size: int = 32):
    """A randomly initialised FluxPipeline (diffusers' own test sizes): one double and one single
    transformer block, a tiny CLIP and a tiny T5, a one-channel VAE with one down-sampling.
    guidance_embeds=True is FLUX.1-dev-like, False schnell-like."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds)
    tok = clip_tokenizer(77, num_merges=2000)
    te = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=32, hidden_act="gelu", max_position_embeddings=77))
    tok2 = t5_tokenizer()
    te2 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                  pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id,
                                  decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=1, block_out_channels=(4, 8),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=sample_size,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                        vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2)


def save_tiny_flux(path: str | os.PathLike, guidance_embeds: bool = True, seed: int = 0) -> str:
    """Build a tiny FLUX pipeline and save it with save_pretrained, plus flowalign.json sampling
    defaults (32x32 images, 4 steps, guidance 3.5, 16 T5 tokens)."""
    pipe = tiny_flux_pipeline(guidance_embeds=guidance_embeds, seed=seed)
    pipe.save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 32, "width": 32, "num_steps": 4, "guidance": 3.5, "max_sequence_length": 16}, f)
    return str(path)


def tiny_wan_pipeline(seed: int = 0, two_experts: bool = False):
    """A randomly initialised WanPipeline (diffusers' test sizes): a two-layer WanTransformer3DModel,
    a tiny T5 encoder with the offline word-level tokenizer, a tiny AutoencoderKLWan (x8 spatial,
    x4 temporal), Euler flow-matching scheduler with shift 7. `two_experts`: Wan2.2 A14B's layout, a
    second (low-noise) transformer and boundary_ratio 0.875, the T2V checkpoint's."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    tok = t5_tokenizer()
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0))
    def transformer():
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                     in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                     num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                     rope_max_seq_len=32)

    experts = {"transformer_2": transformer(), "boundary_ratio": 0.875} if two_experts else {}
    return WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **experts)


def save_tiny_wan(path: str | os.PathLike, seed: int = 0, two_experts: bool = False) -> str:
    """Build a tiny Wan pipeline, save it with save_pretrained, plus flowalign.json defaults (16x16
    pixels, 9 frames, 3 steps, guidance 3, 16 text tokens; with `two_experts`, Wan2.2 A14B's layout,
    4 steps, whose timesteps 1000, 934, 781 and 47 put two on each expert, and guidance 3 / 2 for
    the high- / low-noise expert)."""
    pipe = tiny_wan_pipeline(seed=seed, two_experts=two_experts)
    pipe.save_pretrained(str(path))
    defaults = {"height": 16, "width": 16, "num_frames": 9, "num_steps": 3, "guidance": 3.0, "max_sequence_length": 16}
    if two_experts:
        defaults.update(num_steps=4, guidance_2=2.0)
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump(defaults, f)
    return str(path)


def qwen2_tokenizer():
    """An offline byte-level Qwen2 tokenizer: the 256 byte symbols (no merges) plus Qwen's chat
    special tokens, enough for QwenImagePipeline's prompt template."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=specials)


def tiny_qwen_image_pipeline(seed: int = 0):
    """A randomly initialised QwenImagePipeline (diffusers' test sizes): a two-layer
    QwenImageTransformer2DModel, a tiny Qwen2.5-VL text encoder with the offline byte-level tokenizer,
    a tiny AutoencoderKLQwenImage (x4 spatial)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    tok = qwen2_tokenizer()
    cfg = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2],
                                                                "rope_type": "default"},
                     "rope_theta": 1000000.0, "vocab_size": len(tok), "max_position_embeddings": 1024,
                     "bos_token_id": 0, "eos_token_id": 0},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        vocab_size=len(tok), hidden_size=16, bos_token_id=0, eos_token_id=0,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"))
    te = Qwen2_5_VLForConditionalGeneration(cfg)
    return QwenImagePipeline(transformer=transformer, vae=vae, text_encoder=te, tokenizer=tok,
                             scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))


def save_tiny_qwen_image(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny Qwen-Image pipeline, save it, plus flowalign.json defaults (32x32, 3 steps,
    true-CFG 4, 64 text tokens)."""
    pipe = tiny_qwen_image_pipeline(seed=seed)
    pipe.save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 32, "width": 32, "num_steps": 3, "guidance": 4.0, "max_sequence_length": 64}, f)
    return str(path)


QWEN3_VL_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
                          "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
                          "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen_image21_pipeline(seed: int = 0):
    """A randomly initialised QwenImage21Pipeline: a two-layer single-stream transformer on 4 latent
    channels, a tiny Qwen3-VL (Qwen3VLProcessor with the offline byte-level Qwen tokenizer and a chat
    template), a 4-channel RGBA VAE with the pipeline's fixed 16x spatial compression and
    non-trivial latent statistics."""
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    torch.manual_seed(seed)
    tok = qwen2_tokenizer()
    proc = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                            video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN3_VL_CHAT_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    te = Qwen3VLForConditionalGeneration(Qwen3VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                     "max_position_embeddings": 512,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2],
                                         "mrope_interleaved": True}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16,
                       "deepstack_visual_indexes": [0], "patch_size": 8, "num_position_embeddings": 16},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>")))
    transformer = QwenImage21Transformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                                attention_head_dim=8, num_attention_heads=2, context_in_dim=16,
                                                mlp_ratio=2, axes_dims_rope=(2, 2, 4))
    gen = torch.Generator().manual_seed(seed)
    vae = AutoencoderKLQwenImage21(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, False, False, False],
                                   latents_mean=torch.randn(4, generator=gen).mul(0.3).tolist(),
                                   latents_std=torch.rand(4, generator=gen).add(0.5).tolist())
    return QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                               text_encoder=te, processor=proc, transformer=transformer)


def save_tiny_qwen_image21(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny Qwen-Image 2.1 pipeline and save it, plus flowalign.json defaults (64x64, 4 steps,
    no CFG)."""
    tiny_qwen_image21_pipeline(seed=seed).save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 64, "width": 64, "num_steps": 4, "guidance": 1.0}, f)
    return str(path)


def save_tiny_mask2former(path: str | os.PathLike, num_labels: int = 80, image_size: int = 64, seed: int = 0) -> str:
    """A random Mask2Former (tiny Swin backbone) with its image processor, in the layout of a hub
    COCO-instance checkpoint."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, num_queries=20, encoder_layers=1, decoder_layers=2,
                            encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
                            use_pretrained_backbone=False)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": image_size, "longest_edge": 2 * image_size}).save_pretrained(path)
    return str(path)


TINY_OPEN_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def save_tiny_open_clip(path: str | os.PathLike, seed: int = 0, model_cfg: dict | None = None) -> str:
    """A random open_clip CLIP (CLIP's BPE tokenizer, shipped by open_clip) in open_clip's hub layout."""
    import open_clip

    from reward_models.open_clip_common import save_open_clip

    torch.manual_seed(seed)
    cfg = model_cfg or TINY_OPEN_CLIP
    return save_open_clip(open_clip.CLIP(**cfg), cfg, str(path))


VLM_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
VLM_CHAT_WORDS = ["USER", "ASSISTANT", ":", ".", "?", ",", "describe", "the", "image", "which", "matches", "caption",
                  "better", "answer", "first", "second", "or"]
# USER: <image> ... text ... ASSISTANT: answer   (one user turn; images where the content says)
VLM_CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                     "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
                     "{% else %}ASSISTANT: {{ m['content'][0]['text'] }} {% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def word_tokenizer(words: list[str]):
    """An offline word-level tokenizer (whitespace and punctuation split) over `words` plus the VLM
    special tokens, as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*VLM_SPECIALS, *VLM_CHAT_WORDS, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def tiny_llava(words: list[str], image_size: int = 32, patch_size: int = 8, vision_width: int = 32,
               text_width: int = 64, layers: int = 2, seed: int = 0):
    """A tiny LLaVA (CLIP vision tower + Llama language model, transformers' real classes) and its
    processor with a chat template: an image-text-to-text model built offline."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = word_tokenizer(words)
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_width,
                          intermediate_size=2 * vision_width, num_hidden_layers=layers, num_attention_heads=2)
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=text_width, intermediate_size=2 * text_width,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                     max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size, image_token="<image>",
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=VLM_CHAT_TEMPLATE)
    return model, proc


def tiny_clip(image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2, projection_dim: int = 32,
              num_merges: int = 2000, seed: int = 0):
    """A tiny CLIPModel (transformers' real class, random weights) and its CLIPProcessor, with CLIP's
    BPE tokenizer cut to `num_merges` merges: a text-image scorer built offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = clip_tokenizer(77, num_merges=num_merges)
    torch.manual_seed(seed)
    block = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers, "num_attention_heads": 4}
    cfg = CLIPConfig(text_config={**block, "vocab_size": len(tok), "max_position_embeddings": 77,
                                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                  "pad_token_id": tok.pad_token_id},
                     vision_config={**block, "image_size": image_size, "patch_size": patch_size},
                     projection_dim=projection_dim)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return CLIPModel(cfg), CLIPProcessor(image_processor=ip, tokenizer=tok)


def save_tiny_llava(path: str | os.PathLike, words: list[str] | None = None, seed: int = 0) -> str:
    words = words or "a an photo of red blue green circle square triangle two three left right".split()
    model, proc = tiny_llava(words, seed=seed)
    model.save_pretrained(str(path))
    proc.save_pretrained(str(path))
    return str(path)


ZIMAGE_CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                        "{% if add_generation_prompt %}<s> assistant :{% endif %}")


def chat_word_tokenizer():
    """The offline word-level tokenizer of the Qwen3-based tiny pipelines, with a chat template."""
    tok = word_tokenizer("a an photo of red blue green yellow circle square triangle two three left right above "
                         "below user assistant".split())
    tok.chat_template = ZIMAGE_CHAT_TEMPLATE
    return tok


def tiny_z_image_pipeline(seed: int = 0):
    """A randomly initialised ZImagePipeline: a two-layer Z-Image transformer, a tiny Qwen3 text
    encoder with an offline word-level tokenizer and a chat template, a 4-channel VAE with one
    down-sampling."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = chat_word_tokenizer()
    te = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                                pad_token_id=tok.pad_token_id))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=64,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                                           axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.1159, scaling_factor=0.3611)
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                          text_encoder=te, tokenizer=tok, transformer=transformer)


def save_tiny_z_image(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny Z-Image pipeline and save it with save_pretrained, plus flowalign.json sampling
    defaults (32x32 images, 4 steps, no CFG, 16 tokens)."""
    tiny_z_image_pipeline(seed=seed).save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 32, "width": 32, "num_steps": 4, "guidance": 1.0, "max_sequence_length": 16}, f)
    return str(path)


def tiny_flux2_klein_pipeline(seed: int = 0, distilled: bool = False):
    """A randomly initialised Flux2KleinPipeline: one double and one single FLUX.2 block, a tiny
    27-layer Qwen3 (the pipeline reads hidden states 9, 18 and 27) with an offline word-level
    tokenizer and a chat template, a 4-channel FLUX.2 VAE with one down-sampling and non-trivial
    batch-norm statistics."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = chat_word_tokenizer()
    te = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=27,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                      max_position_embeddings=128, pad_token_id=tok.pad_token_id))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                             layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=32,
                             use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                              text_encoder=te, tokenizer=tok, transformer=transformer, is_distilled=distilled)


def save_tiny_flux2_klein(path: str | os.PathLike, seed: int = 0, distilled: bool = False) -> str:
    """Build a tiny FLUX.2 [klein] pipeline and save it with save_pretrained, plus flowalign.json sampling
    defaults (32x32 images, 4 steps, no CFG, 16 tokens)."""
    tiny_flux2_klein_pipeline(seed=seed, distilled=distilled).save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 32, "width": 32, "num_steps": 4, "guidance": 1.0, "max_sequence_length": 16}, f)
    return str(path)


# the user turns only (FLUX.2 [dev]'s long system message would fill a tiny test's token budget)
USER_TURN_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<s> user : {% for c in m['content'] %}"
                      "{{ c['text'] }}{% endfor %} </s> {% endif %}{% endfor %}")


def tiny_flux2_pipeline(seed: int = 0):
    """A randomly initialised Flux2Pipeline (FLUX.2 [dev]): one double and one single FLUX.2 block with
    a guidance embedding, a tiny 30-layer Mistral3 (Pixtral vision tower, the pipeline reads text
    hidden states 10, 20 and 30) with an offline word-level tokenizer whose chat template renders
    the user turn, and the [klein] tiny model's FLUX.2 VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    klein = tiny_flux2_klein_pipeline(seed=seed)
    torch.manual_seed(seed + 1)
    tok = word_tokenizer("a an photo of red blue green yellow circle square triangle two three left right above "
                         "below user".split())
    tok.chat_template = USER_TURN_TEMPLATE
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, image_size=32, patch_size=8)
    text = MistralConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=30,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id)
    te = Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text,
                                                         image_token_index=tok.convert_tokens_to_ids("<image>")))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=True)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=klein.vae,
                         text_encoder=te, tokenizer=tok, transformer=transformer)


def save_tiny_flux2(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny FLUX.2 [dev] pipeline and save it with save_pretrained, plus flowalign.json sampling
    defaults (32x32 images, 4 steps, embedded guidance 4, 16 tokens)."""
    tiny_flux2_pipeline(seed=seed).save_pretrained(str(path))
    with open(os.path.join(str(path), "flowalign.json"), "w") as f:
        json.dump({"height": 32, "width": 32, "num_steps": 4, "guidance": 4.0, "max_sequence_length": 16}, f)
    return str(path)


TINY_FAMILIES = {
    "sd3": save_tiny_sd3,
    "flux": save_tiny_flux,
    "flux_schnell": lambda path, **kw: save_tiny_flux(path, guidance_embeds=False, **kw),
    "qwen_image": save_tiny_qwen_image,
    "qwen_image21": save_tiny_qwen_image21,
    "wan": save_tiny_wan,
    "wan22": lambda path, **kw: save_tiny_wan(path, two_experts=True, **kw),
    "z_image": save_tiny_z_image,
    "flux2_klein": save_tiny_flux2_klein,
    "flux2": save_tiny_flux2,
}


def save_tiny(family: str, path: str | os.PathLike, **kwargs) -> str:
    """A tiny offline pipeline of `family` saved with save_pretrained at `path` (loadable by stock
    diffusers' DiffusionPipeline.from_pretrained and by flowalign.policies.load_policy)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"family {family!r} has no tiny pipeline; use one of {', '.join(sorted(TINY_FAMILIES))}.")
    return TINY_FAMILIES[family](path, **kwargs)
