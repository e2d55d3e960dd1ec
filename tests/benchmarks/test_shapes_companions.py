"""The shapes world's reward companions: the committed captioner (PromptEcho's VLM), the Adv-GRPO
references and DINO backbone, their scripts, and the shipped PromptEcho-GRPO / Adv-GRPO configs."""

import json
import os
import random

import numpy as np
import pytest
import torch

from benchmarks.shapes import captioner
from benchmarks.shapes.companions import DINO, REFERENCES
from reward_models import build_reward
from reward_models.shapes.render import render_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTIONER = os.path.join(ROOT, "flowalign", "shapes", "captioner")


def test_augmented_batches_and_vocabulary():
    rows = captioner.world_rows()
    images, caps = captioner.batch(rows, random.Random(0), 64, augment=True)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert 0 < caps.count(captioner.NOISE_CAPTION) < 64
    clean, clean_caps = captioner.batch(rows, random.Random(0), 8)
    assert captioner.NOISE_CAPTION not in clean_caps
    vocab = set(captioner.vocabulary(rows))
    assert all(w in vocab for r in rows for w in r["prompt"].split())


def test_committed_captioner_echoes_the_rendered_prompt():
    """Rendered scenes echo their own prompt better than another prompt of the world."""
    r = build_reward("prompt_echo", model=CAPTIONER, device="cpu")
    rows = captioner.world_rows()
    rng = random.Random(7)
    picks = rng.sample(rows, 12)
    images = torch.stack([torch.from_numpy(render_prompt(p, seed=i)[0].copy()).permute(2, 0, 1).float() / 255
                          for i, p in enumerate(picks)])
    others = [rows[(rows.index(p) + 37) % len(rows)]["prompt"] for p in picks]
    matched, mismatched = r(images, [p["prompt"] for p in picks]), r(images, others)
    assert (matched > mismatched).float().mean() >= 0.9
    with open(os.path.join(CAPTIONER, "config.json")) as f:
        assert json.load(f)["architectures"] == ["LlavaForConditionalGeneration"]


def test_captioner_script_trains_saves_and_reloads(tmp_path):
    out = captioner.main(["--out", str(tmp_path / "cap"), "--minutes", "0.01", "--batch-size", "4", "--contrast", "1",
                          "--contrast-pairs", "2"])
    r = build_reward("prompt_echo", model=out, device="cpu")
    assert r(torch.rand(2, 3, 32, 32), ["a photo of a circle", "a photo of noise"]).shape == (2,)


def test_committed_adv_grpo_companions_load():
    files = sorted(os.listdir(REFERENCES))
    assert len(files) == 256 and all(f.endswith(".png") for f in files)
    r = build_reward("adversarial_dino", backbone=DINO, reference_dir=REFERENCES, device="cpu", k=1)
    assert r.reference.shape == (256, 3, 32, 32)
    assert r(torch.rand(2, 3, 32, 32), ["a", "b"]).shape == (2,)


@pytest.mark.parametrize("name", ["prompt_echo_grpo", "adv_grpo"])
def test_shipped_reward_model_configs_train(name, tmp_path):
    from flowalign.config import load_config
    from flowalign.trainer import Trainer

    cfg = load_config(os.path.join(ROOT, "configs", "shapes", f"{name}.yaml"), [
        f"run.output_dir={tmp_path / name}", "run.max_iterations=1", "run.sample_every=0", "run.progress=false",
        "eval.every=0", "algorithm.group_size=2", "algorithm.prompts_per_iteration=2", "sampler.num_steps=2",
        f"model.path={os.path.join(ROOT, 'flowalign', 'shapes', 'model')}",
        f"data.train_prompts={os.path.join(ROOT, 'flowalign', 'shapes', 'prompts', 'train.jsonl')}",
        *([f"reward.args.model={CAPTIONER}"] if name == "prompt_echo_grpo" else
          [f"reward.args.backbone={DINO}", f"reward.args.reference_dir={REFERENCES}"])])
    Trainer(cfg).train()
    m = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")][0]
    assert abs(m["first_ratio"] - 1) < 1e-5
    assert ("disc_loss" in m) == (name == "adv_grpo")


def test_committed_vision_tower_is_the_captioners():
    """flowalign/shapes/captioner_vision holds the captioner's vision tower, weight for weight (the
    captioner is stored in fp16; the tower in float32 from the same numbers)."""
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    from flowalign.shapes import CAPTIONER_VISION_DIR

    tower = CLIPVisionModel.from_pretrained(CAPTIONER_VISION_DIR)
    cap = LlavaForConditionalGeneration.from_pretrained(CAPTIONER, dtype=torch.float32).model.vision_tower
    a, b = tower.state_dict(), cap.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = build_reward("adversarial_dino", backbone=CAPTIONER_VISION_DIR, reference_dir=REFERENCES, device="cpu", k=1)
    assert r(torch.rand(2, 3, 32, 32), ["a", "b"]).shape == (2,)


def test_near_misses_and_contrast_pairs():
    """Near misses are other prompts a word or two away; contrast pairs hold a render of the prompt and a
    render of a near miss."""
    assert captioner.word_distance("a photo of a red circle", "a photo of a blue circle") == 1
    assert captioner.word_distance("a photo of a circle", "a photo of a circle and a square") == 3
    rows = captioner.world_rows()
    near = captioner.near_misses(rows, 1)
    i = next(k for k, r in enumerate(rows) if r["prompt"] == "a photo of two circles")
    assert "a photo of three circles" in {rows[j]["prompt"] for j in near[i]}
    assert all(rows[j]["prompt"] != rows[i]["prompt"] for j in near[i])
    pos, neg, caps = captioner.contrast_pairs(rows, near, random.Random(0), 6, augment=True)
    assert pos.shape == neg.shape == (6, 32, 32, 3) and len(caps) == 6
    assert all(c in {r["prompt"] for r in rows} for c in caps)
    assert (pos != neg).any(axis=(1, 2, 3)).all()


def test_contrast_loss_is_softplus_of_the_summed_echo_difference():
    """The ranking term against PromptEcho's own summed reward on the committed captioner."""
    r = build_reward("prompt_echo", model=CAPTIONER, device="cpu", reduction="sum")
    rows = captioner.world_rows()
    pos, neg, caps = captioner.contrast_pairs(rows, captioner.near_misses(rows), random.Random(3), 4)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    want = torch.nn.functional.softplus(-(r(to_t(pos), caps) - r(to_t(neg), caps))).mean()
    r.processor.tokenizer.padding_side = "right"
    with torch.no_grad():
        got = captioner.contrast_loss(r.model, r.processor, r.prefix, pos, neg, caps)
    assert torch.isclose(got.float(), want, rtol=1e-4, atol=1e-5)


def test_clip_script_trains_saves_and_scores_through_the_pickscore_reward(tmp_path):
    """benchmarks.shapes.clip trains a CLIPModel on renders and saves it; the co-trained PickScore reward
    reads it with prompt-matched references written by the companions script."""
    from benchmarks.shapes import clip, companions

    out = clip.main(["--out", str(tmp_path / "clip"), "--minutes", "0.01", "--batch-size", "8"])
    refs = companions.write_matched_references(str(tmp_path / "refs"), per_prompt=1,
                                               prompt_files=("train_hard.jsonl",))
    mapping = json.load(open(os.path.join(refs, "map.json")))
    from reward_models.shapes.prompts import read_jsonl

    hard = {r["prompt"] for r in read_jsonl(os.path.join(ROOT, "flowalign", "shapes", "prompts", "train_hard.jsonl"))}
    assert set(mapping) == hard and all(len(f) == 1 and os.path.isfile(os.path.join(refs, f[0]))
                                        for f in mapping.values())
    r = build_reward("adversarial_pickscore", model=out, processor=None, reference_dir=refs,
                     reference_map=os.path.join(refs, "map.json"), device="cpu", schedule="k_steps")
    prompts = list(mapping)[:2]
    assert r(torch.rand(2, 3, 32, 32), prompts).shape == (2,)
    assert r.update(torch.rand(2, 3, 32, 32), prompts, iteration=0)["disc_step"] == 1.0


def test_contrastive_loss_is_clip_symmetric_cross_entropy():
    from benchmarks.shapes.clip import contrastive_loss

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    s = torch.tensor(np.log(20.0), dtype=torch.float64)
    logits = 20.0 * v @ t.T
    want = sum(-torch.log_softmax(logits, 1)[i, i] - torch.log_softmax(logits, 0)[i, i] for i in range(4)) / 8
    assert torch.isclose(contrastive_loss(v, t, s), want, atol=1e-12)


def test_committed_pickscore_companions_load():
    """flowalign/shapes/clip and references_matched: every prompt of the training sets has two references
    on disk, and the co-trained PickScore reward reads them."""
    from flowalign.shapes import CLIP_DIR, MATCHED_REFERENCES_DIR, PROMPTS_DIR, REFERENCE_MAP
    from reward_models.shapes.prompts import read_jsonl

    mapping = json.load(open(REFERENCE_MAP))
    wanted = {r["prompt"] for f in ("train.jsonl", "train_color_attr.jsonl", "train_hard.jsonl")
              for r in read_jsonl(os.path.join(PROMPTS_DIR, f))}
    assert set(mapping) == wanted
    assert all(len(v) == 2 and all(os.path.isfile(os.path.join(MATCHED_REFERENCES_DIR, x)) for x in v)
               for v in mapping.values())
    r = build_reward("adversarial_pickscore", model=CLIP_DIR, processor=None, reference_dir=MATCHED_REFERENCES_DIR,
                     reference_map=REFERENCE_MAP, device="cpu")
    assert r(torch.rand(2, 3, 32, 32), sorted(wanted)[:2]).shape == (2,)
