"""Triton paged attention for prefill, chunked prefill and decode (imports triton).

One program handles one sequence, one KV head and a tile of query rows. A row is
a (query token, query head of this KV head's group) pair, so a decode step of a
GQA model still fills the rows of a tensor-core tile. Keys are read block by
block through the block table; softmax is computed online (flash attention).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from infire.errors import InfireError

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def paged_attention_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    TOKENS_PER_TILE: tl.constexpr = BLOCK_M // QUERIES_PER_KV
    first_token = tl.program_id(2) * TOKENS_PER_TILE
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if first_token >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    token = first_token + rows // QUERIES_PER_KV  # query token of each row, within the sequence
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_mask = (rows < TOKENS_PER_TILE * QUERIES_PER_KV) & (token < q_len)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q_offsets = (q_start + token)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)  # [M, D]
    q_pos = seq_len - q_len + token  # absolute position of each row's token

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    last_token = tl.minimum(first_token + TOKENS_PER_TILE, q_len) - 1
    kv_end = seq_len - q_len + last_token + 1  # keys any row of this tile may see
    for kv_start in range(0, kv_end, BLOCK_N):
        key_pos = kv_start + tl.arange(0, BLOCK_N)
        key_mask = key_pos < kv_end
        block = tl.load(block_tables_ptr + seq * stride_bt + key_pos // PAGE_SIZE, mask=key_mask, other=0)
        block = block.to(tl.int64)
        slot = key_pos % PAGE_SIZE
        kv_mask = key_mask[:, None] & dim_mask[None, :]
        k_offsets = block[:, None] * stride_kb + slot[:, None] * stride_ks + kv_head * stride_kh + dims[None, :]
        k = tl.load(k_cache_ptr + k_offsets, mask=kv_mask, other=0.0)  # [N, D]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [M, N]
        visible = (key_pos[None, :] <= q_pos[:, None]) & key_mask[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_offsets = block[:, None] * stride_vb + slot[:, None] * stride_vs + kv_head * stride_vh + dims[None, :]
        v = tl.load(v_cache_ptr + v_offsets, mask=kv_mask, other=0.0)  # [N, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_offsets = (q_start + token)[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptr + o_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           query_start_loc: torch.Tensor, max_query_len: int, scale: float) -> torch.Tensor:
    """q [T, H, D]; k/v cache [num_blocks, block_size, KVH, D]; block_tables [B, max_blocks]
    int32; seq_lens [B] int32; query_start_loc [B + 1] int32 -> out [T, H, D]."""
    _check_inputs(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc)
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    block_m = max(16, triton.next_power_of_2(group)) if max_query_len == 1 else max(64, triton.next_power_of_2(group))
    tokens_per_tile = block_m // group
    out = torch.empty_like(q)
    grid = (seq_lens.shape[0], num_kv_heads, triton.cdiv(max_query_len, tokens_per_tile))
    paged_attention_kernel[grid](
        out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        QUERIES_PER_KV=group, BLOCK_M=block_m, BLOCK_N=64, PAGE_SIZE=page_size,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out


def _check_inputs(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise InfireError(
            f"paged attention expects q [T, H, D] and k/v caches [blocks, block_size, KVH, D] of one shape; "
            f"got q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2]:
        raise InfireError(f"q {tuple(q.shape)} does not match the cache's KV heads/head_dim {tuple(k_cache.shape)}")
    if q.dtype not in _DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise InfireError(f"q/k/v dtypes {q.dtype}/{k_cache.dtype}/{v_cache.dtype} must match and be fp16/bf16/fp32")
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t.dtype != torch.int32:
            raise InfireError(f"{name} must be int32, got {t.dtype}")
    if query_start_loc.shape[0] != seq_lens.shape[0] + 1 or block_tables.shape[0] != seq_lens.shape[0]:
        raise InfireError(
            f"batch shapes disagree: query_start_loc {tuple(query_start_loc.shape)}, "
            f"seq_lens {tuple(seq_lens.shape)}, block_tables {tuple(block_tables.shape)}"
        )
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise InfireError("q and the K/V caches must be contiguous in head_dim")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not (q.is_cuda and k_cache.is_cuda and block_tables.is_cuda):
        raise InfireError("the Triton paged-attention kernel needs CUDA tensors (or TRITON_INTERPRET=1)")
