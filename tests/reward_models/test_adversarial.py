"""Adv-GRPO's DINO discriminator reward with a tiny random Dinov2Model saved and reloaded."""

import io

import pytest
import torch

from reward_models import build_reward
from reward_models.adversarial import DiscriminatorHead, adversarial_scores, hinge_loss


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


def test_head_hinge_loss_decreases_on_separable_features():
    torch.manual_seed(0)
    head = DiscriminatorHead(8, hidden=16)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, betas=(0.5, 0.999))
    real_c, fake_c = torch.randn(16, 8) + 2.0, torch.randn(16, 8) - 2.0
    real_p, fake_p = torch.randn(16, 5, 8) + 2.0, torch.randn(16, 5, 8) - 2.0
    idx = torch.arange(5)
    losses = []
    for _ in range(60):
        loss = hinge_loss(adversarial_scores(head, real_c, real_p, idx), adversarial_scores(head, fake_c, fake_p, idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    g, loc = adversarial_scores(head, real_c, real_p, idx)
    assert (g > 0).all() and (loc > 0).all()


def test_reward_shape_gradients_update_and_checkpoint_round_trip(dino_dir, ref_dir):
    r = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, k=3, device="cpu", num_patches=4)
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
    r2 = build_reward("adversarial_dino", backbone=dino_dir, reference_dir=ref_dir, k=3, device="cpu", num_patches=4)
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


def test_engine_trains_the_discriminator_and_checkpoints_it(dino_dir, ref_dir, tiny_sd3_dir, tmp_path, prompts_file):
    import json
    import os

    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "reward.name": "adversarial_dino", "run.max_iterations": 2, "run.sample_every": 0,
        "reward.args": f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, k: 2, device: cpu, num_patches: 4}}"}))
    t = Trainer(cfg)
    t.train()
    assert t.reward.updates == 4  # k = 2 head updates per generator iteration
    m = [json.loads(x) for x in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert all("disc_loss" in x for x in m)
    ckpt = os.path.join(cfg.run.output_dir, "checkpoints", "iter_000002", "reward.pt")
    assert os.path.isfile(ckpt)
    t2 = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "reward.name": "adversarial_dino", "run.max_iterations": 2, "run.resume": True,
        "reward.args": f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, k: 2, device: cpu, num_patches: 4}}"})))
    t2.resume()
    assert t2.reward.updates == 4
    for a, b in zip(t.reward.head.parameters(), t2.reward.head.parameters()):
        assert torch.equal(a, b)


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
            f"{{backbone: {dino_dir}, reference_dir: {ref_dir}, k: 1, device: cpu, num_patches: 4}}}}}}")
    kw = {"algorithm.name": "adv_grpo", "reward.name": "weighted", "reward.args": args, "run.max_iterations": 1,
          "run.sample_every": 0, "algorithm.reward_aggregation": "advantage"}
    t = Trainer(load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **kw)))
    t.train()
    m = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")][0]
    assert "adversarial_dino/disc_loss" in m and abs(m["first_ratio"] - 1) < 1e-5
    assert t.reward.parts["adversarial_dino"].updates == 1
    state = torch.load(os.path.join(tmp_path, "run", "checkpoints", "iter_000001", "reward.pt"), weights_only=False)
    assert set(state) == {"adversarial_dino"}
    with pytest.raises(ValueError, match="adv_grpo needs the adversarial_dino reward"):
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
    plain = build_reward("weighted", weights={"jpeg_compressibility": 1.0})
    assert learned(plain) is None and learned(build_reward("jpeg_compressibility")) is None
