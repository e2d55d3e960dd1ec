"""samplers.gaussian.randn: a CPU generator draws the same noise whatever device the latents live on
(the trainer's generators are CPU generators; a CUDA run must not fail on them, and draws what a
CPU run draws)."""

import torch

from samplers.gaussian import randn


def test_same_device_is_torch_randn():
    a = randn((3, 4), torch.Generator().manual_seed(0), "cpu", torch.float64)
    b = torch.randn((3, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(a, b)


def test_cpu_generator_on_another_device_draws_on_the_cpu_and_moves():
    # the meta device stands in for CUDA here: torch.randn(device="meta", generator=<cpu>) would refuse
    g = torch.Generator().manual_seed(1)
    x = randn((5, 2), g, "meta", torch.float32)
    assert x.device.type == "meta" and x.shape == (5, 2) and x.dtype == torch.float32
    ref = torch.Generator().manual_seed(1)
    torch.randn((5, 2), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())  # the CPU stream advanced exactly as a CPU draw does


def test_no_generator_uses_the_device_rng():
    torch.manual_seed(3)
    a = randn((4,), None, "cpu", torch.float32)
    torch.manual_seed(3)
    assert torch.equal(a, torch.randn(4))
