"""Full fine-tuning with a KL term: the reference is the model before any update (a frozen copy of
the trainable weights), not the policy itself; the policy's own weights come back bit-identical."""

import torch

from flowalign.config import load_config
from flowalign.policies import load_policy
from flowalign.trainer import Trainer
from tests.flowalign.test_train import overrides


def test_full_fine_tuning_kl_is_to_the_initial_weights(tiny_sd3_dir, tmp_path, prompts_file):
    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        "lora.enabled": False, "algorithm.kl_beta": 0.1, "optim.lr": 1e-3}))
    t = Trainer(cfg)
    t.iterate()
    assert t.iterate()["kl"] > 0  # after updates the policy has moved away from its reference (was 0: the
    # policy used to be its own reference when fully fine-tuned)

    pol = t.policy
    fresh = load_policy(tiny_sd3_dir, max_sequence_length=8)
    cond, cond_fresh = pol.encode(["a red circle"]), fresh.encode(["a red circle"])
    x = pol.initial_noise(1, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6])
    own = {n: p.detach().clone() for n, p in pol.transformer.named_parameters()}
    with torch.no_grad():
        trained = pol.velocity(x, sigma, cond, guidance=2.0)
        with pol.reference():
            ref = pol.velocity(x, sigma, cond, guidance=2.0)
        base = fresh.velocity(x, sigma, cond_fresh, guidance=2.0)
    assert torch.equal(ref, base) and not torch.equal(trained, base)
    assert all(torch.equal(p, own[n]) for n, p in pol.transformer.named_parameters())


def test_lora_runs_keep_no_copy(tiny_sd3_dir, tmp_path, prompts_file):
    cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{"algorithm.kl_beta": 0.1}))
    assert Trainer(cfg).policy._reference_weights is None
