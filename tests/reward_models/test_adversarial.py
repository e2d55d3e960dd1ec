"""Adv-GRPO's DINO discriminator reward with a tiny random Dinov2Model saved and reloaded."""

import io

import pytest
import torch

from reward_models import build_reward
from reward_models.adversarial import (
    DiscriminatorHead,
    adversarial_scores,
    normalized_hinge_loss,
    pick_patches,
    reference_hinge_loss,
)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dino") / "tiny"
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=37)).save_pretrained(path)
    return str(path)


@pytest.fixture
def ref_dir(tmp_path):
    from PIL import Image

    d = tmp_path / "ref"
    d.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 30 * i, 30)).save(d / f"{i}.png")
    return str(d)


@pytest.mark.parametrize("form", ["reference", "normalized"])
def test_head_hinge_loss_decreases_on_separable_features(form):
    torch.manual_seed(0)
    head = DiscriminatorHead(8, hidden=16)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, betas=(0.5, 0.999))
    real_c, fake_c = torch.randn(16, 8) + 2.0, torch.randn(16, 8) - 2.0
    real_p, fake_p = torch.randn(16, 5, 8) + 2.0, torch.randn(16, 5, 8) - 2.0
    loss_fn = reference_hinge_loss if form == "reference" else normalized_hinge_loss
    losses = []
    for _ in range(60):
        loss = loss_fn(head, (real_c, real_p), (fake_c, fake_p))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    g, loc = adversarial_scores(head, real_c, real_p, torch.arange(5).expand(16, 5))
    assert (g > 0).all() and (loc > 0).all()


class RefDINOHead(torch.nn.Module):
    """scripts/train_sd3_fast_dino_patch.py's DINOHead: Linear(in, 512)-GELU-Linear(512, 1)."""

    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden_dim), torch.nn.GELU(),
                                          torch.nn.Linear(hidden_dim, 1))

    def forward(self, x):
        return self.layers(x)


def ref_train_dino_loss(head, out_real, out_fake, idx_real, idx_fake, patch_loss_weight=0.3):
    """showlab/Adv-GRPO scripts/train_sd3_fast_dino_patch.py, train_dino: hinge on raw
    forward_features tokens, image_loss + patch_loss_weight * patch_loss."""
    cls_real, patch_real = out_real[:, 0], out_real[:, 1:]
    cls_fake, patch_fake = out_fake[:, 0], out_fake[:, 1:]
    logits_real_cls = head(cls_real).squeeze(-1)
    logits_fake_cls = head(cls_fake).squeeze(-1)
    image_loss = 0.5 * (torch.mean(torch.relu(1.0 - logits_real_cls)) + torch.mean(torch.relu(1.0 + logits_fake_cls)))
    D = patch_real.shape[-1]
    sampled_real = torch.gather(patch_real, 1, idx_real.unsqueeze(-1).expand(-1, -1, D))
    sampled_fake = torch.gather(patch_fake, 1, idx_fake.unsqueeze(-1).expand(-1, -1, D))
    logits_real_patch = head(sampled_real).squeeze(-1)
    logits_fake_patch = head(sampled_fake).squeeze(-1)
    patch_loss = 0.5 * (torch.mean(torch.relu(1.0 - logits_real_patch)) + torch.mean(torch.relu(1.0 + logits_fake_patch)))
    return image_loss + patch_loss_weight * patch_loss


def ref_dino_patch_cotrain_score(head, feats, idx, cls_weight=0.7):
    """showlab/Adv-GRPO adv_grpo/rewards.py, dino_patch_cotrain_score._fn after forward_features."""
    cls_emb, patch_emb = feats[:, 0, :], feats[:, 1:, :]
    D = patch_emb.shape[-1]
    sampled = torch.gather(patch_emb, 1, idx.unsqueeze(-1).expand(-1, -1, D))
    cls_emb = cls_emb / (cls_emb.norm(dim=-1, keepdim=True) + 1e-6)
    sampled = sampled / (sampled.norm(dim=-1, keepdim=True) + 1e-6)
    cls_score = head(cls_emb).squeeze(-1)
    patch_score_mean = head(sampled).squeeze(-1).mean(dim=1)
    return cls_weight * cls_score + (1 - cls_weight) * patch_score_mean


def test_default_loss_and_reward_match_adv_grpo_float64():
    g = torch.Generator().manual_seed(0)
    B, N, D, n = 5, 37, 24, 64
    ours = DiscriminatorHead(D, hidden=16).double()
    ref = RefDINOHead(D, 16).double()
    ref.layers.load_state_dict(ours.net.state_dict())
    out_real = 3 * torch.randn(B, N + 1, D, generator=g, dtype=torch.float64)
    out_fake = 3 * torch.randn(B, N + 1, D, generator=g, dtype=torch.float64)
    idx_r, idx_f = torch.randint(0, N, (B, n), generator=g), torch.randint(0, N, (B, n), generator=g)
    want = ref_train_dino_loss(ref, out_real, out_fake, idx_r, idx_f)
    got = reference_hinge_loss(ours, (out_real[:, 0], pick_patches(out_real[:, 1:], idx_r)),
                               (out_fake[:, 0], pick_patches(out_fake[:, 1:], idx_f)))
    assert abs(float((got - want).detach())) < 1e-10
    gl, loc = adversarial_scores(ours, out_real[:, 0], out_real[:, 1:], idx_r)
    assert torch.allclose(0.7 * gl + 0.3 * loc, ref_dino_patch_cotrain_score(ref, out_real, idx_r), rtol=0, atol=1e-10)


def test_reward_shape_gradients_update_and_checkpoint_round_trip(dino_dir, ref_dir):
    r = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, k=3, device="cpu", num_patches=4)
    assert (r.schedule, r.d_times, r.disc_loss) == ("alternate", 10, "reference")  # the defaults are the reference's
    r.schedule = "k_steps"
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    v = r(images, ["a", "b", "c"])
    assert v.shape == (3,) and v.dtype == torch.float32
    v.sum().backward()
    assert images.grad.abs().sum() > 0
    stats = r.update(images.detach(), ["a", "b", "c"])
    assert r.updates == 3 and "disc_loss" in stats
    buf = io.BytesIO()
    torch.save(r.state_dict(), buf)  # as the trainer's checkpoint does
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    r2 = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, schedule="k_steps", k=3,
                      device="cpu", num_patches=4)
    r2.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r(x, ["a", "b"]), r2(x, ["a", "b"]))
    r.update(x, ["a", "b"])
    r2.update(x, ["a", "b"])  # the optimiser state came along: the same next step
    assert torch.equal(r(x, ["a", "b"]), r2(x, ["a", "b"]))


def test_errors(tmp_path, dino_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("adversarial_dino", backbone=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="reference image folder"):
        build_reward("adversarial_dino", backbone=dino_dir, reference_dir=str(tmp_path / "none"), device="cpu")
    with pytest.raises(ValueError, match="schedule 'often'"):
        build_reward("adversarial_dino", backbone=dino_dir, schedule="often", device="cpu")
    with pytest.raises(ValueError, match="disc_loss 'l2'"):
        build_reward("adversarial_dino", backbone=dino_dir, disc_loss="l2", device="cpu")
    with pytest.raises(FileNotFoundError, match="reference_map"):
        build_reward("adversarial_dino", backbone=dino_dir, reference_dir=str(tmp_path),
                     reference_map=str(tmp_path / "none.json"), device="cpu")


def test_reference_map_pairs_each_image_with_its_prompts_references(dino_dir, ref_dir, tmp_path):
    """As the reference's prompt2img json: the positives of a batch are its prompts' own images."""
    import json

    mapping = tmp_path / "prompt2img.json"
    mapping.write_text(json.dumps({"a red cat": ["0.png", "1.png"], "a dog": ["3.png"]}))
    r = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, reference_map=str(mapping),
                     device="cpu", num_patches=4)
    fake = torch.rand(4, 3, 16, 16)
    real = r.real_images(fake, ["a red cat", "a dog", "a red cat", "a red cat"])
    assert real.shape == (4, 3, 16, 16)
    greens = [round(float(x[1].mean()) * 255) for x in real]  # ref image i has green 30 i
    assert greens == [0, 90, 30, 0]
    with pytest.raises(ValueError, match="'a cow' has no reference images"):
        r.real_images(fake[:1], ["a cow"])
    mapping.write_text(json.dumps({"a red cat": ["9.png"]}))
    with pytest.raises(FileNotFoundError, match="'9.png'"):
        build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, reference_map=str(mapping))


def test_engine_trains_the_discriminator_and_checkpoints_it(dino_dir, ref_dir, tiny_sd3_dir, tmp_path, prompts_file):
    import json
    import os

    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "reward.name": "adversarial_dino", "run.max_iterations": 2, "run.sample_every": 0,
        "reward.args": f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, schedule: k_steps, k: 2, device: cpu, "
                       "num_patches: 4}"}))
    t = Trainer(cfg)
    t.train()
    assert t.reward.updates == 4  # k = 2 head updates per generator iteration
    m = [json.loads(x) for x in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert all("disc_loss" in x for x in m)
    ckpt = os.path.join(cfg.run.output_dir, "checkpoints", "iter_000002", "reward.pt")
    assert os.path.isfile(ckpt)
    t2 = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "reward.name": "adversarial_dino", "run.max_iterations": 2, "run.resume": True,
        "reward.args": f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, schedule: k_steps, k: 2, device: cpu, "
                       "num_patches: 4}"})))
    t2.resume()
    assert t2.reward.updates == 4
    for a, b in zip(t.reward.head.parameters(), t2.reward.head.parameters()):
        assert torch.equal(a, b)


def test_alternate_schedule_trains_the_head_or_the_generator(dino_dir, ref_dir, tiny_sd3_dir, tmp_path, prompts_file):
    """The reference's schedule (train_sd3_fast_dino_patch.py: `if train_d and (epoch + 1) % d_times != 0`):
    d_times - 1 iterations train the head once on their fresh rollout and leave the policy alone, the
    d_times-th updates the policy only."""
    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "reward.name": "adversarial_dino", "run.max_iterations": 4, "run.sample_every": 0,
        "reward.args": f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, d_times: 2, device: cpu, num_patches: 4}}"}))
    t = Trainer(cfg)
    ms = []
    for _ in range(4):
        before = [p.detach().clone() for p in t.params]
        ms.append(t.iterate())
        unchanged = all(torch.equal(a, b) for a, b in zip(before, t.params))
        assert unchanged == (ms[-1]["generator_step"] == 0.0)  # a head iteration leaves the policy alone
    assert [x["generator_step"] for x in ms] == [0.0, 1.0, 0.0, 1.0]
    assert ["disc_loss" in x for x in ms] == [True, False, True, False]
    assert "first_ratio" in ms[1] and "first_ratio" not in ms[0]
    assert t.reward.updates == 2


def test_adv_grpo_algorithm_with_a_weighted_reward_and_per_reward_advantages(dino_dir, ref_dir, tiny_sd3_dir,
                                                                            tmp_path, prompts_file):
    """algorithm.name=adv_grpo: the discriminator inside a weighted reward is trained and
    checkpointed through the weighted reward; advantages are aggregated per reward."""
    import json
    import os

    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    args = (f"{{weights: {{adversarial_dino: 1.0, jpeg_compressibility: 0.5}}, args: {{adversarial_dino: "
            f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, schedule: k_steps, k: 1, device: cpu, "
            "num_patches: 4}}}")
    kw = {"algorithm.name": "adv_grpo", "reward.name": "weighted", "reward.args": args, "run.max_iterations": 1,
          "run.sample_every": 0, "algorithm.reward_aggregation": "advantage"}
    t = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **kw)))
    t.train()
    m = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")][0]
    assert "adversarial_dino/disc_loss" in m and abs(m["first_ratio"] - 1) < 1e-5
    assert t.reward.parts["adversarial_dino"].updates == 1
    state = torch.load(os.path.join(tmp_path, "run", "checkpoints", "iter_000001", "reward.pt"), weights_only=False)
    assert set(state) == {"adversarial_dino"}
    with pytest.raises(ValueError, match="adv_grpo needs an adversarial reward"):
        load_config(None, ["algorithm.name=adv_grpo", "reward.name=shapes_geneval"])


def test_learned_reward_protocol_finds_the_discriminator_alone_or_inside_a_weighted_reward(dino_dir, ref_dir):
    """The engine trains and checkpoints a reward only when `learned()` returns it: the
    discriminator does; a weighted reward does when one of its parts learns, and not otherwise."""
    from reward_models.base import LearnedReward, learned

    adv = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, device="cpu", num_patches=4)
    assert isinstance(adv, LearnedReward) and learned(adv) is adv
    args = {"adversarial_dino": {"backbone": dino_dir, "reference_dir": ref_dir, "device": "cpu", "num_patches": 4}}
    mixed = build_reward("weighted", weights={"adversarial_dino": 1.0, "jpeg_compressibility": 0.5}, args=args)
    assert learned(mixed) is mixed and mixed.learned == ["adversarial_dino"]
    assert set(mixed.state_dict()) == {"adversarial_dino"}
    # a weighted reward's state is its learned parts' states, and loads back into them
    import copy

    state = copy.deepcopy(mixed.state_dict())
    with torch.no_grad():
        for p in mixed.parts["adversarial_dino"].head.parameters():
            p.add_(1.0)
    assert not torch.equal(next(mixed.parts["adversarial_dino"].head.parameters()),
                           next(iter(state["adversarial_dino"]["head"].values())))
    mixed.load_state_dict(state)
    for k, v in mixed.parts["adversarial_dino"].head.state_dict().items():
        assert torch.equal(v, state["adversarial_dino"]["head"][k])
    plain = build_reward("weighted", weights={"jpeg_compressibility": 1.0})
    assert learned(plain) is None and learned(build_reward("jpeg_compressibility")) is None


# -- the reward object's own arithmetic and schedule (issue 26's mutation audit) -------------------------


def _reward(dino_dir, ref_dir=None, **kw):
    return build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, device="cpu", num_patches=4,
                        **kw)


def test_reward_mixes_global_and_patch_scores_with_its_weight_in_chunks(dino_dir):
    """R = w g + (1 - w) l per image, batch_size images at a time (5 images in chunks of 2), each chunk
    drawing its patch indices in turn from the reward's generator."""
    r = _reward(dino_dir, global_weight=0.7, batch_size=2)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = r.generator.get_state()
    with torch.no_grad():
        got = r(images, list("abcde"))
        r.generator.set_state(state)
        parts = [r.scores(images[i:i + 2]) for i in (0, 2, 4)]
    g, loc = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    assert got.shape == (5,) and (g - loc).abs().min() > 1e-4  # the two scores differ: the weight shows
    assert got.tolist() == pytest.approx((0.7 * g + 0.3 * loc).tolist(), abs=1e-6)


@pytest.mark.parametrize("disc_loss", ["reference", "normalized"])
def test_head_step_is_one_adam_step_of_the_chosen_loss_with_its_weight(dino_dir, ref_dir, disc_loss):
    """head_step: features without gradients, patch indices for the real then the fake batch, the loss
    named by disc_loss with its own weight (patch_loss_weight for the reference's, global_weight for
    the normalised one), one Adam step; it returns that loss."""
    import copy

    r = _reward(dino_dir, ref_dir, disc_loss=disc_loss, global_weight=0.6, patch_loss_weight=0.45)
    real = r.reference[:2]
    fake = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    head0, state = copy.deepcopy(r.head), r.generator.get_state()
    loss = r.head_step(real, fake)
    r.generator.set_state(state)
    with torch.no_grad():
        rc, rp = r.features(real)
        fc, fp = r.features(fake)
        rp = pick_patches(rp, r._patch_idx(*rp.shape[:2]))
        fp = pick_patches(fp, r._patch_idx(*fp.shape[:2]))
    want = (reference_hinge_loss(head0, (rc, rp), (fc, fp), 0.45) if disc_loss == "reference"
            else normalized_hinge_loss(head0, (rc, rp), (fc, fp), 0.6))
    other = (reference_hinge_loss(head0, (rc, rp), (fc, fp)) if disc_loss == "reference"
             else normalized_hinge_loss(head0, (rc, rp), (fc, fp)))
    assert abs(float(want.detach()) - float(other.detach())) > 1e-4  # the default weight would give another loss
    assert loss == pytest.approx(float(want.detach()), abs=1e-6)
    opt = torch.optim.Adam(head0.parameters(), lr=1e-4, betas=(0.5, 0.999))
    want.backward()
    opt.step()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(r.head.parameters(), head0.parameters()))
    assert r.updates == 1


def test_alternate_schedule_counts_iterations_from_zero(dino_dir):
    """The reference's `(epoch + 1) % d_times == 0`: with d_times 3, iterations 2, 5, ... train the policy."""
    r = _reward(dino_dir, d_times=3)
    assert [r.trains_generator(i) for i in range(7)] == [False, False, True, False, False, True, False]
    r.schedule = "k_steps"
    assert all(r.trains_generator(i) for i in range(4))


def test_update_schedule_and_the_mean_loss(dino_dir, ref_dir, tmp_path):
    """No references: nothing to learn from. `alternate` trains the head at its head iterations (the
    default iteration is 0, a head iteration); `k_steps` takes k steps and reports their mean loss;
    with a reference map the images' prompts pick the positives."""
    import json

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    bare = _reward(dino_dir, schedule="k_steps")
    assert bare.update(images, ["a", "b"]) == {} and bare.updates == 0
    alt = _reward(dino_dir, ref_dir, d_times=2)
    assert "disc_loss" in alt.update(images, ["a", "b"]) and alt.updates == 1
    assert alt.update(images, ["a", "b"], iteration=1) == {} and alt.updates == 1
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"a": ["0.png"], "b": ["1.png"]}))
    ks = _reward(dino_dir, ref_dir, reference_map=str(mapping), schedule="k_steps", k=3)
    seen, step = [], ks.head_step

    def recording(real, fake):
        seen.append(step(real, fake))
        return seen[-1]

    ks.head_step = recording
    out = ks.update(images, ["a", "b"])
    assert len(seen) == 3 and ks.updates == 3 and len(set(seen)) > 1
    assert out["disc_loss"] == pytest.approx(sum(seen) / 3)


@pytest.mark.parametrize("fake_value, steps", [(0.0, 0), (1.0, 1), (None, 0)])
def test_while_lower_trains_only_while_the_real_images_score_lower(dino_dir, ref_dir, fake_value, steps):
    """`while_lower` takes a head step only when the references' mean reward is below the generated
    images' (a tie is not below). Here the reward is the images' brightness: the references (mean about
    0.36) against black, white, and a tie (every image scores the same)."""
    r = _reward(dino_dir, ref_dir, schedule="while_lower")
    if fake_value is None:
        r.scores = lambda x: (torch.zeros(x.shape[0]), torch.zeros(x.shape[0]))
        fake = torch.rand(2, 3, 32, 32)
    else:
        r.scores = lambda x: (x.mean((1, 2, 3)), x.mean((1, 2, 3)))
        fake = torch.full((2, 3, 32, 32), fake_value)
    out = r.update(fake, ["a", "b"])
    assert r.updates == steps
    assert (out["disc_loss"] == 0.0) == (steps == 0)


def test_real_images_one_per_generated_image_and_a_prompts_references_in_turn(dino_dir, ref_dir, tmp_path):
    """Random references: one per generated image (5 here, not one per channel). With a reference
    map, a prompt that appears several times takes its files in order (0, 1, 2, then 0 again), and a
    batch whose prompts are missing or of another length is refused."""
    import json

    r = _reward(dino_dir, ref_dir)
    assert r.real_images(torch.rand(5, 3, 32, 32), None).shape == (5, 3, 32, 32)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"cat": ["0.png", "1.png", "2.png"]}))
    m = _reward(dino_dir, ref_dir, reference_map=str(mapping))
    real = m.real_images(torch.rand(4, 3, 16, 16), ["cat"] * 4)
    assert [round(float(x[1].mean()) * 255) for x in real] == [0, 30, 60, 0]  # ref image i has green 30 i
    for prompts in (None, ["cat"] * 3):
        with pytest.raises(ValueError, match="needs the prompt of every generated image"):
            m.real_images(torch.rand(4, 3, 16, 16), prompts)


def test_a_clip_vision_tower_is_read_like_dinov2(tmp_path):
    """A CLIPVisionModel backbone: CLS then patch tokens from last_hidden_state, CLIP's normalisation,
    the whole reward runs and trains its head; another model type is refused by name."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2Model

    from reward_models.adversarial import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    path = tmp_path / "clip_vision"
    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                     num_hidden_layers=2, num_attention_heads=4)).save_pretrained(path)
    r = build_reward("adversarial_dino", backbone=str(path), device="cpu")
    assert type(r.backbone).__name__ == "CLIPVisionModel" and (r.mean, r.std) == (CLIP_MEAN, CLIP_STD)
    x = torch.rand(3, 3, 32, 32)
    cls, patches = r.features(x)
    assert cls.shape == (3, 32) and patches.shape == (3, 16, 32)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    h = r.backbone(pixel_values=(x - mean) / std).last_hidden_state  # 32x32 in: no resize
    assert torch.allclose(cls, h[:, 0], atol=1e-5) and torch.allclose(patches, h[:, 1:], atol=1e-5)
    assert r(x, ["a", "b", "c"]).shape == (3,)
    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2' model"):
        build_reward("adversarial_dino", backbone=str(tmp_path / "gpt2"), device="cpu")
