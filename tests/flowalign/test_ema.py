import torch

from flowalign.ema import EMA


def test_ema_follows_the_closed_form_and_swaps_weights_in_and_out():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    ema.update()  # shadow = 1 - 0.9^2 after two updates towards 1 from 0
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 0.81, dtype=torch.float64))
    with ema.swapped():
        assert torch.allclose(p, torch.full((3,), 0.19, dtype=torch.float64))
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))  # the trained weights come back


def test_ema_state_round_trip():
    p = torch.nn.Parameter(torch.randn(4))
    ema = EMA([p], decay=0.5)
    with torch.no_grad():
        p.add_(1.0)
    ema.update()
    other = EMA([torch.nn.Parameter(torch.zeros(4))], decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and torch.equal(other.shadow[0], ema.shadow[0])
