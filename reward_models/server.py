"""A reward served over HTTP, so that a reward model runs in its own process (its own GPU, its own
environment) and the trainer scores through `reward.name: remote` (reward_models/remote.py).

    flowalign serve-reward NAME [--arg key=value ...] [--host 127.0.0.1] [--port 8000] [--batch-size 32]

The wire format is JSON, images as 8-bit PNG (the precision every reward reads them at):

    POST /score  {"reward": NAME (optional: refused if the server scores another reward),
                  "images": [[PNG base64, ...], ...]   one list per sample: 1 PNG, or F frames of a video,
                  "video": false, "prompts": [...], "metadata": [{...}, ...] (optional, one per sample)}
              -> {"rewards": [float, ...]}  or  {"error": "one sentence"} with status 400 / 404 / 500
    GET  /health -> {"reward": NAME, "differentiable": false}

Requests are scored one at a time (a reward model is not thread-safe), in chunks of `batch_size`
samples. A reward that learns during training (Adv-GRPO's discriminator) cannot be served: its
updates belong to the training process."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from torch import Tensor

from .base import learned, to_uint8_hwc

MAX_REQUEST_BYTES = 1 << 30


class BadRequest(ValueError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def encode_png(image: Tensor) -> str:
    """[3, H, W] in [0, 1] -> base64 of an 8-bit RGB PNG (rounded as `to_uint8_hwc`)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image[None])[0]).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str) -> Tensor:
    """base64 PNG -> [3, H, W] float32 in [0, 1] (k / 255 exactly)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def encode_batch(images: Tensor) -> tuple[list[list[str]], bool]:
    """[B, 3, H, W] images or [B, F, 3, H, W] videos -> one list of PNGs per sample, and whether
    they are videos."""
    if images.ndim == 4:
        return [[encode_png(im)] for im in images], False
    if images.ndim == 5:
        return [[encode_png(f) for f in video] for video in images], True
    raise ValueError(f"images have shape {tuple(images.shape)}; expected [B, 3, H, W] or [B, F, 3, H, W].")


def parse_request(body: dict, served: str) -> tuple[Tensor, list[str], list[dict] | None]:
    """A /score request -> (images or videos, prompts, metadata), or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'images' and 'prompts'.")
    asked = body.get("reward")
    if asked is not None and asked != served:
        raise BadRequest(f"reward {asked!r} is unknown here: this server scores {served!r}; start "
                         f"`flowalign serve-reward {asked}` for it.", status=404)
    images, prompts, metadata = body.get("images"), body.get("prompts"), body.get("metadata")
    if not isinstance(images, list) or not all(isinstance(s, list) and s for s in images):
        raise BadRequest("'images' must be a list with one non-empty list of base64 PNGs per sample.")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompts' must be a list of strings, one per sample.")
    if len(images) != len(prompts):
        raise BadRequest(f"the request carries {len(images)} images but {len(prompts)} prompts; "
                         "send one prompt per image.")
    if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(prompts)):
        raise BadRequest(f"'metadata' must be a list of {len(prompts)} rows (one per image) or absent.")
    video = bool(body.get("video", False))
    if not video and any(len(s) != 1 for s in images):
        raise BadRequest("an image sample carries several PNGs; set 'video': true to send frames.")
    try:
        samples = [torch.stack([decode_png(f) for f in s]) for s in images]
    except Exception as e:  # a broken PNG or base64 text
        raise BadRequest(f"an image could not be decoded as a base64 PNG ({type(e).__name__}: {e}).") from None
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) > 1:
        raise BadRequest(f"the samples differ in size ({sorted(shapes)[:2]}); send one size per request.")
    batch = torch.stack(samples)  # [B, F, 3, H, W]
    return (batch if video else batch[:, 0]), prompts, metadata


def score_request(reward, body: dict, served: str, batch_size: int) -> list[float]:
    """Rewards of one /score request, in chunks of batch_size samples."""
    images, prompts, metadata = parse_request(body, served)
    out = []
    for i in range(0, len(prompts), batch_size):
        ctx = {} if metadata is None else {"metadata": metadata[i:i + batch_size]}
        with torch.no_grad():
            out.append(reward(images[i:i + batch_size], prompts[i:i + batch_size], **ctx).detach().float().cpu())
    return torch.cat(out).tolist() if out else []


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, reward, name: str, host: str = "127.0.0.1", port: int = 8000, batch_size: int = 32):
        if learned(reward) is not None:
            raise ValueError(f"reward {name!r} learns during training; it cannot be served (its updates belong "
                             "to the training process). Use it in-process.")
        if batch_size < 1:
            raise ValueError(f"--batch-size {batch_size} must be at least 1.")
        self.reward, self.reward_name, self.batch_size = reward, name, batch_size
        self.lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def log_message(self, format, *args):  # noqa: A002 - the quiet default; errors are answered, not logged
        return

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.rstrip("/") != "/health":
            return self._reply(404, {"error": f"no such endpoint {self.path!r}; use GET /health or POST /score."})
        self._reply(200, {"reward": self.server.reward_name,
                          "differentiable": bool(getattr(self.server.reward, "differentiable", False))})

    def do_POST(self):  # noqa: N802
        if self.path.rstrip("/") != "/score":
            return self._reply(404, {"error": f"no such endpoint {self.path!r}; use POST /score."})
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if not 0 < n <= MAX_REQUEST_BYTES:
                raise BadRequest(f"the request body has {n} bytes; send 1 byte to {MAX_REQUEST_BYTES} of JSON.")
            try:
                body = json.loads(self.rfile.read(n))
            except json.JSONDecodeError as e:
                raise BadRequest(f"the request body is not JSON ({e}).") from None
            with self.server.lock:
                rewards = score_request(self.server.reward, body, self.server.reward_name, self.server.batch_size)
        except BadRequest as e:
            return self._reply(e.status, {"error": str(e)})
        except Exception as e:  # the reward itself failed: say so, keep serving
            return self._reply(500, {"error": f"reward {self.server.reward_name!r} failed: {type(e).__name__}: {e}"})
        self._reply(200, {"rewards": rewards})


def serve(name: str, args: dict | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          batch_size: int = 32) -> None:
    """Build reward `name` with `args` and serve it until interrupted (prints its URL first)."""
    from . import build_reward

    server = RewardServer(build_reward(name, **(args or {})), name, host, port, batch_size)
    print(f"serving reward {name!r} on {server.url} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
