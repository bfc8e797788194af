"""Tiny models and tokenizers built from scratch, for tests, benchmarks and offline smoke runs.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in milliseconds on a
small corpus, so offsets, merges of "\\n\\n" with neighbours and chat templates behave like a real
fast tokenizer's.
"""

from __future__ import annotations

from collections.abc import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3 style: the headers themselves contain "\n\n", which is why steps must never be found by
# searching separator token ids.
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "none": None}

_SPECIALS = {
    "chatml": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|endoftext|>"],
    "none": ["<|endoftext|>"],
}


def _corpus() -> Iterable[str]:
    from step_jepa.data.synthetic import generate_problems

    for rec in generate_problems(64, seed=123):
        for m in rec["messages"]:
            yield m["content"]
    yield "Step 1: 12 + 30 = 42.\n\nStep 2: 42 / 2 = 21.\n\nThe final answer is \\boxed{21}."


def build_tiny_tokenizer(template: str = "chatml", vocab_size: int = 400, pad_token: bool = True):
    """A fast byte-level BPE tokenizer with a chat template (or none), trained on generated problems."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS[template]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_corpus()), trainer=trainer)
    eos = "<|im_end|>" if template == "chatml" else ("<|eot_id|>" if template == "llama3" else "<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos)
    if template == "llama3":
        fast.bos_token = "<|begin_of_text|>"
    if pad_token:
        fast.pad_token = "<|endoftext|>"
    if TEMPLATES[template] is not None:
        fast.chat_template = TEMPLATES[template]
    return fast


def build_tiny_model(
    vocab_size: int,
    arch: str = "llama",
    layers: int = 2,
    hidden: int = 64,
    tie: bool = False,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A randomly initialised Llama- or Qwen2-shaped causal LM (hidden 64, 2 layers by default)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=tie,
    )
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
