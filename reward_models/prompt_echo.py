"""PromptEcho: how well a frozen vision-language model "echoes" the prompt from the image.

Any transformers image-text-to-text model (Qwen2.5-VL, LLaVA-style, ...) gets the image and a guiding
query through its chat template; the prompt is teacher-forced as the assistant's answer, rendered by
the same chat template (so a ChatML answer starts right after `<|im_start|>assistant\n` and ends
with `<|im_end|>`; a LLaVA-style one after `ASSISTANT: `), followed by the template's end-of-turn
marker (or the tokenizer's end-of-sequence token where the template has none), and

    reward = - (1/|P|) sum_{t in P} CE(logits_{t-1}, token_t)      (reduction="mean", the default)
    reward = - sum_{t in P} CE(logits_{t-1}, token_t)               (reduction="sum")

over the answer's tokens P. One batched forward per batch (right padding, so the answer tokens of
every row sit at the same positions as in an unpadded forward); the model is frozen, in eval mode."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import to_uint8_hwc
from .vlm_common import load_vlm

DEFAULT_QUERY = "Describe the image."


def query_prefix(processor, query: str) -> str:
    """The chat-template text of one user turn (an image, then `query`) up to the assistant's answer."""
    return processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}],
                                         add_generation_prompt=True, tokenize=False)


def answer_texts(processor, prefix: str, answers: Sequence[str], query: str, append_eos: bool = True) -> list[str]:
    """Each answer teacher-forced after `prefix` as the chat template renders an assistant turn: the
    text from the generation prompt to the answer's end (no separator the template does not put
    there), then the template's end-of-turn marker when `append_eos` (the tokenizer's eos token where
    the template closes the turn with none)."""
    tok = getattr(processor, "tokenizer", processor)
    out = []
    for a in answers:
        full = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]},
             {"role": "assistant", "content": [{"type": "text", "text": a}]}], add_generation_prompt=False, tokenize=False)
        turn = full[len(prefix):] if full.startswith(prefix) else None
        at = turn.find(a) if turn is not None else -1
        if at < 0:
            raise ValueError("the processor's chat template does not render an assistant answer after its generation "
                             "prompt; PromptEcho needs a template whose assistant turn extends add_generation_prompt.")
        end = turn[at + len(a):].strip()
        out.append(prefix + turn[:at + len(a)] + ((end or tok.eos_token or "") if append_eos else ""))
    return out


def answer_token_losses(model, processor, images, prefix: str, texts: Sequence[str]):
    """Teacher-force each full text (`prefix` + answer, from `answer_texts`) with its image (uint8
    [B, H, W, 3]) in one forward -> (per-token cross-entropy [B, T-1], mask of the answer's tokens
    [B, T-1]). The processor must pad on the right, so each row's answer sits where an unpadded
    forward puts it. Differentiable in the model's weights (PromptEcho calls it without gradients, the
    captioner's training with them)."""
    dev = model.device
    # the query part's length (images of one batch share a size, so their token counts agree)
    n_prefix = int(processor(images=list(images[:1]), text=[prefix], return_tensors="pt")["attention_mask"].sum())
    inp = processor(images=list(images), text=list(texts), return_tensors="pt", padding=True)
    inp = {k: v.to(dev) for k, v in inp.items()}
    logits = model(**inp).logits.float()
    ids, att = inp["input_ids"], inp["attention_mask"]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    pos = torch.arange(1, ids.shape[1], device=ids.device)[None]
    return ce, (pos >= n_prefix) & att[:, 1:].bool()


class PromptEchoReward:
    differentiable = False

    def __init__(self, model: str, query: str = DEFAULT_QUERY, reduction: str = "mean", append_eos: bool = True,
                 device: str | None = None, dtype: str = "float32", batch_size: int = 16):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"prompt_echo reduction {reduction!r} is unknown; use 'mean' or 'sum'.")
        self.model, self.processor, self.device = load_vlm(model, "PromptEcho VLM", device, dtype)
        self.query, self.reduction, self.append_eos, self.batch_size = query, reduction, append_eos, batch_size
        self.name = "prompt_echo"
        self.prefix = query_prefix(self.processor, query)

    @torch.no_grad()
    def token_losses(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> (per-token cross-entropy [B, T-1], answer mask [B, T-1]) for one batch."""
        texts = answer_texts(self.processor, self.prefix, prompts, self.query, self.append_eos)
        return answer_token_losses(self.model, self.processor, to_uint8_hwc(images), self.prefix, texts)

    def __call__(self, images: Tensor, prompts: Sequence[str], **context) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"prompt_echo scores images [B, 3, H, W]; got shape {tuple(images.shape)} (wrap it in "
                             "video_segmental for videos).")
        out = []
        for s in range(0, images.shape[0], self.batch_size):
            ce, mask = self.token_losses(images[s:s + self.batch_size], prompts[s:s + self.batch_size])
            total = (ce * mask).sum(1)
            out.append(-(total / mask.sum(1).clamp(min=1)) if self.reduction == "mean" else -total)
        return torch.cat(out).float().cpu()
