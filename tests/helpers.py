"""Test helpers shared by the suites."""

from __future__ import annotations

import torch


def assert_tensors_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 0.0,
                         what: str = "tensors") -> float:
    """Assert |actual - expected| <= atol + rtol |expected| everywhere; report the max difference and
    where it is. Returns the max absolute difference."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    tol = atol + rtol * expected.double().abs()
    if diff.numel() and not bool((diff <= tol).all()):
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{what}: max abs difference {diff.max().item():.3e} at index {idx} "
                             f"(actual {actual[idx].item():.6g}, expected {expected[idx].item():.6g}, atol {atol})")
    return diff.max().item() if diff.numel() else 0.0


def gaussian_velocity(m: float, s: float):
    """The exact velocity E[eps - x0 | x_sigma] for data x0 ~ N(m, s^2 I), x_sigma = (1 - sigma) x0 + sigma eps.

    With a = 1 - sigma and var = a^2 s^2 + sigma^2: E[x0|x] = m + a s^2 (x - a m) / var and
    E[eps|x] = sigma (x - a m) / var, so v = (sigma - a s^2) (x - a m) / var - m."""

    def vel(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        sg = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        a = 1 - sg
        var = a**2 * s**2 + sg**2
        return (sg - a * s**2) * (x - a * m) / var - m

    return vel


def assert_lora_changes_stock_output(pipe_cls, model_dir, lora_dir, **call):
    """The LoRA folder a run wrote loads into the stock diffusers pipeline and changes its output
    for the same noise."""
    import torch

    pipe = pipe_cls.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    before = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(lora_dir))
    after = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert not torch.equal(before, after)


def stock_pipeline(path):
    """The stock diffusers pipeline saved at `path` (its own class from model_index.json), quiet."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def spy_on_policy_step(trainer) -> dict:
    """Record what the trainer's next policy steps see and do, for rebuilding them by hand: on entry
    the rollout, the advantages, the step generator's state, each sample's generator state (NFT) and
    the algorithm's state; per optimiser step the parameters at its first backward and the gradients
    it applies; every backward's `last` flag; the returned statistics."""
    seen = {"params": [], "grads": [], "last": []}
    real = trainer.algo.policy_step

    def spy(policy, ro, adv, update, gen):
        state = trainer.algo.state_dict() if hasattr(trainer.algo, "state_dict") else {}
        seen.update(ro=ro, adv=adv, gen=gen.get_state(), state=state,
                    gens=[g.get_state() for g in getattr(ro, "generators", [])])
        step, backward = update.step, update.backward

        def capture():
            seen["grads"].append([p.grad.detach().clone() for p in update.params])
            return step()

        def flagged(loss, last=True):
            if len(seen["params"]) == len(seen["grads"]):  # the first backward of an optimiser step
                seen["params"].append([p.detach().clone() for p in update.params])
            seen["last"].append(last)
            return backward(loss, last=last)

        update.step, update.backward = capture, flagged
        try:
            seen["stats"] = real(policy, ro, adv, update, gen)
            return seen["stats"]
        finally:
            del update.step, update.backward

    trainer.algo.policy_step = spy
    return seen


def generator_at(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


class SecondOfTwo:
    """Rank 1 of two processes: its gathers, in call order, concatenate rank 0's tensors (`first`,
    one per gather) with its own, in rank order."""

    process_index = 1

    def __init__(self, *first):
        self.first = list(first)

    def gather(self, t):
        return torch.cat([self.first.pop(0).to(t), t])


class FirstOfTwo:
    """Rank 0 of two processes: its gathers, in call order, concatenate its own tensors with rank 1's
    (`second`, one per gather), in rank order."""

    process_index = 0

    def __init__(self, *second):
        self.second = list(second)

    def gather(self, t):
        return torch.cat([t, self.second.pop(0).to(t)])


def check_config_bounds(algorithm: str, extra: dict, error: str | None) -> None:
    """load_config with `algorithm.name=algorithm` and the `extra` keys: it loads when `error` is None,
    else it raises a ValueError matching `error`."""
    import pytest

    from flowalign.config import load_config

    args = [f"algorithm.name={algorithm}"] + [f"{k}={v}" for k, v in extra.items()]
    if error is None:
        load_config(None, args)
    else:
        with pytest.raises(ValueError, match=error):
            load_config(None, args)
