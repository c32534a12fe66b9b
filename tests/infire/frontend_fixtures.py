"""Small model directories for frontend, server and CLI tests: a byte-level BPE
tokenizer trained here, a ChatML chat template, and a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Once upon a time there was a small model that liked to count: one two three four five.",
    "Hello world! How are you today? I am fine, thank you.",
] * 20 + [
    # Seen once: left as single bytes by the merges, so they split across tokens.
    "naïve café résumé über straße",
    "日本語のテキストと中文文本 世界 你好",
    "emoji 😀 🚀 👍🏽 ❤️ 🇫🇷",
]


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE (GPT-2 style): characters outside the merges split into bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def write_tokenizer_dir(path: Path, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """tokenizer.json + tokenizer_config.json (with a chat template) in `path`."""
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def write_tiny_llama(path: Path, vocab_size: int, max_position_embeddings: int = 256) -> Path:
    """A randomly initialised 2-layer Llama checkpoint saved by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=None,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def write_tiny_model_dir(path: Path) -> Path:
    """A servable model directory: tiny random Llama + the test tokenizer."""
    write_tokenizer_dir(path)
    vocab_size = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    return write_tiny_llama(path, vocab_size)
