"""A reward served by `flowalign serve-reward` (reward_models/server.py) and scored through
`reward.name: remote` (reward_models/remote.py): the same rewards as in-process for the same 8-bit
images, one-sentence errors for bad requests and for a server that is down, background scoring in
the trainer."""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from reward_models import build_reward
from reward_models.remote import RemoteReward, RewardServerError
from reward_models.server import RewardServer, decode_png, encode_batch, encode_png
from reward_models.shapes import prompts, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rendered(n: int = 4):
    metas = [prompts.color_attr("red", "circle", "blue", "square"), prompts.counting(2, "triangle")] * (n // 2)
    imgs = [torch.from_numpy(np.array(render.render_prompt(m, seed=i)[0])).permute(2, 0, 1).float() / 255
            for i, m in enumerate(metas)]
    return torch.stack(imgs), [m["prompt"] for m in metas], metas


@pytest.fixture
def served():
    """An in-thread server for a registry reward; yields (url, reward) and shuts it down."""
    servers = []

    def start(name, **kwargs):
        server = RewardServer(build_reward(name, **kwargs), name, port=0, batch_size=3)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_png_roundtrip_is_exact_for_8bit_images_and_videos():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 9, 7), generator=g).float() / 255
    assert torch.equal(decode_png(encode_png(img)), img)
    videos = torch.randint(0, 256, (2, 3, 3, 5, 4), generator=g).float() / 255  # [B, F, 3, H, W]
    pngs, video = encode_batch(videos)
    assert video and [len(p) for p in pngs] == [3, 3]
    assert torch.equal(torch.stack([torch.stack([decode_png(f) for f in s]) for s in pngs]), videos)


def test_served_reward_equals_the_in_process_reward_through_the_cli(tmp_path):
    """`flowalign serve-reward` in its own process: the same rewards, exactly, with metadata."""
    proc = subprocess.Popen([sys.executable, "-m", "flowalign.cli", "serve-reward", "shapes_geneval",
                             "--arg", "mode=partial", "--port", "0", "--batch-size", "3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving reward 'shapes_geneval' on http://" in line, proc.stderr.read() if proc.poll() else line
        url = line.split(" on ")[1].split()[0]
        images, texts, metas = _rendered(6)
        images[1, :, :20] = 0.0  # a damaged image: partial credit differs between the samples
        local = build_reward("shapes_geneval", mode="partial")(images, texts, metadata=metas)
        remote = RemoteReward(url, reward="shapes_geneval")(images, texts, metadata=metas)
        assert remote.dtype == torch.float32 and torch.equal(remote, local.float())
        assert len(set(local.tolist())) > 1  # not a constant: the comparison can fail
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            assert json.loads(r.read()) == {"reward": "shapes_geneval", "differentiable": False}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_in_thread_server_scores_chunks_and_videos(served):
    url = served("jpeg_compressibility")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (7, 3, 16, 16), generator=g).float() / 255  # 7 samples, chunks of 3
    images[::2] = images[::2].mul(0).add(0.5)  # flat images compress far better: rewards differ
    local = build_reward("jpeg_compressibility")(images, ["x"] * 7)
    assert torch.equal(RemoteReward(url)(images, ["x"] * 7), local.float())


def _post(url, body):
    req = urllib.request.Request(f"{url}/score", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_one_sentence(served):
    url = served("jpeg_compressibility")
    png = encode_png(torch.zeros(3, 4, 4))
    status, body = _post(url, {"images": [[png], [png]], "prompts": ["a"]})
    assert status == 400 and body["error"] == "the request carries 2 images but 1 prompts; send one prompt per image."
    status, body = _post(url, {"reward": "pickscore", "images": [[png]], "prompts": ["a"]})
    assert status == 404 and "reward 'pickscore' is unknown here: this server scores 'jpeg_compressibility'" \
        in body["error"]
    status, body = _post(url, {"images": [["not a png"]], "prompts": ["a"]})
    assert status == 400 and body["error"].startswith("an image could not be decoded as a base64 PNG")
    status, body = _post(url, {"images": [[png, png]], "prompts": ["a"]})
    assert status == 400 and "set 'video': true" in body["error"]
    with pytest.raises(RewardServerError, match=r"refused the request \(HTTP 404\): reward 'pickscore' is unknown"):
        RemoteReward(url, reward="pickscore", retries=0)(torch.zeros(1, 3, 4, 4), ["a"])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        RemoteReward(url)(torch.zeros(2, 3, 4, 4), ["a"])


def test_a_server_that_is_down_is_retried_then_named():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = RemoteReward(f"http://127.0.0.1:{port}", timeout=2, retries=2, backoff=0.0)
    with pytest.raises(RewardServerError, match=r"did not answer after 3 tries .*flowalign serve-reward"):
        r(torch.zeros(1, 3, 4, 4), ["a"])
    with pytest.raises(ValueError, match="must be an http"):
        RemoteReward("localhost:8000")


def test_a_learned_reward_is_not_served():
    class Learns:
        name, differentiable, learns = "d", False, True

        def __call__(self, images, prompts, **context):
            return torch.zeros(len(prompts))

        def update(self, images, prompts=None, *, iteration=0, **context):
            return {}

        def trains_generator(self, iteration):
            return True

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(ValueError, match="learns during training; it cannot be served"):
        RewardServer(Learns(), "d", port=0)


def test_training_with_a_served_reward_equals_in_process(served, tiny_sd3_dir, tmp_path, prompts_file):
    """One Flow-GRPO iteration scored through the server gives the in-process run's rewards and loss."""
    from flowalign.config import load_config
    from flowalign.trainer import Trainer
    from tests.flowalign.test_train import overrides

    url = served("jpeg_compressibility")
    runs = {}
    for name, extra in (("local", {}), ("remote", {"reward.name": "remote", "reward.args.url": url})):
        cfg = load_config(None, overrides(tiny_sd3_dir, str(tmp_path / name), prompts_file,
                                          **{"reward.name": "jpeg_compressibility", **extra}))
        runs[name] = Trainer(cfg).iterate()
    assert runs["remote"]["reward_mean"] == runs["local"]["reward_mean"]
    assert np.isfinite(runs["remote"]["loss"]) and runs["remote"]["loss"] == runs["local"]["loss"]
