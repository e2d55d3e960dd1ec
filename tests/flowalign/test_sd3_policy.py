import pytest
import torch
from diffusers import StableDiffusion3Pipeline

import samplers
from flowalign.policies import SD3Policy, load_policy
from tests.helpers import assert_tensors_close

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle"]


def _pipe(path):
    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_ode_rollout_reproduces_the_diffusers_pipeline(tiny_sd3_dir, sd3_policy, guidance):
    pipe = _pipe(tiny_sd3_dir)
    noise = sd3_policy.initial_noise(3, 32, 32, torch.Generator().manual_seed(0))
    ours = samplers.rollout(sd3_policy.velocity_fn(sd3_policy.encode(PROMPTS), guidance=guidance),
                            noise, sd3_policy.sigmas(6, 32, 32), "ode")
    theirs = pipe(prompt=PROMPTS, num_inference_steps=6, guidance_scale=guidance, latents=noise.clone(),
                  height=32, width=32, max_sequence_length=16, output_type="latent").images
    diff = assert_tensors_close(ours.final, theirs, atol=1e-4, what="final latents")
    print(f"max |adapter - pipeline| latents (guidance {guidance}): {diff:.3e}")
    images = pipe(prompt=PROMPTS, num_inference_steps=6, guidance_scale=guidance, latents=noise.clone(),
                  height=32, width=32, max_sequence_length=16, output_type="pt").images
    assert_tensors_close(sd3_policy.decode(ours.final), images, atol=1e-4, what="decoded images")
    assert not torch.allclose(ours.final, noise)


def test_sigmas_match_the_pipeline_scheduler(sd3_policy):
    sch = sd3_policy.pipe.scheduler
    sch.set_timesteps(10)
    assert_tensors_close(sd3_policy.sigmas(10), sch.sigmas, atol=0)


def test_encode_caches_each_prompt_once(sd3_policy, monkeypatch):
    calls = []
    original = sd3_policy.pipe.encode_prompt

    def counting(**kw):
        calls.append(list(kw["prompt"]))
        return original(**kw)

    monkeypatch.setattr(sd3_policy.pipe, "encode_prompt", counting)
    a = sd3_policy.encode(PROMPTS[:2])
    b = sd3_policy.encode([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert calls == [[PROMPTS[0]], [PROMPTS[1]], [""]]
    assert_tensors_close(b.embeds[1], a.embeds[0], atol=0)
    e, ne, p, np_ = original(prompt=PROMPTS[:2], prompt_2=PROMPTS[:2], prompt_3=PROMPTS[:2],
                             do_classifier_free_guidance=True, max_sequence_length=16)
    assert_tensors_close(a.embeds, e, atol=1e-6)
    assert_tensors_close(a.neg_pooled, np_, atol=1e-6)


def test_rows_select_conditioning(sd3_policy):
    cond = sd3_policy.encode(PROMPTS)
    x = torch.randn(2, 4, 16, 16)
    s = torch.full((2,), 0.5)
    v_rows = sd3_policy.velocity(x, s, cond, guidance=3.0, rows=torch.tensor([2, 0]))
    v_direct = sd3_policy.velocity(x, s, sd3_policy.encode([PROMPTS[2], PROMPTS[0]]), guidance=3.0)
    assert_tensors_close(v_rows, v_direct, atol=1e-6)


def test_sde_rollout_is_on_policy(sd3_policy):
    """Re-scoring the stored transitions with the same model gives ratio 1."""
    cond = sd3_policy.encode(PROMPTS)
    noise = sd3_policy.initial_noise(3, generator=torch.Generator().manual_seed(1))
    traj = samplers.rollout(sd3_policy.velocity_fn(cond, guidance=4.5), noise, sd3_policy.sigmas(4),
                            "flow_sde", generator=torch.Generator().manual_seed(2))
    for k in range(4):
        x, xn, s, sn = traj.transition(k)
        v = sd3_policy.velocity(x, torch.full((3,), s), cond, guidance=4.5)
        lp = samplers.flow_sde_step(x, v, s, sn, prev_sample=xn).log_prob
        assert_tensors_close(torch.exp(lp - traj.log_probs[:, k]), torch.ones(3), atol=1e-5)


def test_reference_disables_lora(sd3_policy):
    x, s = torch.randn(2, 4, 16, 16), torch.full((2,), 0.7)
    cond = sd3_policy.encode(PROMPTS[:2])
    base = sd3_policy.velocity(x, s, cond)
    sd3_policy.add_lora(rank=4, alpha=8, init="gaussian")
    with torch.no_grad():
        for name, p in sd3_policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned = sd3_policy.velocity(x, s, cond)
    assert (tuned - base).abs().max() > 1e-3
    with sd3_policy.reference():
        assert_tensors_close(sd3_policy.velocity(x, s, cond), base, atol=1e-6)
    assert_tensors_close(sd3_policy.velocity(x, s, cond), tuned, atol=1e-6)  # adapters back on
    trainable = [n for n, p in sd3_policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


def test_gradient_checkpointing_gives_same_gradients(sd3_policy):
    x, s = torch.randn(2, 4, 16, 16), torch.full((2,), 0.4)
    cond = sd3_policy.encode(PROMPTS[:2])
    params = [p for p in sd3_policy.transformer.parameters() if p.requires_grad]

    def grads():
        sd3_policy.transformer.zero_grad()
        sd3_policy.transformer.train()
        sd3_policy.velocity(x, s, cond, guidance=2.0).square().mean().backward()
        return [p.grad.clone() for p in params]

    plain = grads()
    sd3_policy.set_gradient_checkpointing(True)
    assert sd3_policy.transformer.is_gradient_checkpointing
    checkpointed = grads()
    sd3_policy.set_gradient_checkpointing(False)
    for a, b in zip(plain, checkpointed):
        assert_tensors_close(b, a, atol=1e-6)


def test_bf16_transformer_keeps_fp32_maths(tiny_sd3_dir):
    pol = SD3Policy.from_pretrained(tiny_sd3_dir, dtype="bfloat16", max_sequence_length=16)
    assert pol.dtype == torch.bfloat16
    cond = pol.encode(PROMPTS[:2])
    traj = samplers.rollout(pol.velocity_fn(cond, guidance=3.0), pol.initial_noise(2), pol.sigmas(3), "flow_sde",
                            generator=torch.Generator().manual_seed(0))
    assert traj.log_probs.dtype == torch.float32 and traj.latents.dtype == torch.float32
    assert torch.isfinite(traj.log_probs).all()


def test_attention_backends(tiny_sd3_dir, sd3_policy):
    math_pol = SD3Policy.from_pretrained(tiny_sd3_dir, max_sequence_length=16, attention_backend="math")
    x, s = torch.randn(2, 4, 16, 16), torch.full((2,), 0.6)
    assert_tensors_close(math_pol.velocity(x, s, math_pol.encode(PROMPTS[:2])),
                         sd3_policy.velocity(x, s, sd3_policy.encode(PROMPTS[:2])), atol=1e-5)
    with pytest.raises(ValueError, match="attention_backend='flash' needs a CUDA device"):
        SD3Policy.from_pretrained(tiny_sd3_dir, attention_backend="flash")
    with pytest.raises(ValueError, match="attention_backend='fast' is unknown"):
        SD3Policy.from_pretrained(tiny_sd3_dir, attention_backend="fast")


def test_loading_errors(tmp_path, tiny_sd3_dir):
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        load_policy(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(ValueError, match="is a KandinskyPipeline; flowalign supports"):
        load_policy(str(tmp_path))
    with pytest.raises(ValueError, match="holds a KandinskyPipeline, not a StableDiffusion3Pipeline"):
        SD3Policy.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="dtype 'half'"):
        load_policy(tiny_sd3_dir, dtype="half")
    assert isinstance(load_policy(tiny_sd3_dir), SD3Policy)
