import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A tiny SD3 pipeline saved with save_pretrained (built offline once per session)."""
    from flowalign.testing import save_tiny_sd3

    return save_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3") / "pipe")


@pytest.fixture
def sd3_policy(tiny_sd3_dir):
    from flowalign.policies import SD3Policy

    return SD3Policy.from_pretrained(tiny_sd3_dir, max_sequence_length=16)


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle\na blue square\ntwo green triangles\na yellow circle above a square\n")
    return str(p)


def pytest_configure(config):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
