"""A vision-language model as DenseAlignBench's pairwise judge.

Any transformers image-text-to-text model with a chat template that takes several images
(Qwen2.5-VL, LLaVA-style) sees "First image: <image> Second image: <image> <question>" and answers;
the verdict compares the log-probabilities of the two answer words at the answer position:
    d = log p("first") - log p("second");  'first' if d > margin, 'second' if d < -margin, else 'tie'.
One batched forward per batch of pairs (right padding; each row's answer position is its last
token). compare() calls the judge with each pair in both orders, so a judge that prefers a position
scores ties, not wins."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from reward_models.base import to_uint8_hwc
from reward_models.vlm_common import load_vlm

DEFAULT_QUESTION = "Which image matches the caption better? Caption: {caption} Answer first or second."


class VLMJudge:
    def __init__(self, path: str, question: str = DEFAULT_QUESTION, answers: tuple[str, str] = ("first", "second"),
                 margin: float = 0.0, device: str | None = None, dtype: str = "float32", batch_size: int = 8):
        if "{caption}" not in question:
            raise ValueError(f"judge question {question!r} has no {{caption}} placeholder; add one.")
        self.model, self.processor, self.device = load_vlm(path, "judge VLM", device, dtype)
        tok = self.processor.tokenizer
        self.answer_ids = [tok.encode(" " + a, add_special_tokens=False)[0] for a in answers]
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError(f"answers {answers!r} start with the same token; pick two distinct answer words.")
        self.question, self.margin, self.batch_size = question, margin, batch_size

    def text(self, caption: str) -> str:
        content = [{"type": "text", "text": "First image:"}, {"type": "image"}, {"type": "text", "text": "Second image:"},
                   {"type": "image"}, {"type": "text", "text": self.question.format(caption=caption)}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)

    @torch.no_grad()
    def preferences(self, first: Tensor, second: Tensor, captions: Sequence[str]) -> Tensor:
        """first, second [B, 3, H, W] in [0, 1] -> d = log p(first answer) - log p(second answer), [B]."""
        out = []
        a, b = to_uint8_hwc(first), to_uint8_hwc(second)
        for s in range(0, len(captions), self.batch_size):
            idx = range(s, min(s + self.batch_size, len(captions)))
            images = [img for i in idx for img in (a[i], b[i])]
            inp = self.processor(images=images, text=[self.text(captions[i]) for i in idx], return_tensors="pt",
                                 padding=True)
            inp = {k: v.to(self.device) for k, v in inp.items()}
            logits = self.model(**inp).logits.float()
            last = inp["attention_mask"].sum(1) - 1
            logp = F.log_softmax(logits[torch.arange(len(idx), device=logits.device), last], dim=-1)
            out.append((logp[:, self.answer_ids[0]] - logp[:, self.answer_ids[1]]).cpu())
        return torch.cat(out)

    def __call__(self, first: Tensor, second: Tensor, captions: Sequence[str]) -> list[str]:
        d = self.preferences(first, second, captions)
        return ["first" if x > self.margin else "second" if x < -self.margin else "tie" for x in d.tolist()]
