import pytest
import torch

from flowalign.ema import EMA, warmup_decay


def test_ema_without_warmup_follows_the_closed_form_and_swaps_weights_in_and_out():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ema = EMA([p], decay=0.9, warmup=False)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    ema.update()  # shadow = 1 - 0.9^2 after two updates towards 1 from 0
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 0.81, dtype=torch.float64))
    with ema.swapped():
        assert torch.allclose(p, torch.full((3,), 0.19, dtype=torch.float64))
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))  # the trained weights come back


class _ReferenceEMA:
    """A transcription of EMAModuleWrapper (yifan123/flow_grpo and NVlabs/DiffusionNFT,
    flow_grpo/ema.py): get_current_decay and step, called with the optimiser step count after its
    increment, as scripts/train_sd3.py and scripts/train_nft_sd3.py call it."""

    def __init__(self, params, decay, update_step_interval):
        self.ema_parameters = [p.clone().detach() for p in params]
        self.decay, self.update_step_interval = decay, update_step_interval

    def get_current_decay(self, optimization_step):
        return min((1 + optimization_step) / (10 + optimization_step), self.decay)

    def step(self, parameters, optimization_step):
        one_minus_decay = 1 - self.get_current_decay(optimization_step)
        if (optimization_step + 1) % self.update_step_interval == 0:
            for e, p in zip(self.ema_parameters, parameters):
                e.add_(one_minus_decay * (p - e))


@pytest.mark.parametrize("interval", [1, 8])
def test_ema_matches_the_reference_wrapper_with_its_warmup_and_interval(interval):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    ours, ref = EMA([p], decay=0.9, update_every=interval), _ReferenceEMA([p.detach()], 0.9, interval)
    for global_step in range(1, 101):
        with torch.no_grad():
            p.add_(torch.randn(5, dtype=torch.float64))
        ours.update()
        ref.step([p.detach()], global_step)
        assert torch.allclose(ours.shadow[0], ref.ema_parameters[0], rtol=0, atol=1e-12)
    assert not torch.allclose(ours.shadow[0], p.detach())


def test_warmup_decay_ramps_to_the_configured_decay():
    assert warmup_decay(1, 0.9) == pytest.approx(2 / 11)
    assert warmup_decay(80, 0.9) == pytest.approx(0.9)  # 81 / 90
    assert warmup_decay(10_000, 0.9) == 0.9
    assert warmup_decay(0, 0.05) == 0.05


def test_ema_state_round_trip_keeps_the_step_count():
    p = torch.nn.Parameter(torch.randn(4))
    ema = EMA([p], decay=0.5, update_every=8)
    with torch.no_grad():
        p.add_(1.0)
    for _ in range(3):
        ema.update()
    other = EMA([torch.nn.Parameter(torch.zeros(4))], decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.update_every, other.warmup, other.steps) == (0.5, 8, True, 3)
    assert torch.equal(other.shadow[0], ema.shadow[0])


def test_a_checkpoint_from_before_the_warmup_resumes_with_its_fixed_decay():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.9)
    ema.load_state_dict({"decay": 0.8, "shadow": [torch.ones(2)]})
    assert (ema.warmup, ema.update_every, ema.current_decay()) == (False, 1, 0.8)


def test_update_every_below_one_is_refused():
    with pytest.raises(ValueError, match="ema_update_every=0"):
        EMA([torch.nn.Parameter(torch.zeros(1))], decay=0.9, update_every=0)
