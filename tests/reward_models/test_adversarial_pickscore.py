"""Adv-GRPO's co-trained PickScore reward (reward_models/adversarial_pickscore.py) on a tiny CLIPModel
saved and reloaded offline, checked against transcriptions of showlab/Adv-GRPO
`adv_grpo/pickscore_scorer.py` (the score) and `adv_grpo/pick_score_training.py` (CLIPCriterion, the
discriminator loss), and in the training engine."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from reward_models import build_reward
from reward_models.adversarial_pickscore import preference_loss

PROMPTS = ["a red circle", "a blue square"]
LONG_PROMPT = " ".join(["a red circle and"] * 30) + " a square"  # past CLIP's 77 positions


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from flowalign.testing import tiny_clip

    model, proc = tiny_clip(image_size=16, patch_size=4, width=32, layers=3, projection_dim=16, num_merges=500)
    path = tmp_path_factory.mktemp("clip") / "tiny"
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return str(path)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.fixture
def refs(tmp_path):
    """Four reference images (0-3.png) and a map giving each test prompt two of them."""
    d = tmp_path / "refs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(_image(i)).save(d / f"{i}.png")
    m = tmp_path / "map.json"
    m.write_text(json.dumps({PROMPTS[0]: ["0.png", "1.png"], PROMPTS[1]: ["2.png", "3.png"]}))
    return str(d), str(m)


def _to_tensor(arrays) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])


def _reward(clip_dir, refs, **kw):
    return build_reward("adversarial_pickscore", model=clip_dir, processor=None, reference_dir=refs[0],
                        reference_map=refs[1], device="cpu", **{"lr": 1e-3, **kw})


def ref_pickscore_scorer(model, processor, prompts, pil_images):
    """Transcribed from adv_grpo/pickscore_scorer.py PickScoreScorer.__call__ (float64 features)."""
    image_inputs = processor(images=pil_images, return_tensors="pt")
    text_inputs = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    from reward_models.clip_common import features

    image_embs = features(model.get_image_features(**image_inputs)).double()
    image_embs = image_embs / image_embs.norm(p=2, dim=-1, keepdim=True)
    text_embs = features(model.get_text_features(**text_inputs)).double()
    text_embs = text_embs / text_embs.norm(p=2, dim=-1, keepdim=True)
    logit_scale = model.logit_scale.exp().double()
    scores = logit_scale * (text_embs @ image_embs.T)
    return scores.diag() / 26


def ref_clip_criterion(text_features, image_0_features, image_1_features, logit_scale, label_0, label_1):
    """Transcribed from adv_grpo/pick_score_training.py CLIPCriterion.calc_loss, in_batch_negatives False,
    on features already normalised (get_features does that first)."""
    all_image_features = torch.cat([image_0_features, image_1_features], dim=0)
    text_logits = logit_scale * text_features @ all_image_features.T
    text_0_logits, text_1_logits = text_logits.chunk(2, dim=-1)
    index = torch.arange(text_0_logits.shape[0], dtype=torch.long)
    text_0_logits = text_0_logits[index, index]
    text_1_logits = text_1_logits[index, index]
    text_logits = torch.stack([text_0_logits, text_1_logits], dim=-1)
    text_0_labels = torch.zeros(text_logits.shape[0], dtype=torch.long)
    text_1_labels = text_0_labels + 1
    text_0_loss = torch.nn.functional.cross_entropy(text_logits, text_0_labels, reduction="none")
    text_1_loss = torch.nn.functional.cross_entropy(text_logits, text_1_labels, reduction="none")
    text_loss = label_0 * text_0_loss + label_1 * text_1_loss
    is_tie = (label_0 == label_1).to(text_logits.dtype) * torch.log(torch.tensor(0.5, dtype=text_logits.dtype))
    return (text_loss + is_tie).mean()


def test_score_matches_the_reference_scorer(clip_dir, refs):
    r = _reward(clip_dir, refs)
    arrays = [_image(10), _image(11)]
    got = r(_to_tensor(arrays), PROMPTS)
    want = ref_pickscore_scorer(r.model, r.processor, PROMPTS, [Image.fromarray(a) for a in arrays])
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_preference_loss_is_clip_criterion_with_the_reference_preferred():
    g = torch.Generator().manual_seed(0)
    t, a, b = (torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ls = torch.tensor(np.log(100.0), dtype=torch.float64)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    want = ref_clip_criterion(unit(t), unit(a), unit(b), ls.exp(), torch.tensor(1.0, dtype=torch.float64),
                              torch.tensor(0.0, dtype=torch.float64))
    assert torch.allclose(preference_loss(t, a, b, ls), want, atol=1e-12)


def _split(r, prompt):
    """(file with the lower score, file with the higher score) among a prompt's two references."""
    files = r.reference_map[prompt]
    imgs = _to_tensor([np.array(Image.open(os.path.join(r.reference_dir, f)).convert("RGB")) for f in files])
    s = r(imgs, [prompt, prompt])
    lo, hi = (0, 1) if s[0] < s[1] else (1, 0)
    return files[lo], imgs[hi:hi + 1]


def test_reference_schedule_steps_only_when_the_references_score_lower(clip_dir, refs, tmp_path):
    """The released script: `if reference_rewards_mean < rewards_mean`: one discriminator step and no
    policy update that iteration (`continue`); otherwise the policy trains and the discriminator rests.
    Only the last vision layer changes (the reference's tune_layer = -1)."""
    r = _reward(clip_dir, refs)
    low_file, high_image = _split(r, PROMPTS[0])
    mapping = tmp_path / "low.json"
    mapping.write_text(json.dumps({PROMPTS[0]: [low_file]}))
    r = _reward(clip_dir, (refs[0], str(mapping)))
    before = {n: p.detach().clone() for n, p in r.model.named_parameters()}
    stats = r.update(high_image, [PROMPTS[0]], iteration=3)
    assert stats["disc_step"] == 1.0 and stats["disc_loss"] > 0 and r.updates == 1
    assert not r.trains_generator(3) and r.trains_generator(4)
    changed = {n for n, p in r.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("vision_model.encoder.layers.2.") for n in changed)
    assert set(r.tuned_names) >= changed
    # the references now score higher: the discriminator rests and the policy trains
    hi_file = [f for f in ("0.png", "1.png") if f != low_file][0]
    mapping.write_text(json.dumps({PROMPTS[0]: [hi_file]}))
    r2 = _reward(clip_dir, (refs[0], str(mapping)))
    low_image = _to_tensor([np.array(Image.open(os.path.join(refs[0], low_file)).convert("RGB"))])
    assert r2.update(low_image, [PROMPTS[0]], iteration=5)["disc_step"] == 0.0
    assert r2.updates == 0 and r2.trains_generator(5)


def test_k_steps_state_round_trip_and_errors(clip_dir, refs, tmp_path):
    r = _reward(clip_dir, refs, schedule="k_steps", k=2)
    fake = _to_tensor([_image(20), _image(21)])
    assert r.update(fake, PROMPTS, iteration=0)["disc_step"] == 2.0 and r.trains_generator(0)
    state = r.state_dict()
    torch.save(state, tmp_path / "reward.pt")
    r2 = _reward(clip_dir, refs, schedule="k_steps", k=2)
    r2.load_state_dict(torch.load(tmp_path / "reward.pt", weights_only=True))
    assert torch.equal(r(fake, PROMPTS), r2(fake, PROMPTS))
    saved_scores = r2(fake, PROMPTS)
    r.update(fake, PROMPTS, iteration=1)
    r2.update(fake, PROMPTS, iteration=1)  # a resumed discriminator continues exactly
    assert torch.equal(r(fake, PROMPTS), r2(fake, PROMPTS)) and r2.updates == 4
    # a reward.pt written when the reward still kept a random generator loads the same
    r3 = _reward(clip_dir, refs, schedule="k_steps", k=2)
    r3.load_state_dict({**state, "generator": torch.Generator().get_state()})
    assert torch.equal(r3(fake, PROMPTS), saved_scores) and r3.updates == 2
    with pytest.raises(ValueError, match="needs reward.args.reference_dir and reward.args.reference_map"):
        build_reward("adversarial_pickscore", model=clip_dir, processor=None, reference_dir=refs[0], device="cpu")
    with pytest.raises(ValueError, match="schedule 'alternate' is unknown"):
        _reward(clip_dir, refs, schedule="alternate")
    with pytest.raises(ValueError, match="tune_layers=9"):
        _reward(clip_dir, refs, tune_layers=9)
    with pytest.raises(ValueError, match="'a cow' has no reference images"):
        r.update(fake[:1], ["a cow"], iteration=2)


def test_engine_runs_adv_grpo_with_the_pickscore_discriminator(clip_dir, refs, tiny_sd3_dir, tmp_path):
    """algorithm.name=adv_grpo with reward.name=adversarial_pickscore: the engine trains the
    discriminator (k_steps), updates the policy and checkpoints the discriminator; a resumed run
    restores it."""
    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = (f"{{model: {clip_dir}, processor: null, reference_dir: {refs[0]}, reference_map: {refs[1]}, "
            "schedule: k_steps, k: 1, device: cpu}")
    kw = {"algorithm.name": "adv_grpo", "reward.name": "adversarial_pickscore", "reward.args": args,
          "run.max_iterations": 2, "run.sample_every": 0}
    t = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), str(prompts), **kw)))
    t.train()
    m = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(x["disc_step"] == 1.0 and "first_ratio" in x for x in m)
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "iter_000002" / "reward.pt")
    t2 = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), str(prompts),
                                             **{**kw, "run.resume": True})))
    t2.resume()
    assert t2.reward.updates == 2
    for n in t.reward.tuned_names:
        assert torch.equal(dict(t.reward.model.named_parameters())[n], dict(t2.reward.model.named_parameters())[n])


def test_defaults_are_the_released_scripts():
    """The defaults of adv_grpo/pickscore_scorer.py and config/grpo.py pickscore_cotrain_sd3_fast: PickScore_v1
    with the LAION ViT-H-14 processor, d_lr 5e-6, Adam betas (0.5, 0.999), tune_layer -1, the reference schedule."""
    import inspect

    from reward_models.adversarial_pickscore import REFERENCE_SCALE, AdversarialPickScoreReward

    p = inspect.signature(AdversarialPickScoreReward).parameters
    assert p["model"].default == "yuvalkirstain/PickScore_v1"
    assert p["processor"].default == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert (p["lr"].default, tuple(p["betas"].default), p["tune_layers"].default) == (5e-6, (0.5, 0.999), 1)
    assert (p["schedule"].default, p["k"].default, REFERENCE_SCALE) == ("reference", 1, 1 / 26)


def test_prompts_of_any_length_are_padded_truncated_and_batched(clip_dir, refs):
    """Prompts of different token lengths share a batch (padding); a prompt past CLIP's 77 positions is
    truncated, as the reference's processor call does; chunking by batch_size changes no score."""
    prompts = ["a circle", LONG_PROMPT, PROMPTS[1]]
    arrays = [_image(30), _image(31), _image(32)]
    r = _reward(clip_dir, refs, batch_size=1)
    got = r(_to_tensor(arrays), prompts)
    want = ref_pickscore_scorer(r.model, r.processor, prompts, [Image.fromarray(a) for a in arrays])
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.allclose(_reward(clip_dir, refs, batch_size=2)(_to_tensor(arrays), prompts), got, atol=1e-6)
    with pytest.raises(ValueError, match="scores 3 images against 2 prompts"):
        r(_to_tensor(arrays), prompts[:2])


def test_k_steps_are_adam_steps_on_fresh_losses(clip_dir, refs):
    """k discriminator steps = k Adam steps (lr, betas (0.5, 0.999)) of the preference loss, each on the
    gradient of its own step only; disc_loss is their mean, reference_reward is absent."""
    fake = _to_tensor([_image(40), _image(41)])
    r = _reward(clip_dir, refs, schedule="k_steps", k=2, lr=1e-2)
    # the same two steps by hand on a copy of the model
    m = _reward(clip_dir, refs, schedule="k_steps", k=2, lr=1e-2)
    real = torch.cat([_to_tensor([np.array(Image.open(os.path.join(refs[0], f)).convert("RGB"))])
                      for f in ("0.png", "2.png")])  # each prompt's first reference, in batch order
    opt = torch.optim.Adam(m.tuned, lr=1e-2, betas=(0.5, 0.999))
    losses = []
    for _ in range(2):
        loss = preference_loss(m.text_features(PROMPTS), m.image_features(real), m.image_features(fake),
                               m.model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    stats = r.update(fake, PROMPTS, iteration=0)
    assert stats["disc_loss"] == pytest.approx(sum(losses) / 2, rel=1e-6) and "reference_reward" not in stats
    for n in r.tuned_names:
        assert torch.allclose(dict(r.model.named_parameters())[n], dict(m.model.named_parameters())[n], atol=1e-6), n


def test_reference_schedule_reports_the_references_score_and_the_step_loss(clip_dir, refs, tmp_path):
    r = _reward(clip_dir, refs)
    low_file, high_image = _split(r, PROMPTS[0])
    mapping = tmp_path / "low.json"
    mapping.write_text(json.dumps({PROMPTS[0]: [low_file]}))
    r = _reward(clip_dir, (refs[0], str(mapping)))
    low = _to_tensor([np.array(Image.open(os.path.join(refs[0], low_file)).convert("RGB"))])
    with torch.no_grad():
        want_ref = float(r(low, [PROMPTS[0]]).mean())
        want_loss = float(preference_loss(r.text_features([PROMPTS[0]]), r.image_features(low),
                                          r.image_features(high_image), r.model.logit_scale))
    stats = r.update(high_image, [PROMPTS[0]], iteration=0)
    assert stats["reference_reward"] == pytest.approx(want_ref, rel=1e-6)
    assert stats["disc_loss"] == pytest.approx(want_loss, rel=1e-6)


def test_tune_layers_counts_from_the_last_vision_layer(clip_dir, refs):
    r = _reward(clip_dir, refs, tune_layers=3)  # all three layers of the tiny tower
    layers = {n.split(".")[3] for n in r.tuned_names}
    assert layers == {"0", "1", "2"} and all(n.startswith("vision_model.encoder.layers.") for n in r.tuned_names)
    two = {n.split(".")[3] for n in _reward(clip_dir, refs, tune_layers=2).tuned_names}
    assert two == {"1", "2"}
    with pytest.raises(ValueError, match="tune_layers=0 must be between 1"):
        _reward(clip_dir, refs, tune_layers=0)


def test_clip_scores_is_the_scaled_cosine_over_the_last_axis():
    """exp(logit_scale) cos(t, v) along the feature axis, for any leading batch shape (float64 closed form)."""
    from reward_models.adversarial_pickscore import clip_scores

    g = torch.Generator().manual_seed(1)
    t, v = torch.randn(2, 3, 6, generator=g, dtype=torch.float64), torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    ls = torch.tensor(2.0, dtype=torch.float64)
    want = torch.tensor([[float(np.exp(2.0) * np.dot(t[i, j], v[i, j]) / (np.linalg.norm(t[i, j]) * np.linalg.norm(v[i, j])))
                          for j in range(3)] for i in range(2)], dtype=torch.float64)
    got = clip_scores(t, v, ls)
    assert got.shape == (2, 3) and torch.allclose(got, want, atol=1e-12)


def test_scores_chunk_over_images_not_channels_and_truncate_at_77(clip_dir, refs):
    """Five images in chunks of two score as one batch; the 77-token cap is the reference's own, not the
    tokenizer's model_max_length (here raised past the text tower's positions)."""
    arrays = [_image(50 + i) for i in range(5)]
    prompts = [PROMPTS[0], LONG_PROMPT, PROMPTS[1], "a circle", LONG_PROMPT]
    r = _reward(clip_dir, refs, batch_size=2)
    r.processor.tokenizer.model_max_length = 1000
    got = r(_to_tensor(arrays), prompts)
    assert got.shape == (5,)
    r.processor.tokenizer.model_max_length = 77
    want = ref_pickscore_scorer(r.model, r.processor, prompts, [Image.fromarray(a) for a in arrays])
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_reference_schedule_rests_on_a_tie(clip_dir, refs, tmp_path):
    """`if reference_rewards_mean < rewards_mean` steps; equal means (the batch is the reference itself)
    leave the discriminator alone and the policy trains; the stats of a rest are exactly these."""
    mapping = tmp_path / "one.json"
    mapping.write_text(json.dumps({PROMPTS[0]: ["0.png"]}))
    r = _reward(clip_dir, (refs[0], str(mapping)))
    same = _to_tensor([np.array(Image.open(os.path.join(refs[0], "0.png")).convert("RGB"))])
    with torch.no_grad():
        want = float(r(same, [PROMPTS[0]]).mean())
    stats = r.update(same, [PROMPTS[0]], iteration=7)
    assert stats == {"disc_loss": 0.0, "disc_step": 0.0, "reference_reward": pytest.approx(want, rel=1e-6)}
    assert r.updates == 0 and r.trains_generator(7)


def test_hub_id_defaults_load_pickscore_and_the_laion_processor(clip_dir, refs, tmp_path):
    """With only the references given, the reward loads `yuvalkirstain/PickScore_v1` (weights only, as
    on the hub) and its processor from `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, here from an offline
    Hugging Face cache of the tiny model, and trains with the released script's settings."""
    import shutil
    import subprocess
    import sys

    from transformers import AutoProcessor, CLIPModel

    from tests.flowalign.test_hub_ids import ROOT, cache_pipeline

    cache = tmp_path / "hub"
    cache_pipeline(cache, "yuvalkirstain/PickScore_v1", CLIPModel.from_pretrained(clip_dir).save_pretrained)

    def save_laion(path):  # the laion repo is a whole CLIP model; its config tells AutoProcessor the type
        CLIPModel.from_pretrained(clip_dir).config.save_pretrained(path)
        AutoProcessor.from_pretrained(clip_dir).save_pretrained(path)

    cache_pipeline(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", save_laion)
    model_dir = next((cache / "models--yuvalkirstain--PickScore_v1" / "snapshots").iterdir())
    assert not (model_dir / "tokenizer_config.json").exists()  # the processor must come from the laion id
    code = ("import json\n"
            "from reward_models.adversarial_pickscore import AdversarialPickScoreReward\n"
            f"r = AdversarialPickScoreReward(reference_dir={refs[0]!r}, reference_map={refs[1]!r})\n"
            "g = r.opt.param_groups[0]\n"
            "print(json.dumps({'lr': g['lr'], 'betas': list(g['betas']), 'k': r.k, 'batch_size': r.batch_size,\n"
            "                  'schedule': r.schedule, 'scale': r.scale, 'name': r.name,\n"
            "                  'layers': sorted({n.split('.')[3] for n in r.tuned_names})}))\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"lr": 5e-6, "betas": [0.5, 0.999], "k": 1, "batch_size": 16, "schedule": "reference",
                   "scale": 1 / 26, "name": "adversarial_pickscore", "layers": ["2"]}
    shutil.rmtree(cache)
