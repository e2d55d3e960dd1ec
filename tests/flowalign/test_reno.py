"""ReNO: the regulariser, gradients to the noise, the best-image rule, optimiser settings, errors, CLI."""

import json
import math

import pytest
import torch

from flowalign.noise_opt import (
    RenoSettings,
    build_rewards,
    chi_regulariser,
    differentiable_sample,
    make_optimizer,
    optimize_noise,
    parse_reward_weights,
)
from tests.helpers import assert_tensors_close

META = {"tag": "color_attr", "prompt": "a photo of a red circle and a blue square",
        "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]}


def test_chi_regulariser_closed_form_and_minimum():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    d = 20
    n = eps.flatten(1).norm(dim=1)
    assert_tensors_close(chi_regulariser(eps), 0.5 * n**2 - (d - 1) * torch.log(n), atol=1e-12)
    direction = eps[:1] / eps[:1].norm()
    at = lambda r: float(chi_regulariser(direction * r))  # noqa: E731
    r0 = math.sqrt(d - 1)
    assert at(r0) < at(r0 * 0.99) and at(r0) < at(r0 * 1.01)
    x = (direction * r0).requires_grad_(True)
    chi_regulariser(x).sum().backward()
    assert x.grad.abs().max() < 1e-12  # stationary at ||eps|| = sqrt(d - 1)


@pytest.mark.parametrize("steps", [1, 3])
def test_gradients_reach_the_noise_with_and_without_checkpointing(sd3_policy, steps):
    sd3_policy.transformer.requires_grad_(False)
    sd3_policy.pipe.vae.requires_grad_(False)
    reward = build_rewards({"shapes_soft": 1.0})["shapes_soft"]
    cond = sd3_policy.encode([META["prompt"]])
    sig = sd3_policy.sigmas(steps)
    grads = []
    for ckpt in (True, False):
        eps = sd3_policy.initial_noise(1, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        img = differentiable_sample(sd3_policy, eps, cond, sig, guidance=2.0, gradient_checkpointing=ckpt)
        reward(img, [META["prompt"]], metadata=[META]).sum().backward()
        assert eps.grad is not None and torch.isfinite(eps.grad).all() and eps.grad.abs().sum() > 0
        grads.append(eps.grad.clone())
    assert_tensors_close(grads[0], grads[1], atol=1e-6, what="checkpointed vs plain gradient")


class ScriptedReward:
    """A differentiable reward whose value follows a script, with the gradient of the image mean (m - m.detach()
    adds 0 to the value but not to the gradient), recording the images it sees."""

    differentiable = True

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, images, prompts, **context):
        self.seen.append(images.detach().clone())
        m = images.mean(dim=(1, 2, 3))
        return torch.full((images.shape[0],), self.values[len(self.seen) - 1]) + (m - m.detach())


def test_best_image_rule_returns_the_best_scored_image(sd3_policy, monkeypatch, capsys):
    """Also: progress=False shows no bar; the settings' gradient checkpointing reaches the sampler."""
    from flowalign import noise_opt

    sd3_policy.transformer.requires_grad_(False)
    sd3_policy.pipe.vae.requires_grad_(False)
    fake = ScriptedReward([0.1, 0.7, 0.3, 0.9, 0.2, 0.5])
    st = RenoSettings(iters=6, steps=1, weights={"fake": 1.0}, reg_weight=0.0, gradient_checkpointing=True)
    flags, real = [], noise_opt.differentiable_sample

    def recording(*a, gradient_checkpointing, **k):
        flags.append(gradient_checkpointing)
        return real(*a, gradient_checkpointing=gradient_checkpointing, **k)

    monkeypatch.setattr(noise_opt, "differentiable_sample", recording)
    import time

    t0 = time.time()
    res = optimize_noise(sd3_policy, "a red circle", {"fake": fake}, st, progress=False)
    wall = time.time() - t0
    assert 0 < res["seconds_per_iteration"] <= wall / 6
    assert res["initial_reward"] == pytest.approx(0.1)
    assert res["trace"][0]["loss"] == pytest.approx(-0.1)  # a reward without a ReNO offset: loss = 0 - R
    assert flags == [True] * 6 and "flowalign reno" not in capsys.readouterr().err
    assert res["best_iteration"] == 3 and res["best_reward"] == pytest.approx(0.9)
    assert torch.equal(res["best_image"], fake.seen[3]) and torch.equal(res["initial_image"], fake.seen[0])
    # ReNO's training/trainer.py: n_iters reward evaluations, an update after each but the last
    assert [r["iteration"] for r in res["trace"]] == list(range(6)) and len(fake.seen) == 6
    assert ["grad_norm" in r for r in res["trace"]] == [True] * 5 + [False]
    assert not torch.equal(fake.seen[0], fake.seen[1])  # the noise moved between iterations
    tie = ScriptedReward([0.1, 0.9, 0.9])  # a tie keeps the earlier image
    nfe0 = sd3_policy.nfe
    assert nfe0 > 0  # the run above counted
    res = optimize_noise(sd3_policy, "a red circle", {"fake": tie}, RenoSettings(iters=3, steps=1, weights={"fake": 1.0},
                                                                                 reg_weight=0.0), progress=False)
    assert res["best_iteration"] == 1 and torch.equal(res["best_image"], tie.seen[1])
    assert res["nfe"] == sd3_policy.nfe - nfe0 > 0  # this run's evaluations only


def test_optimiser_settings_and_gradient_clipping():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], RenoSettings(lr=5.0, momentum=0.9, nesterov=True))
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"]) == (5.0, 0.9, True)
    opt = make_optimizer([p], RenoSettings(optimizer="adam", lr=0.01))
    # ReNO's training/optim.py: Adam(eps=1e-2)
    assert isinstance(opt, torch.optim.Adam) and (opt.param_groups[0]["lr"], opt.param_groups[0]["eps"]) == (0.01, 1e-2)
    with pytest.raises(ValueError, match="optimizer 'lbfgs' is unknown"):
        make_optimizer([p], RenoSettings(optimizer="lbfgs"))


def test_one_step_moves_the_noise_by_at_most_lr_times_the_clip(sd3_policy):
    sd3_policy.transformer.requires_grad_(False)
    sd3_policy.pipe.vae.requires_grad_(False)
    st = RenoSettings(iters=2, steps=1, lr=1.0, momentum=0.0, grad_clip=0.1, weights={"shapes_soft": 1.0})
    seen = []
    rewards = build_rewards(st.weights)
    orig = sd3_policy.velocity

    def spy(x, *a, **k):
        seen.append(x.detach().clone())
        return orig(x, *a, **k)

    sd3_policy.velocity = spy
    try:
        res = optimize_noise(sd3_policy, META["prompt"], rewards, st, metadata=META, progress=False)
    finally:
        del sd3_policy.velocity
    step = (seen[-1] - seen[0]).norm()
    assert 0 < step <= 0.1 + 1e-6 and res["trace"][0]["grad_norm"] > 0


def test_bad_reward_names_and_non_differentiable_rewards():
    with pytest.raises(ValueError, match="reward 'hpsv9' is unknown"):
        parse_reward_weights("hpsv9=5")
    with pytest.raises(ValueError, match="not name=number"):
        parse_reward_weights("shapes_soft=lots")
    assert parse_reward_weights("shapes_soft=2,jpeg_compressibility") == {"shapes_soft": 2.0, "jpeg_compressibility": 1.0}
    with pytest.raises(ValueError, match="not differentiable"):
        build_rewards({"shapes_geneval": 1.0})


def test_reno_cli_writes_images_trace_and_summary(tiny_sd3_dir, tmp_path, capsys):
    from flowalign.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(META) + "\n")
    out = tmp_path / "reno"
    assert main(["reno", "--model", tiny_sd3_dir, "--prompts", str(prompts), "--reward", "shapes_soft=1",
                 "--iters", "2", "--steps", "1", "--max-sequence-length", "8", "--out", str(out)]) == 0
    for f in ("initial_final.png", "trace.jsonl", "trace.png"):
        assert (out / "00000" / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["prompts"][0]["best_reward"] >= s["prompts"][0]["initial_reward"]
    assert len((out / "00000" / "trace.jsonl").read_text().splitlines()) == 2  # --iters 2: two evaluations
    assert main(["reno", "--model", tiny_sd3_dir, "--prompt", "x", "--reward", "nope=1", "--out", str(out)]) == 2
    assert "reward 'nope' is unknown" in capsys.readouterr().err


def test_reno_starts_from_the_seeded_noise_on_the_settings_grid_with_the_prompt_as_metadata(tmp_path, capsys):
    """Defaults: seed 0, metadata {"prompt": prompt}, a progress bar. The first transformer call gets
    the noise of a generator seeded with the seed, at the settings' height and width, on the sigma
    grid of that size (FLUX shifts its grid by resolution)."""
    from flowalign.noise_opt import RenoSettings, optimize_noise
    from flowalign.policies import load_policy
    from flowalign.testing import save_tiny_flux

    policy = load_policy(save_tiny_flux(tmp_path / "flux"), max_sequence_length=8)
    policy.transformer.requires_grad_(False)
    policy.pipe.vae.requires_grad_(False)
    H, W = 64, 48  # neither the default size
    assert not torch.equal(policy.sigmas(2, H, W), policy.sigmas(2, None, None))
    calls, orig = [], policy.velocity

    def spy(x, sigma, *a, **k):
        calls.append((x.detach().clone(), sigma.detach().clone()))
        return orig(x, sigma, *a, **k)

    contexts = []

    class Recording(ScriptedReward):
        def __call__(self, images, prompts, **context):
            contexts.append(context)
            return super().__call__(images, prompts, **context)

    fake = Recording([0.5])
    st = RenoSettings(iters=1, steps=2, height=H, width=W, weights={"fake": 1.0}, reg_weight=0.0)
    policy.velocity = spy
    try:
        res = optimize_noise(policy, "a red circle", {"fake": fake}, st)
    finally:
        del policy.velocity
    x0 = calls[0][0]
    assert res["trace"][0]["noise_norm"] == pytest.approx(float(x0.norm()), rel=1e-6)
    assert 0 < res["seconds_per_iteration"] < 3600
    assert torch.equal(x0, policy.initial_noise(1, H, W, torch.Generator().manual_seed(0)))
    assert torch.allclose(torch.cat([s.flatten() for _, s in calls]), policy.sigmas(2, H, W)[:2].float())
    assert contexts[0]["metadata"] == [{"prompt": "a red circle"}]
    err = capsys.readouterr().err
    assert "flowalign reno:" in err and "reward=0.500" in err and "best=0.500" in err


class _LinearPolicy:
    """v(x, sigma) = a x + b sigma + guidance (each row's sigma broadcast), decode = 2 x: Euler's steps
    can be written out by hand."""

    def __init__(self, a=0.3, b=0.5):
        self.a, self.b, self.seen = a, b, []

    def velocity(self, x, sig, cond, guidance):
        self.seen.append((sig.clone(), guidance, cond))
        return self.a * x + self.b * sig[:, None] + guidance

    def decode(self, x):
        return 2 * x


@pytest.mark.parametrize("ckpt", [True, False])
def test_differentiable_sample_is_eulers_ode_along_the_grid_then_decodes(ckpt):
    """x_{k+1} = x_k + (s_{k+1} - s_k) v(x_k, s_k) with the guidance passed through, on an uneven
    grid; one velocity call per step with that step's sigma; the image is decode(x_K)."""
    eps = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    sig = torch.tensor([1.0, 0.7, 0.25, 0.0], dtype=torch.float64)
    pol = _LinearPolicy()
    out = differentiable_sample(pol, eps, "cond", sig, guidance=1.5, gradient_checkpointing=ckpt)
    x = eps.detach().clone()
    for k in range(3):
        s, s_next = float(sig[k]), float(sig[k + 1])
        x = x + (s_next - s) * (0.3 * x + 0.5 * s + 1.5)
    assert_tensors_close(out.detach(), 2 * x, atol=1e-6)  # the sigmas are float32 tensors
    calls = [c for c in pol.seen if c[2] == "cond"]
    assert [float(c[0][0]) for c in calls] == pytest.approx([1.0, 0.7, 0.25], abs=1e-7)
    assert all(c[1] == 1.5 and c[0].shape == (2,) for c in calls)
    out.sum().backward()
    # d out / d eps = 2 prod_k (1 + (s_{k+1} - s_k) a) for this linear velocity
    want = 2 * (1 + (0.7 - 1.0) * 0.3) * (1 + (0.25 - 0.7) * 0.3) * (1 + (0.0 - 0.25) * 0.3)
    assert_tensors_close(eps.grad, torch.full_like(eps, want), atol=1e-6)


def test_differentiable_sample_checkpoints_each_step_and_the_decode_by_default_non_reentrant(monkeypatch):
    """Gradient checkpointing is the default (ReNO backpropagates through every step and the VAE; the
    activations of all of them would not fit), in torch's non-reentrant form, which supports
    torch.autograd.grad and inputs that do not require gradients."""
    from flowalign import noise_opt

    calls = []
    real = noise_opt.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(kwargs)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(noise_opt, "checkpoint", spy)
    eps = torch.ones(1, 2, requires_grad=True)
    differentiable_sample(_LinearPolicy(), eps, None, torch.tensor([1.0, 0.5, 0.0]), guidance=0.0)
    assert calls == [{"use_reentrant": False}] * 3  # two steps and the decode
    calls.clear()
    differentiable_sample(_LinearPolicy(), eps, None, torch.tensor([1.0, 0.5, 0.0]), guidance=0.0,
                          gradient_checkpointing=False)
    assert calls == []
