"""Text <-> token ids for a model directory: tokenizer.json, its chat template, and
incremental detokenization that never splits a multi-byte character."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from infire.errors import InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

# Undecodable bytes (half of a UTF-8 sequence) decode to this character.
REPLACEMENT_CHAR = "\ufffd"
# Tokens of context kept before the text being decoded, so that decoders which
# drop a leading space at the start of a sequence (SentencePiece) decode it.
NUM_CONTEXT_TOKENS = 5


class ChatTemplateError(InvalidRequestError):
    """The chat template refused the messages (raise_exception) or is missing."""

    param = "messages"


@dataclass(frozen=True)
class SpecialTokens:
    """Special tokens named in tokenizer_config.json, passed to chat templates."""

    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None

    def as_template_vars(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Tokenizer:
    """A model's tokenizer: encode, decode, and render chat messages to a prompt."""

    def __init__(self, tokenizer: HFTokenizer, special: SpecialTokens, chat_template: str | None):
        self._tokenizer = tokenizer
        self.special = special
        self.chat_template = ChatTemplate(chat_template, special) if chat_template else None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        """Load tokenizer.json, tokenizer_config.json and the chat template of a model dir."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(
                f"no tokenizer.json in {model_dir}: infire needs a Hugging Face fast tokenizer file "
                "next to the weights (copy it from the original checkpoint)"
            )
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises plain Exception
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        config = _read_json(model_dir / "tokenizer_config.json")
        return cls(tokenizer, _special_tokens(config), _find_chat_template(model_dir, config))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.special.eos_token) if self.special.eos_token else None

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template (tokenizer_config.json 'chat_template' or "
                "chat_template.jinja); use /v1/completions with a plain prompt instead"
            )
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat; the template already writes any BOS it wants."""
        prompt = self.apply_chat_template(messages, add_generation_prompt)
        return self.encode(prompt, add_special_tokens=False)


class ChatTemplate:
    """A Jinja chat template rendered the way transformers renders it, in a sandbox."""

    def __init__(self, source: str, special: SpecialTokens):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelLoadError(f"chat template does not parse (line {exc.lineno}): {exc.message}") from exc
        self._special = special

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self._special.as_template_vars(),
                **extra,
            )
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, KeyError, ValueError) as exc:
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from exc


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window (a few tokens of context + the new tokens) and emits only
    what the new tokens added, holding text back while it ends in half a character.
    The concatenated deltas (plus flush()) equal decoding all generated ids at once.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prompt_ids[-NUM_CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(context)  # ids before this are already emitted

    def add(self, new_ids: Sequence[int]) -> str:
        """Append generated ids; return the text they complete (may be empty)."""
        self._ids.extend(new_ids)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        full_text = self._decode(self._prefix_offset, len(self._ids))
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        full_text = self._decode(self._prefix_offset, len(self._ids))
        self._prefix_offset = self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]

    def _decode(self, start: int, stop: int) -> str:
        return self._tokenizer.decode(self._ids[start:stop], skip_special_tokens=self._skip_special)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; rendering a prompt only needs its body."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _special_tokens(config: dict[str, Any]) -> SpecialTokens:
    def token(name: str) -> str | None:
        value = config.get(name)
        if isinstance(value, dict):  # serialized AddedToken
            value = value.get("content")
        return value if isinstance(value, str) else None

    return SpecialTokens(*(token(n) for n in ("bos_token", "eos_token", "unk_token", "pad_token")))


def _find_chat_template(model_dir: Path, config: dict[str, Any]) -> str | None:
    """The default chat template: tokenizer_config.json, else chat_template.jinja / .json."""
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    jinja_path = model_dir / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8")
    template = _read_json(model_dir / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # transformers' tojson: keeps non-ASCII text and does not HTML-escape, unlike Jinja's.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template rejected the messages: {message}")
