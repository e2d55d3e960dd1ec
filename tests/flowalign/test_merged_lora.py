"""Passes without gradient on merged LoRA weights (lora.merge_for_sampling): velocities, SDE rollouts
with their log-probs, tree rollouts and ODE completions equal the adapter path (float64, 1e-10);
the original weight tensors come back bit-identical, also after an exception; the trained
policy's log-probs are unchanged."""

import pytest
import torch

import samplers
from flowalign.policies import load_policy
from flowalign.testing import save_tiny


def _policy(path, dtype=torch.float64):
    pol = load_policy(path, max_sequence_length=8)
    pol.add_lora(rank=4, alpha=8)
    pol.pipe.to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pol.transformer.named_parameters():
            if "lora_" in n:  # a trained-looking adapter (lora_B is zero at initialisation)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return pol


@pytest.fixture(scope="module")
def pol(tiny_sd3_dir):
    return _policy(tiny_sd3_dir)


def _weights(policy):
    return {n: (p.data_ptr(), p.detach().clone()) for n, p in policy.transformer.named_parameters()}


def test_velocity_and_sde_rollout_equal_the_adapter_path(pol):
    cond = pol.encode(["a red circle", "two blue squares"])
    x = pol.initial_noise(2, generator=torch.Generator().manual_seed(1)).double()
    sigma = torch.tensor([0.8, 0.3], dtype=torch.float64)
    before = _weights(pol)
    v = pol.velocity(x, sigma, cond, guidance=3.0)
    with pol.merged_lora():
        v_merged = pol.velocity(x, sigma, cond, guidance=3.0)
    assert (v - v_merged).abs().max().item() < 1e-10
    with torch.no_grad(), pol.reference():
        base = pol.velocity(x, sigma, cond, guidance=3.0)
    assert (v - base).abs().max().item() > 1e-3  # the adapter matters
    after = _weights(pol)
    assert all(before[n][0] == after[n][0] and torch.equal(before[n][1], after[n][1]) for n in before)
    # an SDE rollout and its behaviour log-probs
    sigmas = pol.sigmas(4).double()
    runs = []
    for merged in (False, True):
        pol.merge_lora = merged
        with torch.no_grad(), pol.sampling_weights():
            runs.append(samplers.rollout(pol.velocity_fn(cond, guidance=3.0), x, sigmas, "flow_sde",
                                         generator=torch.Generator().manual_seed(2)))
    pol.merge_lora = True
    assert (runs[0].latents - runs[1].latents).abs().max().item() < 1e-10
    assert (runs[0].log_probs - runs[1].log_probs).abs().max().item() < 1e-8


def test_tree_rollout_and_completions_equal_the_adapter_path(pol):
    cond = pol.encode(["a red circle"])
    x = pol.initial_noise(1, generator=torch.Generator().manual_seed(3)).double()
    sigmas = pol.sigmas(4).double()
    trees, comps = [], []
    for merged in (False, True):
        pol.merge_lora = merged
        with torch.no_grad(), pol.sampling_weights():
            vel = pol.velocity_fn(cond, guidance=2.0)
            trees.append(samplers.tree_rollout(vel, x, sigmas, split_steps=[1, 2], branch_factor=2,
                                               generator=torch.Generator().manual_seed(4)))
            flat = samplers.rollout(vel, x, sigmas, "ode")
            comps.append(samplers.complete_on_grid(vel, flat.latents, sigmas, [0, 1, 2]))
    pol.merge_lora = True
    assert trees[0].num_nodes == trees[1].num_nodes > 4
    assert (trees[0].latents - trees[1].latents).abs().max().item() < 1e-10
    assert (trees[0].log_probs - trees[1].log_probs).abs().max().item() < 1e-8
    assert (comps[0] - comps[1]).abs().max().item() < 1e-10


def test_weights_come_back_after_an_exception_and_nesting_is_refused(pol):
    before = _weights(pol)
    with pytest.raises(KeyError):
        with pol.merged_lora():
            raise KeyError("a failure inside the pass")
    after = _weights(pol)
    assert all(before[n][0] == after[n][0] and torch.equal(before[n][1], after[n][1]) for n in before)
    assert not pol._merged and pol.transformer._hf_peft_config_loaded
    with pol.merged_lora():
        with pytest.raises(RuntimeError, match="already active"):
            with pol.merged_lora():
                pass


def test_merged_pass_runs_the_base_modules_and_the_wrappers_come_back(pol):
    """Inside the pass no LoRA wrapper is left in the module tree (a forward costs what the base
    model's does); afterwards the very same wrapper objects are back in place."""
    from peft.tuners.lora import LoraLayer

    def wrappers():
        return {n: id(m) for n, m in pol.transformer.named_modules() if isinstance(m, LoraLayer)}

    before = wrappers()
    assert before
    with pol.merged_lora():
        assert wrappers() == {}
    assert wrappers() == before


def test_both_wan22_experts_are_merged(tmp_path):
    pol = _policy(save_tiny("wan22", tmp_path / "wan22"))
    cond = pol.encode(["a red circle"] * 2)
    x = pol.initial_noise(2, generator=torch.Generator().manual_seed(5)).double()
    sigma = torch.tensor([0.95, 0.3], dtype=torch.float64)  # one row per expert
    v = pol.velocity(x, sigma, cond, guidance=3.0)
    with pol.merged_lora():
        assert (pol.velocity(x, sigma, cond, guidance=3.0) - v).abs().max().item() < 1e-10
