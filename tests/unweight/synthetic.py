"""Helpers shared by unweight tests: bit views and small synthetic state dicts."""

from __future__ import annotations

import torch

from unweight.codec.tensor import encode_float
from unweight.packed import PackedTensor

DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of a tensor, for bit-exact comparisons (NaN payloads and -0.0 included)."""
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": (torch.randn(300, 64, generator=g) * 0.02).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": (torch.randn(96, 64, generator=g) * 0.05).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.ones(64, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": (torch.randn(64, 64, generator=g) * 0.1).half(),
        "head.weight": torch.randn(10, 64, generator=g),
        "position_ids": torch.arange(512, dtype=torch.int64).unsqueeze(0),
        "mask": torch.rand(7, 3, generator=g) > 0.5,
    }


def pack(t: torch.Tensor, steps: int = 8, group: int = 0) -> PackedTensor:
    """A float tensor encoded in memory (verified while encoding), as the reader would return it;
    `group` 0 takes the encoder's choice for its dtype."""
    dtype = DTYPE_NAMES[t.dtype]
    data = t.contiguous().view(torch.uint8).reshape(-1).numpy()
    enc = encode_float(dtype, t.numel(), lambda a, b: data[a:b], steps=steps, group=group)
    streams = {k: torch.from_numpy(v.copy()) for k, v in enc.streams.items()}
    return PackedTensor("t", dtype, tuple(t.shape), "lanes", streams, steps, enc.code_lengths, group=enc.group)
