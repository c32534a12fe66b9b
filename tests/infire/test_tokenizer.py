"""Tokenizer loading, chat templates (HF semantics) and incremental detokenization."""

from __future__ import annotations

import json

import pytest
from tests.infire.frontend_fixtures import CHATML_TEMPLATE, write_tokenizer_dir
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from infire.errors import ModelLoadError
from infire.tokenizer import REPLACEMENT_CHAR, ChatTemplateError, IncrementalDetokenizer, SpecialTokens, Tokenizer

MULTIBYTE_TEXTS = [
    "emoji 😀 🚀 👍🏽 ❤️ 🇫🇷 done",
    "日本語のテキストと中文文本 世界 你好",
    "naïve café résumé über straße",
    "mixed: Hello 世界 😀 and more text 🚀!",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_dir(write_tokenizer_dir(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory) -> Tokenizer:
    """Llama-2 style: metaspace, byte fallback, and a decoder that strips the leading space."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁h", "▁w", "▁he", "▁hel", "▁hell", "▁hello", "or", "ld"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "h"), ("▁", "w"), ("▁h", "e"), ("▁he", "l"), ("▁hel", "l"), ("▁hell", "o"), ("o", "r"), ("l", "d")]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    return Tokenizer(tok, SpecialTokens(bos_token="<s>", eos_token="</s>"), chat_template=None)


def stream_text(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    deltas = [detok.add([i]) for i in ids]
    return deltas + [detok.flush()]


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_incremental_detokenization_equals_full_decode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert any(REPLACEMENT_CHAR in tokenizer.decode([i]) for i in ids), "test text should split characters"
    deltas = stream_text(IncrementalDetokenizer(tokenizer), ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


def test_incremental_detokenization_in_chunks_after_a_prompt(tokenizer: Tokenizer) -> None:
    prompt, output = tokenizer.encode("Hello world! "), tokenizer.encode("😀 日本語 😀")
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add(output[i : i + 3]) for i in range(0, len(output), 3)] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(output)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


def test_incomplete_character_at_the_end_is_flushed_as_replacement(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀")[:-1]  # drop the last byte of the emoji
    detok = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detok.add([i]) for i in ids)
    assert REPLACEMENT_CHAR not in streamed
    assert streamed + detok.flush() == tokenizer.decode(ids)


def test_leading_space_kept_with_prompt_context(sentencepiece_tokenizer: Tokenizer) -> None:
    tok = sentencepiece_tokenizer
    prompt, output = tok.encode("hello"), tok.encode("hello world 😀 ok", add_special_tokens=False)
    full = tok.decode(prompt + output)
    deltas = stream_text(IncrementalDetokenizer(tok, prompt), output)
    assert "".join(deltas) == full[len(tok.decode(prompt)) :] == " hello world 😀 ok"
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


def test_special_tokens_are_skipped(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello") + [tokenizer.eos_token_id]
    assert "".join(stream_text(IncrementalDetokenizer(tokenizer), ids)) == "Hello"


def test_chat_template_renders_like_transformers(tokenizer: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 😀<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.apply_chat_template(messages) == expected
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected.rsplit("<|im_start|>", 1)[0]
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") and tokenizer.decode(ids, skip_special_tokens=False) == expected


def test_chat_template_raise_exception_is_a_request_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(ChatTemplateError, match="unknown role robot"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_chat_template_gets_bos_eos_and_tojson(tmp_path) -> None:
    template = "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}"
    write_tokenizer_dir(tmp_path, chat_template=None)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(bos_token={"content": "<|im_start|>", "special": True}, chat_template=[{"name": "default", "template": template}])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    rendered = Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "日本"}])
    assert rendered == '<|im_start|>[{"role": "user", "content": "日本"}]<|im_end|>'


def test_chat_template_from_jinja_file(tmp_path) -> None:
    write_tokenizer_dir(tmp_path, chat_template=None)
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]).endswith("assistant\n")


def test_chat_template_generation_tag_renders_its_body(tmp_path) -> None:
    template = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    write_tokenizer_dir(tmp_path, chat_template=template)
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "[x]"


def test_missing_chat_template_is_a_request_error(tmp_path) -> None:
    tokenizer = Tokenizer.from_dir(write_tokenizer_dir(tmp_path, chat_template=None))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_access(tmp_path) -> None:
    write_tokenizer_dir(tmp_path, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])


def test_missing_tokenizer_json_names_the_directory(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=f"no tokenizer.json in {tmp_path}"):
        Tokenizer.from_dir(tmp_path)


def test_demo_tokenizer_matches_transformers() -> None:
    """SmolLM2's real tokenizer and template: same ids as transformers, same streamed text."""
    from transformers import AutoTokenizer
    from unweight.demo import smollm2_dir

    model_dir = smollm2_dir()
    ours, theirs = Tokenizer.from_dir(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    messages = [{"role": "user", "content": "What is 日本? 😀"}]
    assert ours.encode_chat(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    for text in MULTIBYTE_TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text)
        assert "".join(stream_text(IncrementalDetokenizer(ours), ids)) == theirs.decode(ids) == text
