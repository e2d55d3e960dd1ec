"""reward.device places the reward model (passed as its `device` argument); a reward without one,
or a disagreeing reward.args.device, is one sentence; a resumed run may move the reward."""

import pytest
import torch

import reward_models
from flowalign.config import build_train_reward, load_config


class Probe:
    """A reward that records the device it was built for."""

    name, differentiable = "probe", False

    def __init__(self, device: str | None = None):
        self.device = device

    def __call__(self, images, prompts, **context):
        return torch.zeros(len(prompts))


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(reward_models.REWARDS, "probe", "tests.flowalign.test_reward_device:Probe")


def test_reward_device_reaches_the_reward(probe):
    cfg = load_config(None, ["reward.name=probe", "reward.device=cpu"])
    assert build_train_reward(cfg).device == "cpu"
    assert build_train_reward(load_config(None, ["reward.name=probe"])).device is None


def test_a_reward_without_a_device_and_disagreeing_devices_are_one_sentence(probe):
    with pytest.raises(ValueError, match=r"reward.device='cpu': reward 'jpeg_compressibility' takes no device"):
        build_train_reward(load_config(None, ["reward.name=jpeg_compressibility", "reward.device=cpu"]))
    with pytest.raises(ValueError, match=r"reward.device='cpu' and reward.args.device='meta' disagree"):
        build_train_reward(load_config(None, ["reward.name=probe", "reward.device=cpu", "reward.args.device=meta"]))


def test_a_missing_gpu_for_the_reward_is_named():
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match="reward.device='cuda:7'"):
        load_config(None, ["reward.device=cuda:7"])
