"""Building blocks of Llama-family models: RMSNorm, rotary embedding, tensor-parallel
linear layers, the SiLU-gated MLP and paged attention.

Linear layers take `tp_size`/`tp_rank` and load only their rank's shard of a
checkpoint tensor; with tp_size == 1 (the only size the engine runs today) they
are plain linear layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infire.engine.attention import AttentionBatch, attend_paged, paged_attention
from infire.errors import ConfigError
from infire.model.config import ModelConfig, RopeConfig


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in float32 like the reference.

    With a residual, the sum h = x + residual is normalized and returned with it:
    forward(x, residual) -> (norm(h), h).
    """

    ops_backend = "torch"

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.ops_backend == "triton" and x.dim() == 2:
            from infire.model.triton_ops import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._norm(x)
        h = x + residual
        return self._norm(h), h

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---------------------------------------------------------------------------- rotary


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] (float32) for the configured rope type."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope)
    return inv_freq  # "default", and "dynamic" within the original context length


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept,
    # and the band in between interpolated smoothly.
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for the positions of a batch; applied per layer by `apply_rotary`."""

    def __init__(self, head_dim: int, rope: RopeConfig) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rope = rope
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)

    def reset_parameters(self, device: torch.device) -> None:
        # float32 whatever the model dtype, as in the reference implementation
        self.inv_freq = rope_inv_freq(self.head_dim, self.rope).to(device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated by position: x*cos + rotate_half(x)*sin (halves, not pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


# ---------------------------------------------------------------------------- linear


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ops_backend: str) -> torch.Tensor:
    """F.linear, or with ops_backend "triton" the bandwidth-bound kernel for a few rows (decode steps)."""
    if ops_backend == "triton":
        from infire.model.triton_ops import linear, use_gemv

        if use_gemv(x):
            return linear(x, weight, bias)
    return F.linear(x, weight, bias)


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) where W stacks several checkpoint tensors ("shards") by rows.

    Each shard's rows are split across tensor-parallel ranks, so a rank holds
    sum(shard_sizes) / tp_size rows: e.g. q, k, v stacked into one qkv projection.
    """

    ops_backend = "torch"

    def __init__(self, input_size: int, shard_sizes: list[int], bias: bool,
                 tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        for size in shard_sizes:
            if size % tp_size:
                raise ConfigError(f"output size {size} is not divisible by tp_size={tp_size}")
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.shard_sizes = [size // tp_size for size in shard_sizes]  # rows per rank
        out = sum(self.shard_sizes)
        self.weight = nn.Parameter(torch.empty(out, input_size))
        self.bias = nn.Parameter(torch.empty(out)) if bias else None

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Row range [start, end) of `shard` inside this rank's weight."""
        start = sum(self.shard_sizes[:shard])
        return start, start + self.shard_sizes[shard]

    def load_shard(self, param: torch.Tensor, loaded: torch.Tensor, shard: int) -> None:
        start, end = self.shard_rows(shard)
        rows = end - start
        param.data[start:end].copy_(loaded.narrow(0, self.tp_rank * rows, rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias, self.ops_backend)


class RowParallelLinear(nn.Module):
    """y = x W^T with W split by columns across ranks; partial sums are all-reduced."""

    ops_backend = "torch"

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        if input_size % tp_size:
            raise ConfigError(f"input size {input_size} is not divisible by tp_size={tp_size}")
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.weight = nn.Parameter(torch.empty(output_size, input_size // tp_size))
        self.bias = nn.Parameter(torch.empty(output_size)) if bias else None

    def shard_rows(self, shard: int) -> tuple[int, int]:
        return 0, self.weight.shape[0]

    def load_shard(self, param: torch.Tensor, loaded: torch.Tensor, shard: int) -> None:
        if param.dim() == 1:  # the bias is added once, after the reduction
            param.data.copy_(loaded)
            return
        cols = param.shape[1]
        param.data.copy_(loaded.narrow(1, self.tp_rank * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _linear(x, self.weight, None, self.ops_backend)
        if self.tp_size > 1:
            torch.distributed.all_reduce(y)
        return y if self.bias is None else y + self.bias


class Embedding(nn.Module):
    """Token embedding [vocab, hidden]; the vocabulary is not sharded across ranks yet."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


# ---------------------------------------------------------------------------- blocks


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up stacked in one projection."""

    ops_backend = "torch"

    def __init__(self, config: ModelConfig, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, [inter, inter], False, tp_size, tp_rank)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, False, tp_size, tp_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * I/tp]
        if self.ops_backend == "triton":
            from infire.model.triton_ops import silu_and_mul

            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)  # [T, I/tp] each
        return self.down_proj(F.silu(gate) * up)


class Attention(nn.Module):
    """Grouped-query self-attention over a paged KV cache."""

    ops_backend = "torch"

    def __init__(self, config: ModelConfig, layer_idx: int, tp_size: int = 1, tp_rank: int = 0) -> None:
        super().__init__()
        if config.num_key_value_heads % tp_size:
            raise ConfigError(f"num_key_value_heads={config.num_key_value_heads} not divisible by tp_size={tp_size}")
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.scale = config.head_dim ** -0.5
        q_size = config.num_attention_heads * config.head_dim
        kv_size = config.num_key_value_heads * config.head_dim
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size, [q_size, kv_size, kv_size], config.qkv_bias, tp_size, tp_rank
        )
        self.o_proj = RowParallelLinear(q_size, config.hidden_size, config.o_bias, tp_size, tp_rank)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        # [num_blocks, block_size, num_kv_heads, head_dim], bound by the model runner
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: AttentionBatch) -> torch.Tensor:
        num_tokens = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = self.qkv_proj(x)  # [T, q_size + 2 * kv_size]
        if self.ops_backend == "triton" and self.q_norm is None:
            from infire.model.triton_ops import rotary_store_kv

            q = rotary_store_kv(qkv, cos, sin, self.k_cache, self.v_cache, batch.slot_mapping,
                                self.num_heads, self.num_kv_heads)  # [T, H, D], k/v now in the cache
            out = attend_paged(q, self.k_cache, self.v_cache, batch, self.scale)  # [T, H, D]
            return self.o_proj(out.reshape(num_tokens, q_size))
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, KVH, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, KVH, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = paged_attention(q, k, v, self.k_cache, self.v_cache, batch, self.scale)  # [T, H, D]
        return self.o_proj(out.reshape(num_tokens, q_size))
