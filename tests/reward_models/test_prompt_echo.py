"""PromptEcho on a tiny LLaVA saved and reloaded offline: the reward equals a hand computation of the
masked cross-entropy, per sample and unpadded; shape, dtype, determinism, batch-size invariance,
reductions and errors."""

import pytest
import torch
import torch.nn.functional as F

from reward_models import build_reward
from reward_models.base import to_uint8_hwc


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from flowalign.testing import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("vlm") / "llava")


def hand_reward(vlm_dir, image, prompt, reduction="mean"):
    """One sample, no padding: teacher-force `prompt</s>` after the chat prefix and add up
    -log softmax of each answer token by hand."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).eval()
    proc = AutoProcessor.from_pretrained(vlm_dir)
    prefix = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                    {"type": "text", "text": "Describe the image."}]}],
                                      add_generation_prompt=True, tokenize=False)
    arr = to_uint8_hwc(image[None])
    n_prefix = proc(images=list(arr), text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    inp = proc(images=list(arr), text=[f"{prefix} {prompt}</s>"], return_tensors="pt")
    with torch.no_grad():
        logp = F.log_softmax(model(**inp).logits[0].double(), -1)
    ids = inp["input_ids"][0]
    terms = [-logp[t - 1, ids[t]] for t in range(n_prefix, len(ids))]
    assert len(terms) == len(prompt.split()) + 1  # the answer words and </s>
    total = sum(terms)
    return -(total / len(terms)) if reduction == "mean" else -total


def test_value_equals_hand_computed_masked_cross_entropy(vlm_dir):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    prompts = ["a photo of a red circle", "two squares"]  # different lengths: the batch is padded
    for reduction in ("mean", "sum"):
        r = build_reward("prompt_echo", model=vlm_dir, reduction=reduction, device="cpu")
        out = r(images, prompts)
        want = torch.tensor([float(hand_reward(vlm_dir, images[i], prompts[i], reduction)) for i in range(2)])
        assert out.shape == (2,) and out.dtype == torch.float32
        assert torch.allclose(out, want, atol=1e-5), (out, want)


def test_deterministic_and_batch_size_invariant(vlm_dir):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a photo of two blue squares", "a triangle", "three circles", "a green square"]
    a = build_reward("prompt_echo", model=vlm_dir, batch_size=5, device="cpu")(images, prompts)
    b = build_reward("prompt_echo", model=vlm_dir, batch_size=2, device="cpu")(images, prompts)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(a, build_reward("prompt_echo", model=vlm_dir, batch_size=5, device="cpu")(images, prompts))
    assert bool((a < 0).all())  # minus a cross-entropy


def test_frozen_in_eval_mode_and_errors(vlm_dir, tmp_path):
    r = build_reward("prompt_echo", model=vlm_dir, device="cpu")
    assert not r.model.training and not any(p.requires_grad for p in r.model.parameters())
    assert r.differentiable is False
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("prompt_echo", model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="reduction"):
        build_reward("prompt_echo", model=vlm_dir, reduction="max")
    with pytest.raises(ValueError, match="video_segmental"):
        r(torch.rand(1, 2, 3, 32, 32), ["x"])


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
          "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # Qwen2.5-VL's form


def chatml_tokenizer():
    """A byte-level BPE tokenizer (a leading space is part of a token, as in Qwen's) with a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["a red circle", "a photo of a red circle", "user assistant", "Describe the image."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def test_answer_is_the_chat_templates_assistant_turn():
    """Issue item: the answer is rendered by the chat template, not `prefix + " " + prompt`: with ChatML
    the first answer token is "a", not " a", and the turn ends with <|im_end|>."""
    from reward_models.prompt_echo import answer_texts, query_prefix

    tok = chatml_tokenizer()
    q = "Describe the image."
    prefix = query_prefix(tok, q)
    assert prefix.endswith("<|im_start|>assistant\n")
    [text] = answer_texts(tok, prefix, ["a red circle"], q)
    assert text == prefix + "a red circle<|im_end|>"
    n = len(tok(prefix)["input_ids"])
    ids = tok(text)["input_ids"]
    assert ids[n:] == tok("a red circle")["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    old = tok(prefix + " a red circle")["input_ids"]
    assert old[n] != ids[n]  # the old form's first answer token was " a"
    assert answer_texts(tok, prefix, ["a red circle"], q, append_eos=False) == [prefix + "a red circle"]


def test_llava_style_answer_keeps_its_separator_and_eos(vlm_dir):
    from transformers import AutoProcessor

    from reward_models.prompt_echo import answer_texts, query_prefix

    proc = AutoProcessor.from_pretrained(vlm_dir)
    prefix = query_prefix(proc, "Describe the image.")
    assert answer_texts(proc, prefix, ["two squares"], "Describe the image.") == [prefix + " two squares</s>"]
    bad = chatml_tokenizer()
    bad.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="does not render an assistant answer"):
        answer_texts(bad, query_prefix(bad, "q"), ["x"], "q")


# llava-hf/llava-1.5-7b-hf's form: the parts of a turn are picked by their "type" (images first, then texts)
LLAVA_HF = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def test_template_that_picks_parts_by_type_gets_typed_text_parts_and_the_tokenizers_eos():
    """A template that selects text parts by `type == "text"` (LLaVA-1.5's) sees the query and the
    answer; its assistant turn has no closing marker, so the tokenizer's eos ends the answer, and
    without an eos token nothing is appended."""
    from reward_models.prompt_echo import answer_texts, query_prefix

    tok = chatml_tokenizer()
    tok.chat_template = LLAVA_HF
    q = "Describe the image."
    prefix = query_prefix(tok, q)
    assert prefix == "USER: <image>\nDescribe the image. ASSISTANT:"
    assert answer_texts(tok, prefix, ["a red circle"], q) == [prefix + " a red circle<|endoftext|>"]
    tok.eos_token = None
    assert tok.eos_token is None
    assert answer_texts(tok, prefix, ["a red circle"], q) == [prefix + " a red circle"]


def test_answer_found_again_in_the_closing_marker_is_cut_at_its_first_occurrence():
    """The answer "im" also occurs inside ChatML's <|im_end|>: the answer is the first occurrence after
    the generation prompt, and the whole marker follows it."""
    from reward_models.prompt_echo import answer_texts, query_prefix

    tok = chatml_tokenizer()
    prefix = query_prefix(tok, "q")
    assert answer_texts(tok, prefix, ["im"], "q") == [prefix + "im<|im_end|>"]


def test_template_whose_answer_turn_does_not_extend_the_generation_prompt_is_refused_even_if_the_answer_occurs():
    """`userassistant` does not start with the generation prompt `user>`: refused, although the answer
    "t" occurs in what follows the prefix's length."""
    from reward_models.prompt_echo import answer_texts, query_prefix

    bad = chatml_tokenizer()
    bad.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="does not render an assistant answer"):
        answer_texts(bad, query_prefix(bad, "q"), ["t"], "q")


def test_a_one_token_answer_has_equal_mean_and_sum(vlm_dir):
    """Without the eos, the answer "red" is one token: its mean over answer tokens is its sum."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mean = build_reward("prompt_echo", model=vlm_dir, append_eos=False, device="cpu")(images, ["red", "red"])
    total = build_reward("prompt_echo", model=vlm_dir, append_eos=False, reduction="sum", device="cpu")(images, ["red", "red"])
    assert torch.allclose(mean, total, atol=1e-6) and bool((mean < 0).all())


def test_whitespace_between_the_answer_and_a_marker_that_repeats_it_is_dropped():
    """The assistant turn renders "s </s>": the answer is its first "s", the separator before the
    closing marker is not part of the answer, and the whole marker follows."""
    from reward_models.prompt_echo import answer_texts, query_prefix

    tok = chatml_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
                         "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
                         "{% if m['role'] == 'assistant' %} </s>{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    prefix = query_prefix(tok, "q")
    assert prefix == "USER: qASSISTANT: "
    assert answer_texts(tok, prefix, ["s"], "q") == [prefix + "s</s>"]
