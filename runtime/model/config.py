"""ModelConfig: the shape of a Llama-family checkpoint, parsed from config.json.

A registry maps each supported `architectures` entry to the features it turns on
(qkv bias, per-head q/k RMSNorm); anything else is rejected with the valid list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infire.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ArchitectureSpec:
    """What distinguishes one member of the Llama family from another."""

    qkv_bias: bool | None  # None: read `attention_bias` from config.json
    o_bias: bool | None  # likewise, for the output projection
    qk_norm: bool
    honours_sliding_window: bool  # Qwen2/3 only use it with `use_sliding_window`


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "LlamaForCausalLM": ArchitectureSpec(qkv_bias=None, o_bias=None, qk_norm=False, honours_sliding_window=True),
    "MistralForCausalLM": ArchitectureSpec(qkv_bias=False, o_bias=False, qk_norm=False, honours_sliding_window=True),
    "Qwen2ForCausalLM": ArchitectureSpec(qkv_bias=True, o_bias=False, qk_norm=False, honours_sliding_window=False),
    "Qwen3ForCausalLM": ArchitectureSpec(qkv_bias=None, o_bias=None, qk_norm=True, honours_sliding_window=False),
}

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `rope_type` is one of ROPE_TYPES."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; allowed: {', '.join(ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ConfigError(f"rope_scaling.factor={self.factor} must be > 0")
        if self.rope_type == "llama3" and not self.original_max_position_embeddings:
            raise ConfigError("rope_scaling.original_max_position_embeddings is required for rope_type 'llama3'")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"rope_scaling.high_freq_factor={self.high_freq_factor} must exceed "
                f"low_freq_factor={self.low_freq_factor}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model and the engine need to know about a checkpoint."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    max_model_len: int  # the longest sequence served; <= max_position_embeddings
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    torch_dtype: torch.dtype
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model config {name}={value!r} must be a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def with_max_model_len(self, max_model_len: int) -> "ModelConfig":
        return dataclasses.replace(self, max_model_len=max_model_len)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        """Read config.json (and generation_config.json for EOS ids) from a checkpoint directory."""
        path = Path(path)
        raw = _read_json(path / "config.json", required=True)
        generation = _read_json(path / "generation_config.json", required=False) or {}
        return parse_model_config(raw, generation, source=str(path / "config.json"))


def parse_model_config(raw: dict[str, Any], generation: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from the dicts of config.json and generation_config.json."""
    architecture = _architecture(raw, source)
    spec = ARCHITECTURES[architecture]
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act={raw['hidden_act']!r} is not supported; allowed: 'silu'")
    if raw.get("mlp_bias", False):
        raise ConfigError(f"{source}: mlp_bias=true is not supported; allowed: false")
    num_heads = _require(raw, "num_attention_heads", source)
    hidden_size = _require(raw, "hidden_size", source)
    rope = _rope_config(raw, source)
    max_pos = int(raw.get("max_position_embeddings", 2048))
    return ModelConfig(
        architecture=architecture,
        vocab_size=_require(raw, "vocab_size", source),
        hidden_size=hidden_size,
        intermediate_size=_require(raw, "intermediate_size", source),
        num_hidden_layers=_require(raw, "num_hidden_layers", source),
        num_attention_heads=num_heads,
        num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
        head_dim=raw.get("head_dim") or hidden_size // num_heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope=rope,
        max_position_embeddings=max_pos,
        max_model_len=_exact_max_len(raw, spec, rope, max_pos),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", False)) if spec.qkv_bias is None else spec.qkv_bias,
        o_bias=bool(raw.get("attention_bias", False)) if spec.o_bias is None else spec.o_bias,
        qk_norm=spec.qk_norm,
        torch_dtype=_torch_dtype(raw, source),
        eos_token_ids=_eos_ids(raw, generation),
        bos_token_id=raw.get("bos_token_id"),
    )


def _architecture(raw: dict[str, Any], source: str) -> str:
    names = raw.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name
    raise UnsupportedArchitectureError(
        f"{source}: architectures={names!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
    )


def _rope_config(raw: dict[str, Any], source: str) -> RopeConfig:
    # transformers >= 5 writes `rope_parameters` (theta inside); older files use
    # `rope_theta` plus an optional `rope_scaling` dict keyed by "type" or "rope_type".
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {rope_type!r} is not supported; allowed: {', '.join(ROPE_TYPES)}")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={params['partial_rotary_factor']} is not supported")
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
    )


def _exact_max_len(raw: dict[str, Any], spec: ArchitectureSpec, rope: RopeConfig, max_pos: int) -> int:
    """The longest length served exactly as the reference implementation would.

    Dynamic NTK scaling only changes frequencies past max_position_embeddings, and a
    sliding window only masks keys older than the window: capping the length keeps
    both identical to plain full attention with default RoPE.
    """
    limit = max_pos
    window = raw.get("sliding_window")
    uses_window = spec.honours_sliding_window or raw.get("use_sliding_window", False)
    if window and uses_window:
        limit = min(limit, int(window))
    if rope.rope_type == "dynamic":
        limit = min(limit, rope.original_max_position_embeddings or max_pos)
    return limit


def _torch_dtype(raw: dict[str, Any], source: str) -> torch.dtype:
    name = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    if name not in _DTYPES:
        raise ConfigError(f"{source}: torch_dtype={name!r} is not supported; allowed: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _eos_ids(raw: dict[str, Any], generation: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for value in (raw.get("eos_token_id"), generation.get("eos_token_id")):
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return tuple(ids)


def _require(raw: dict[str, Any], key: str, source: str) -> Any:
    if key not in raw:
        raise ModelLoadError(f"{source}: required key {key!r} is missing")
    return raw[key]


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} not found: a checkpoint directory needs a config.json")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
