"""`remote`: a reward scored by a server (`flowalign serve-reward NAME`, reward_models/server.py) in
another process, on another GPU or machine.

    reward:
      name: remote
      args: {url: http://host:8000, reward: pickscore, timeout: 120, retries: 5, backoff: 2.0}

Images travel as 8-bit PNG, the precision the rewards read them at, so a served reward gives the
in-process reward's values for the same 8-bit images. A request that fails to connect, times out
or gets a server error (5xx) is retried `retries` times with exponential backoff (the iteration
waits); then the run stops with one sentence and its last checkpoint intact. A refused request
(4xx: wrong image count, another reward) stops at once with the server's sentence.

`submit()` sends a request in a background thread and returns a future: the trainer's scoring
(`decode_rewards`) decodes the next chunk while the server scores the last one."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from .server import encode_batch


class RewardServerError(RuntimeError):
    """The reward server could not be reached, or refused a request."""


class RemoteReward:
    name = "remote"
    differentiable = False

    def __init__(self, url: str, reward: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff: float = 2.0, max_pending: int = 2):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"reward.args.url={url!r} must be an http(s) URL such as http://127.0.0.1:8000 "
                             "(where `flowalign serve-reward` listens).")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_pending < 1:
            raise ValueError(f"reward.args timeout={timeout} (> 0), retries={retries} (>= 0), backoff={backoff} "
                             f"(>= 0) and max_pending={max_pending} (>= 1) are out of range.")
        self.url = str(url).rstrip("/")
        self.reward, self.timeout, self.retries, self.backoff = reward, float(timeout), int(retries), float(backoff)
        self._pool = ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix="remote-reward")

    def _post(self, payload: dict) -> list[float]:
        data = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(f"{self.url}/score", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["rewards"]
            except urllib.error.HTTPError as e:
                try:
                    msg = json.loads(e.read()).get("error", "")
                except (json.JSONDecodeError, AttributeError):
                    msg = ""
                if e.code < 500:
                    raise RewardServerError(f"the reward server at {self.url} refused the request "
                                            f"(HTTP {e.code}): {msg or e.reason}") from None
                last = f"HTTP {e.code}: {msg or e.reason}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise RewardServerError(f"the reward server at {self.url} did not answer after {self.retries + 1} tries "
                                f"({last}); start it with `flowalign serve-reward NAME --port PORT` or fix "
                                "reward.args.url.")

    def _payload(self, images: Tensor, prompts: Sequence[str], metadata) -> dict:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts; give one prompt per image.")
        pngs, video = encode_batch(images)
        payload = {"images": pngs, "video": video, "prompts": list(prompts)}
        if self.reward is not None:
            payload["reward"] = self.reward
        if metadata is not None:
            payload["metadata"] = [dict(m) for m in metadata]
        return payload

    def submit(self, images: Tensor, prompts: Sequence[str], **context) -> Future:
        """Send a scoring request in the background; the future's result is the rewards [B] float32 (CPU)."""
        payload = self._payload(images, prompts, context.get("metadata"))

        def run() -> Tensor:
            return torch.tensor(self._post(payload), dtype=torch.float32)

        return self._pool.submit(run)

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        """images [B, 3, H, W] (or videos [B, F, 3, H, W]) in [0, 1] -> rewards [B] float32 on images' device."""
        return self.submit(images, prompts, **context).result().to(images.device)
